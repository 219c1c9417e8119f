"""Streaming per-layer subspace bases (GPM's bases without stacking the activations).

GPM builds each layer's basis from the SVD of all the task's input activations stacked into one matrix. For a
diffusion UNet visited at many timesteps that matrix does not fit in memory, so ``IterativeSVD`` consumes the
activations block by block and keeps, per layer, only:

- ``gram`` mode (small d): the exact Gram G = Σ AᵀA (d² values); the basis is the eigendecomposition of G at the
  end. Exact, and the cheapest per block.
- ``isvd`` mode (large d): a rank-``max_rank`` factorisation (U [d, r], S [r]) of the rows seen so far,
  updated by the incremental block SVD (the SVD of [U·diag(S), Aᵀ] through its small core, see
  ``oneformore.ops.isvd_update``). Memory O(d·(max_rank + chunk_rows)); the energy dropped by truncating to
  ``max_rank`` is tracked and reported.

``mode="auto"`` picks per layer by memory: Gram when d·d <= d·(max_rank + chunk_rows), i.e. when the Gram is no
bigger than the incremental factorisation's working set; isvd otherwise.

The rank follows GPM's energy criterion with threshold τ_t = τ_0 + t·Δ (task t, capped at 1). Without old
bases (first task) a layer keeps the smallest r whose σ² hold a fraction τ_t of the total energy ‖A‖²_F. With
old bases (later tasks) the builder streams the residual A − A·U_old·U_oldᵀ, and appends residual singular
vectors until (‖A·U_old‖² + Σ added σ²) / ‖A‖² >= τ_t, as GPM's ``update_GPM`` does.

Under ``torch.distributed`` each rank streams its own shard; ``bases()`` (a collective: every rank must call it)
all-reduces the Grams and energies and all-gathers the factors (U·diag(S)) of the isvd layers, merged in rank
order, so every rank gets the bases of the union of the shards.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ..ops._validate import check_finite
from ..ops.svd import isvd_update

__all__ = ["IterativeSVD", "LayerSpectrum"]

# update() checks each block itself (its errors name the layer) and builds U, S and the old bases itself, so it
# calls the raw ops: their C++ repeats the shape checks, not the NaN/Inf pass over every block.
_OPS = torch.ops.oneformore

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass
class LayerSpectrum:
    """What ``bases()`` decided for one layer (all energies are sums of squares, float)."""

    basis: torch.Tensor  # [d, k] (old basis first in residual mode)
    added: int  # columns added by this task
    total_energy: float  # ‖A‖²_F over every row streamed
    captured_energy: float  # energy of the rows inside the returned basis (old + added)
    truncated_energy: float  # energy lost to the max_rank truncation (0 in gram mode)
    threshold: float
    mode: str


@dataclass
class _LayerState:
    d: int
    mode: str
    dtype: torch.dtype
    device: torch.device
    U: torch.Tensor | None = None
    S: torch.Tensor | None = None
    gram: torch.Tensor | None = None
    old_basis: torch.Tensor | None = None
    total: float = 0.0
    residual: float = 0.0
    truncated: float = 0.0
    rows: int = 0


def _orthonormalise(basis: torch.Tensor) -> torch.Tensor:
    """QR with a positive diagonal: keeps the span of every leading set of columns (so an old basis placed first
    is kept as is, up to rounding) and removes the drift of the streamed factors. Householder QR in the basis'
    own dtype is orthonormal to that dtype's rounding, which is all a float32 basis can hold (a float64 pass would
    only add two [d, k] float64 temporaries at the builder's memory peak)."""
    if basis.shape[1] == 0:
        return basis.contiguous()
    Q, R = torch.linalg.qr(basis)
    signs = torch.sign(torch.diagonal(R))
    signs[signs == 0] = 1.0
    return Q.mul_(signs).contiguous()


