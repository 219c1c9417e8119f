"""GradientProjector: keeps every chosen layer's old-task input basis and projects the weight gradients off it.

GPM (Saha et al., ICLR 2021): after each task, each layer keeps an orthonormal basis U [d, k] of the inputs the
task fed it; in later tasks, a weight gradient G [out, d] is replaced by G - (G U) U^T, so W U, and with it the
layer's output on every old input in span(U), stays as it was. TRGP's per-layer scale Q [k, k] lets a learned
share of the old-subspace component through: G - G U (I - Q) U^T.

When it runs: :meth:`project` must see the final gradients of the step. Called from an optimizer step pre-hook
(:meth:`register_optimizer_hook`) it runs after ``loss.backward()`` returned; under DistributedDataParallel the
gradient all-reduce finishes inside backward, so every rank projects the same averaged gradient with the same
bases and the ranks stay in sync. (Projection is linear, so projecting before the averaging would give the same
result; after it is simply once per step.) With gradient accumulation, the hook still runs once, before the step.
"""

from __future__ import annotations

import fnmatch
from typing import Iterable, Mapping

import torch
from torch import nn

from .layers import SUPPORTED, check_supported, input_dim, select_layers


class GradientProjector:
    """Per-layer bases for ``model``'s chosen layers and the fused projection of their weight gradients.

    Args:
        model: the network.
        include / exclude: fnmatch patterns on module names (``model.named_modules()``); all supported layers
            when ``include`` is None. Grouped/depthwise convolutions cannot be projected: one named explicitly
            by ``include`` raises, otherwise they are left out (and listed in ``.skipped``).
        types: module types to consider (a subset of nn.Linear, nn.Conv2d).
        freeze_bias: as GPM, the biases of layers that have a non-empty basis stop training (their gradient is
            set to None before the step, so the optimizer skips them: no momentum or weight-decay drift either).
    """

    def __init__(
        self,
        model: nn.Module,
        include: Iterable[str] | None = None,
        exclude: Iterable[str] | None = None,
        *,
        types: tuple[type, ...] = SUPPORTED,
        freeze_bias: bool = True,
    ):
        include = list(include) if include is not None else None
        self.model = model
        self.freeze_bias = freeze_bias
        self.layers: dict[str, nn.Module] = select_layers(model, types, include, exclude)
        self.skipped = [
            name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and isinstance(m, types) and m.groups != 1 and name not in self.layers
        ]
        if include is not None:
            for name in self.skipped:
                if any(fnmatch.fnmatchcase(name, p) for p in include):
                    check_supported(name, model.get_submodule(name))  # raises, naming the layer
        if not self.layers:
            raise ValueError(f"model: no layer of types {[t.__name__ for t in types]} matches include={include}")
        self.bases: dict[str, torch.Tensor] = {}
        self.scales: dict[str, torch.Tensor] = {}

    def set_bases(self, bases: Mapping[str, torch.Tensor], scales: Mapping[str, torch.Tensor] | None = None) -> None:
        """Sets (replaces) the bases of the named layers: U [d, k], orthonormal columns, 0 <= k <= d; optional
        TRGP scales Q [k, k]. Layers not named keep their current basis and scale. Stored as float32 on the
        layer's device; values are checked here once, so :meth:`project` does no per-step value checks."""
        staged: dict[str, torch.Tensor] = {}
        for name, u in bases.items():
            module = self._layer(name)
            d = input_dim(module)
            if not isinstance(u, torch.Tensor) or u.dim() != 2 or u.shape[0] != d or u.shape[1] > d:
                shape = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
                raise ValueError(f"bases['{name}']: expected a [d, k] tensor with d = {d} and k <= d, got {shape}")
            if not u.is_floating_point() or not bool(torch.isfinite(u).all()):
                raise ValueError(f"bases['{name}']: expected finite floating-point values")
            staged[name] = u.detach().to(device=module.weight.device, dtype=torch.float32).contiguous()
        staged_scales: dict[str, torch.Tensor] = {}
        for name, q in (scales or {}).items():
            module = self._layer(name)
            k = (staged[name] if name in staged else self.bases.get(name, torch.zeros(0, 0))).shape[1]
            if not isinstance(q, torch.Tensor) or tuple(q.shape) != (k, k):
                shape = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
                raise ValueError(f"scales['{name}']: expected shape ({k}, {k}) (k of the layer's basis), got {shape}")
            if not q.is_floating_point() or not bool(torch.isfinite(q).all()):
                raise ValueError(f"scales['{name}']: expected finite floating-point values")
            staged_scales[name] = q.detach().to(device=module.weight.device, dtype=torch.float32).contiguous()
        for name, u in staged.items():
            self.bases[name] = u
            old = self.scales.get(name)
            if name not in staged_scales and old is not None and old.shape[0] != u.shape[1]:
                del self.scales[name]  # a scale for the old k no longer fits
        self.scales.update(staged_scales)

    def _layer(self, name: str) -> nn.Module:
        if name not in self.layers:
            raise KeyError(f"bases: '{name}' is not one of the projector's layers ({', '.join(self.layers)})")
        return self.layers[name]

    def projected_layers(self) -> list[str]:
        """Names of the layers whose gradients are projected (those with a non-empty basis)."""
        return [name for name, u in self.bases.items() if u.shape[1] > 0]

    @torch.no_grad()
    def project(self) -> None:
        """Projects every selected layer's weight gradient that has a non-empty basis, in one fused call, and
        drops the gradients of their biases when ``freeze_bias``."""
        grads, bases, scales = [], [], []
        use_scales = any(name in self.scales for name in self.projected_layers())
        for name in self.projected_layers():
            module = self.layers[name]
            if self.freeze_bias and module.bias is not None:
                module.bias.grad = None
            g = module.weight.grad
            if g is None:
                continue
            u = self.bases[name]
            if u.device != g.device:  # the model moved since set_bases
                u = self.bases[name] = u.to(g.device)
            grads.append(g)
            bases.append(u)
            if use_scales:
                q = self.scales.get(name)
                if q is None:
                    q = torch.zeros(u.shape[1], u.shape[1], device=g.device)
                elif q.device != g.device:
                    q = self.scales[name] = q.to(g.device)
                scales.append(q)
        if grads:
            torch.ops.oneformore.project_gradients_(grads, bases, scales if use_scales else None)

    @torch.no_grad()
    def snapshot_weights(self) -> None:
        """Remembers the projected layers' weights before an optimizer step (see :meth:`project_update`)."""
        self._before = {name: self.layers[name].weight.detach().clone() for name in self.projected_layers()}

    @torch.no_grad()
    def project_update(self) -> None:
        """Projects the weight *update* of the step since :meth:`snapshot_weights` off the bases, in one fused call.

        Projecting the gradient keeps W·U fixed only for optimizers whose update is linear in the gradient (SGD).
        Adam divides each coordinate by its own running scale and weight decay shrinks W itself, so both leak
        into the old subspace; projecting ΔW = W_after − W_before as well makes W·U exactly invariant for any
        optimizer, at the cost of one more fused projection per step."""
        before = getattr(self, "_before", None)
        if not before:
            return
        deltas, bases, weights = [], [], []
        for name, w0 in before.items():
            w = self.layers[name].weight
            deltas.append(w.detach() - w0)
            bases.append(self.bases[name])
            weights.append((w, w0))
        torch.ops.oneformore.project_gradients_(deltas, bases, None)
        for (w, w0), delta in zip(weights, deltas):
            w.copy_(w0 + delta)
        self._before = {}

    def register_optimizer_hook(self, optimizer: torch.optim.Optimizer):
        """Runs :meth:`project` before every ``optimizer.step()``; returns the hook handle (``.remove()``)."""
        return optimizer.register_step_pre_hook(lambda opt, args, kwargs: self.project())

    def state_dict(self) -> dict:
        """{"bases": {name: U}, "scales": {name: Q}}: tensors under string keys only, so a checkpoint holding it
        loads with ``torch.load(weights_only=True)``."""
        return {
            "bases": {name: u.detach().cpu() for name, u in self.bases.items()},
            "scales": {name: q.detach().cpu() for name, q in self.scales.items()},
        }

    def load_state_dict(self, state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Restores the bases and scales saved by :meth:`state_dict` (replacing the current ones)."""
        if not isinstance(state, Mapping) or "bases" not in state:
            raise KeyError("state: expected a dict with 'bases' (and optionally 'scales') from state_dict()")
        old = self.bases, self.scales
        self.bases, self.scales = {}, {}
        try:
            self.set_bases(state["bases"], state.get("scales") or {})
        except Exception:
            self.bases, self.scales = old  # a bad checkpoint leaves the projector as it was
            raise
