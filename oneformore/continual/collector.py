"""Forward hooks that stream layer inputs into an IterativeSVD, block by block, within a row budget."""

from __future__ import annotations

import torch
from torch import nn

from .iterative_svd import IterativeSVD
from .layers import check_supported, input_rows

__all__ = ["ActivationCollector"]


class ActivationCollector:
    """Collects the input rows of ``layers`` (``input_rows``: im2col for convolutions, the projection's flattening)
    during forward passes and feeds ``builder`` in blocks of ``block_rows`` rows per layer.

    Budget: each forward call contributes at most ``max_rows_per_call`` rows per layer (after keeping each row
    with probability ``sample_fraction``; rows are drawn at random, without replacement), and a layer stops
    collecting after ``max_rows_per_layer`` rows in total. A detector that runs the model at several timesteps
    per image thus bounds the rows per timestep and per task. Memory: at most ``block_rows + max_rows_per_call``
    pending rows per layer. Use as a context manager; the hooks are removed and the last partial blocks are
    flushed on exit.

    Args:
        layers: name -> nn.Linear / nn.Conv2d (e.g. ``select_layers(model)``).
        builder: the IterativeSVD to feed (a new one with default settings when None).
        block_rows: rows per layer per ``builder.update`` call.
        max_rows_per_call, max_rows_per_layer: row budgets (None: unbounded).
        sample_fraction: in (0, 1], the fraction of each call's rows kept before the per-call cap.
        generator: for reproducible subsampling.
    """

    def __init__(
        self,
        layers: dict[str, nn.Module],
        builder: IterativeSVD | None = None,
        *,
        block_rows: int = 512,
        max_rows_per_call: int | None = 4096,
        max_rows_per_layer: int | None = None,
        sample_fraction: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(layers, dict) or not layers:
            raise ValueError("layers: expected a non-empty dict name -> nn.Linear/nn.Conv2d")
        for name, module in layers.items():
            check_supported(name, module)
        if not isinstance(block_rows, int) or block_rows < 1:
            raise ValueError(f"block_rows: expected an integer >= 1, got {block_rows!r}")
        for arg, value in (("max_rows_per_call", max_rows_per_call), ("max_rows_per_layer", max_rows_per_layer)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{arg}: expected None or an integer >= 1, got {value!r}")
        if not (isinstance(sample_fraction, (int, float)) and 0.0 < sample_fraction <= 1.0):
            raise ValueError(f"sample_fraction: expected a fraction in (0, 1], got {sample_fraction!r}")
        self.layers = dict(layers)
        self.builder = builder if builder is not None else IterativeSVD()
        self.block_rows = block_rows
        self.max_rows_per_call = max_rows_per_call
        self.max_rows_per_layer = max_rows_per_layer
        self.sample_fraction = float(sample_fraction)
        self.generator = generator
        self.rows_seen = {name: 0 for name in layers}  # rows accepted (after subsampling), per layer
        self._pending: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        self._pending_rows = {name: 0 for name in layers}
        self._handles: list = []

    # ------------------------------------------------------------------ hooks
    def __enter__(self) -> "ActivationCollector":
        if self._handles:
            raise RuntimeError("ActivationCollector: already collecting (nested `with`)")
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if exc[0] is None:
            self.flush()

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.add(name, input_rows(module, inputs[0].detach()))

        return hook

    def _subsample(self, rows: torch.Tensor, budget: int) -> torch.Tensor:
        n = rows.shape[0]
        keep = n
        if self.sample_fraction < 1.0:
            keep = int(round(n * self.sample_fraction))
        keep = min(keep, budget)
        if keep >= n:
            return rows
        index = torch.randperm(n, generator=self.generator, device="cpu")[:keep].to(rows.device)
        return rows.index_select(0, index)

    @torch.no_grad()
    def add(self, name: str, rows: torch.Tensor) -> None:
        """Adds rows [n, d] of layer ``name`` (what the hook does), within the budgets."""
        budget = rows.shape[0]
        if self.max_rows_per_call is not None:
            budget = min(budget, self.max_rows_per_call)
        if self.max_rows_per_layer is not None:
            budget = min(budget, self.max_rows_per_layer - self.rows_seen[name])
        if budget <= 0:
            return
        rows = self._subsample(rows, budget)
        self.rows_seen[name] += rows.shape[0]
        self._pending[name].append(rows)
        self._pending_rows[name] += rows.shape[0]
        if self._pending_rows[name] >= self.block_rows:
            self._drain(full_only=True)

    def _drain(self, *, full_only: bool) -> None:
        """Sends one update with a block from every layer that has one ready (all layers in one call)."""
        while True:
            blocks = {}
            for name, parts in self._pending.items():
                n = self._pending_rows[name]
                if n == 0 or (full_only and n < self.block_rows):
                    continue
                stacked = torch.cat(parts) if len(parts) > 1 else parts[0]
                take = min(self.block_rows, n)
                blocks[name] = stacked[:take]
                rest = stacked[take:]
                self._pending[name] = [rest] if rest.shape[0] else []
                self._pending_rows[name] = rest.shape[0]
            if not blocks:
                return
            self.builder.update(blocks)

    def flush(self) -> None:
        """Feeds every pending row to the builder (called on exit)."""
        self._drain(full_only=False)