class IterativeSVD:
    """Streaming GPM bases for many layers at once.

    Args:
        threshold: τ_0, fraction of the energy the basis must hold (GPM: 0.97).
        threshold_step: Δ, added per task (GPM: 0.003); τ_t = min(1, τ_0 + task·Δ).
        task: t, the index of the task whose activations are streamed (0 for the first).
        old_bases: name -> U_old [d, k] orthonormal, the bases from earlier tasks (residual mode for those layers).
        max_rank: cap on the rank kept while streaming (isvd layers); bounds memory at O(d·max_rank).
        chunk_rows: rows folded per incremental update inside a block.
        mode: "auto", "gram" or "isvd" (see the module docstring).
        process_group: torch.distributed group to reduce over (default: the world, when initialised).
    """

    def __init__(
        self,
        threshold: float = 0.97,
        *,
        threshold_step: float = 0.003,
        task: int = 0,
        old_bases: dict[str, torch.Tensor] | None = None,
        max_rank: int = 256,
        chunk_rows: int = 256,
        mode: str = "auto",
        process_group=None,
    ) -> None:
        if not (isinstance(threshold, (int, float)) and 0.0 < threshold <= 1.0):
            raise ValueError(f"threshold: expected a fraction in (0, 1], got {threshold!r}")
        if not (isinstance(threshold_step, (int, float)) and threshold_step >= 0.0):
            raise ValueError(f"threshold_step: expected a number >= 0, got {threshold_step!r}")
        if not isinstance(task, int) or task < 0:
            raise ValueError(f"task: expected an integer >= 0, got {task!r}")
        if not isinstance(max_rank, int) or max_rank < 1:
            raise ValueError(f"max_rank: expected an integer >= 1, got {max_rank!r}")
        if not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ValueError(f"chunk_rows: expected an integer >= 1, got {chunk_rows!r}")
        if mode not in ("auto", "gram", "isvd"):
            raise ValueError(f"mode: expected 'auto', 'gram' or 'isvd', got {mode!r}")
        self.threshold = min(1.0, float(threshold) + task * float(threshold_step))
        self.max_rank = max_rank
        self.chunk_rows = chunk_rows
        self.mode = mode
        self.process_group = process_group
        self.old_bases: dict[str, torch.Tensor] = {}
        for name, u in (old_bases or {}).items():
            if not isinstance(u, torch.Tensor) or u.dim() != 2 or u.dtype not in _FLOATS:
                raise ValueError(f"old_bases['{name}']: expected a floating [d, k] tensor, got "
                                 f"{getattr(u, 'shape', type(u).__name__)}")
            if u.shape[1] > u.shape[0]:
                raise ValueError(f"old_bases['{name}']: expected at most d={u.shape[0]} columns, got {u.shape[1]}")
            self.old_bases[name] = u.detach()
        self._layers: dict[str, _LayerState] = {}

    # ------------------------------------------------------------------ streaming
    def layer_mode(self, d: int) -> str:
        """The mode a layer with input dimension d gets (see the module docstring)."""
        if self.mode != "auto":
            return self.mode
        return "gram" if d <= self.max_rank + self.chunk_rows else "isvd"

    def _state(self, name: str, block: torch.Tensor) -> _LayerState:
        state = self._layers.get(name)
        d = block.shape[1]
        if state is None:
            dtype = block.dtype if block.dtype in (torch.float32, torch.float64) else torch.float32
            state = _LayerState(d=d, mode=self.layer_mode(d), dtype=dtype, device=block.device)
            old = self.old_bases.get(name)
            if old is not None:
                if old.shape[0] != d:
                    raise ValueError(f"blocks['{name}']: expected d={old.shape[0]} columns (the old basis has "
                                     f"{old.shape[0]} rows), got {d}")
                state.old_basis = old.to(device=block.device, dtype=dtype).contiguous()
            if state.mode == "gram":
                state.gram = torch.zeros(d, d, dtype=dtype, device=block.device)
            else:  # fixed width, updated in place (live columns first, the rest zero)
                width = min(self.max_rank, d)
                state.U = torch.zeros(d, width, dtype=dtype, device=block.device)
                state.S = torch.zeros(width, dtype=dtype, device=block.device)
            self._layers[name] = state
        elif d != state.d:
            raise ValueError(f"blocks['{name}']: expected d={state.d} columns (as in the earlier blocks of this "
                             f"layer), got {d}")
        if block.device != state.device:
            raise ValueError(f"blocks['{name}']: expected a tensor on {state.device} (as earlier blocks), "
                             f"got {block.device}")
        return state

    @torch.no_grad()
    def update(self, blocks: dict[str, torch.Tensor]) -> None:
        """Folds one block of activation rows per layer into the bases: at most three fused calls for all layers
        (residual against the old bases, Gram update, incremental SVD), whatever their number."""
        if not isinstance(blocks, dict):
            raise TypeError(f"blocks: expected a dict name -> Tensor [n, d], got {type(blocks).__name__}")
        prepared: dict[str, torch.Tensor] = {}
        for name, a in blocks.items():
            if not isinstance(a, torch.Tensor):
                raise TypeError(f"blocks['{name}']: expected a torch.Tensor, got {type(a).__name__}")
            if a.dim() != 2 or a.dtype not in _FLOATS:
                raise ValueError(f"blocks['{name}']: expected a floating 2-D [n, d] tensor, got "
                                 f"{tuple(a.shape)} {a.dtype}")
            check_finite(f"blocks['{name}']", a)
            state = self._state(name, a)
            prepared[name] = a.detach().to(state.dtype)
        residual_names = [n for n in prepared if self._layers[n].old_basis is not None]
        if residual_names:
            rows, energies = _OPS.block_residual([prepared[n] for n in residual_names],
                                                 [self._layers[n].old_basis for n in residual_names])
            energies = energies.tolist()
            for n, r, (total, res) in zip(residual_names, rows, energies):
                prepared[n] = r
                self._layers[n].total += total
                self._layers[n].residual += res
        gram_names = [n for n in prepared if self._layers[n].mode == "gram"]
        if gram_names:
            _OPS.gram_update_([self._layers[n].gram for n in gram_names], [prepared[n] for n in gram_names])
        isvd_names = [n for n in prepared if self._layers[n].mode == "isvd"]
        if isvd_names:
            states = [self._layers[n] for n in isvd_names]
            energies = _OPS.isvd_update_([s.U for s in states], [s.S for s in states],
                                         [prepared[n] for n in isvd_names], self.chunk_rows)
            for s, (block_energy, dropped) in zip(states, energies.tolist()):
                s.truncated += dropped
                if s.old_basis is None:
                    s.total += block_energy
        for name, a in prepared.items():
            self._layers[name].rows += a.shape[0]  # gram layers take their total energy from trace(G)

    # ------------------------------------------------------------------ results
    def _distributed(self) -> tuple[bool, int]:
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return False, 1
        world = dist.get_world_size(self.process_group)
        return world > 1, world

    def _spectrum(self, state: _LayerState) -> tuple[torch.Tensor, torch.Tensor, float, float, float]:
        """(U [d, r], σ² [r] descending, total, residual, truncated energies), reduced over ranks."""
        dist = torch.distributed
        distributed, world = self._distributed()
        scalars = torch.tensor([state.total, state.residual, state.truncated, state.rows], dtype=torch.float64)
        if distributed:
            scalars = scalars.to(state.device)
            dist.all_reduce(scalars, group=self.process_group)
            scalars = scalars.cpu()
        total, residual, truncated, _ = scalars.tolist()
        if state.mode == "gram":
            gram = state.gram.clone()
            if distributed:
                dist.all_reduce(gram, group=self.process_group)
            if state.old_basis is None:
                total = float(torch.trace(gram.double()))
            evals, evecs = torch.linalg.eigh(gram.double())
            evals = evals.flip(0).clamp_min(0.0)
            return evecs.flip(1).to(state.dtype), evals, total, residual, truncated
        U, S = state.U, state.S
        if distributed:
            # Every rank's factors, padded to a common rank, then merged in rank order (the same on every rank).
            rank_sizes = torch.tensor([U.shape[1]], device=state.device)
            dist.all_reduce(rank_sizes, op=dist.ReduceOp.MAX, group=self.process_group)
            width = int(rank_sizes.item())
            mine = torch.zeros(state.d, width, dtype=state.dtype, device=state.device)
            mine[:, : U.shape[1]] = U * S
            gathered = [torch.empty_like(mine) for _ in range(world)]
            dist.all_gather(gathered, mine, group=self.process_group)
            U = torch.zeros(state.d, 0, dtype=state.dtype, device=state.device)
            S = torch.zeros(0, dtype=state.dtype, device=state.device)
            for part in gathered:
                (U,), (S,), energies = isvd_update([U], [S], [part.T.contiguous()], self.max_rank, self.chunk_rows)
                truncated += float(energies[0, 1])
        return U, S.double().square(), total, residual, truncated

    @torch.no_grad()
    def spectra(self) -> dict[str, LayerSpectrum]:
        """Per layer: the basis GPM's criterion picks and the energies behind the choice (collective under
        torch.distributed)."""
        out = {}
        tau = self.threshold
        for name, state in self._layers.items():
            U, sigma2, total, residual, truncated = self._spectrum(state)
            # σ² is descending, so the directions above the noise level are a prefix: a view, not a copy of U
            live = int((sigma2 > sigma2[:1].max().item() * 1e-12).sum()) if sigma2.numel() else 0
            U, sigma2 = U[:, :live], sigma2[:live]
            if total <= 0.0:
                basis = state.old_basis if state.old_basis is not None else U[:, :0]
                out[name] = LayerSpectrum(basis, 0, 0.0, 0.0, truncated, tau, state.mode)
                continue
            ratios = (sigma2 / total).tolist()
            if state.old_basis is None:
                # smallest r with Σ_{i<r} σ_i² / total >= τ
                r, accumulated = _rank_for_threshold(ratios, 0.0, tau)
                basis = U[:, :r]
            else:
                # GPM update_GPM: start from the energy the old basis explains, add residual directions
                r, accumulated = _rank_for_threshold(ratios, (total - residual) / total, tau)
                basis = torch.cat([state.old_basis, U[:, :r]], dim=1)[:, : state.d]
            reached = accumulated >= tau - 1e-12
            if not reached and truncated > 0.0:
                warnings.warn(
                    f"IterativeSVD: layer '{name}' reaches only {accumulated:.4f} of the energy (threshold {tau}): "
                    f"{truncated / total:.2%} was dropped by max_rank={self.max_rank}; raise max_rank",
                    stacklevel=2,
                )
            out[name] = LayerSpectrum(_orthonormalise(basis), r, total, accumulated * total, truncated, tau, state.mode)
        return out

    def bases(self) -> dict[str, torch.Tensor]:
        """name -> orthonormal basis [d, k] (float32 unless the blocks were float64); in residual mode the old
        basis followed by the added directions, capped at d columns. Collective under torch.distributed."""
        return {name: spectrum.basis for name, spectrum in self.spectra().items()}

    def truncated_energy(self) -> dict[str, float]:
        """name -> fraction of this rank's streamed energy dropped by the max_rank truncation so far."""
        return {n: (s.truncated / s.total if s.total > 0 else 0.0) for n, s in self._layers.items()}

    @property
    def layers(self) -> dict[str, dict]:
        """name -> {"d", "mode", "rows", "rank"} of this rank's state (for reports)."""
        return {
            n: {"d": s.d, "mode": s.mode, "rows": s.rows, "rank": (int((s.S > 0).sum()) if s.S is not None else s.d)}
            for n, s in self._layers.items()
        }

    def memory_bytes(self) -> int:
        """Bytes of state kept between updates (independent of the number of rows streamed)."""
        total = 0
        for s in self._layers.values():
            for t in (s.U, s.S, s.gram, s.old_basis):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total


def _rank_for_threshold(ratios: list[float], accumulated: float, tau: float) -> tuple[int, float]:
    """Adds energy ratios (largest first) to ``accumulated`` until it reaches ``tau``: (count added, energy)."""
    r = 0
    for value in ratios:
        if accumulated >= tau:
            break
        accumulated += value
        r += 1
    return r, accumulated
