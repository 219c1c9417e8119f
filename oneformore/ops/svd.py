"""Streaming-subspace ops: block residuals and energies, batched Gram updates, incremental block SVD, and the
batched randomized SVD.

The first three are fused ops (``torch.ops.oneformore.*``, CPU and CUDA kernels) that take one tensor per layer,
so a builder updates every layer of a network with one call per step. Blocks are float32 (float64 accepted;
float16/bfloat16 are computed in float32). ``randomized_svd`` is a composition of batched ATen calls (see its
docstring for why).
"""

from __future__ import annotations

import torch

from .. import _extension  # noqa: F401  (registers the ops)
from ._validate import _is_fake, check_finite, check_list, check_tensor

__all__ = ["block_residual", "gram_update_", "isvd_update", "isvd_update_", "randomized_svd"]

_OP_DTYPES = (torch.float32, torch.float64)
_IN_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.dtype in _OP_DTYPES else torch.float32


def _check_blocks(blocks, *, check_values: bool = True) -> list[torch.Tensor]:
    blocks = check_list("blocks", blocks)
    out = []
    for i, a in enumerate(blocks):
        check_tensor(f"blocks[{i}]", a, dtypes=_IN_DTYPES, ndim=2, device=blocks[0].device)
        if check_values:
            check_finite(f"blocks[{i}]", a)
        out.append(a.to(_compute_dtype(a)))
    return out


def _check_partner(name: str, items, blocks: list[torch.Tensor], *, rows_of: str = "d") -> list[torch.Tensor]:
    items = check_list(name, items)
    if len(items) != len(blocks):
        raise ValueError(f"{name}: expected one tensor per layer ({len(blocks)}, like blocks), got {len(items)}")
    for i, (t, a) in enumerate(zip(items, blocks)):
        check_tensor(f"{name}[{i}]", t, dtypes=(a.dtype,), ndim=2, device=a.device)
        if t.shape[0] != a.shape[1]:
            raise ValueError(
                f"{name}[{i}]: expected {a.shape[1]} rows (d = blocks[{i}].shape[1]), got shape {tuple(t.shape)}"
            )
    return list(items)


def block_residual(blocks: list[torch.Tensor], bases: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The part of each layer's block that its basis does not explain, and the energies GPM's criterion needs.

    Args:
        blocks: per layer, activation rows A [n_l, d_l].
        bases: per layer, an orthonormal basis U [d_l, k_l] (k_l may be 0), same dtype and device.

    Returns:
        ``(residuals, energies)``: residuals[l] = A − (A·U)·Uᵀ [n_l, d_l]; energies [L, 2] float64 with
        (‖A‖²_F, ‖residual‖²_F) per layer (‖A·U‖²_F = their difference for an orthonormal U).
    """
    blocks = _check_blocks(blocks)
    bases = _check_partner("bases", [b.to(a.dtype) if b.dtype != a.dtype and b.dtype in _IN_DTYPES else b
                                     for b, a in zip(check_list("bases", bases), blocks)], blocks)
    return torch.ops.oneformore.block_residual(blocks, bases)


def gram_update_(grams: list[torch.Tensor], blocks: list[torch.Tensor]) -> None:
    """In place, for every layer: ``grams[l] += blocks[l]ᵀ·blocks[l]`` (the exact streaming Gram matrix).

    Args:
        grams: per layer, a float32/float64 [d_l, d_l] tensor (updated in place).
        blocks: per layer, rows [n_l, d_l]; cast to the Gram's dtype.
    """
    grams = check_list("grams", grams)
    blocks = check_list("blocks", blocks)
    if len(grams) != len(blocks):
        raise ValueError(f"grams: expected one tensor per layer ({len(blocks)}, like blocks), got {len(grams)}")
    for i, g in enumerate(grams):
        check_tensor(f"grams[{i}]", g, dtypes=_OP_DTYPES, ndim=2)
        if g.shape[0] != g.shape[1]:
            raise ValueError(f"grams[{i}]: expected a square [d, d] matrix, got shape {tuple(g.shape)}")
    blocks = _check_blocks(blocks)
    blocks = [a.to(g.dtype) for a, g in zip(blocks, grams)]
    for i, (g, a) in enumerate(zip(grams, blocks)):
        if g.device != a.device:
            raise ValueError(f"grams[{i}]: expected a tensor on {a.device} (like blocks[{i}]), got {g.device}")
        if g.shape[0] != a.shape[1]:
            raise ValueError(f"grams[{i}]: expected shape ({a.shape[1]}, {a.shape[1]}) (d of blocks[{i}]), "
                             f"got {tuple(g.shape)}")
    torch.ops.oneformore.gram_update_(grams, blocks)


def _check_factors(U, S, blocks) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Checks shared by both isvd ops: blocks, U [d, r] per block, S [r] per U (same dtype and device)."""
    blocks = _check_blocks(blocks)
    U = _check_partner("U", U, blocks)
    S = check_list("S", S)
    if len(S) != len(blocks):
        raise ValueError(f"S: expected one tensor per layer ({len(blocks)}, like blocks), got {len(S)}")
    for i, (s, u, a) in enumerate(zip(S, U, blocks)):
        check_tensor(f"S[{i}]", s, dtypes=(a.dtype,), ndim=1, device=a.device)
        if s.shape[0] != u.shape[1]:
            raise ValueError(f"S[{i}]: expected {u.shape[1]} values (columns of U[{i}]), got {s.shape[0]}")
    return blocks, U, S


def isvd_update(
    U: list[torch.Tensor],
    S: list[torch.Tensor],
    blocks: list[torch.Tensor],
    max_rank: int,
    chunk_rows: int = 256,
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Incremental block SVD, every layer in one call.

    Given the rank-r factorisation (U [d, r] orthonormal, S [r] descending) of the rows seen so far, returns
    the factorisation of ``[U·diag(S), Aᵀ]`` (i.e. of all rows, since only left singular vectors and values are
    kept) truncated to ``min(max_rank, d, r + n)`` columns. Rows are folded in ``chunk_rows`` at a time (Brand's
    update: residual against U, its thin SVD, and the SVD of the small [r + c]-sized core in float64 by
    LAPACK/cuSOLVER). Memory is O(d·(max_rank + chunk_rows)) whatever the number of rows.

    Returns:
        ``(U_out, S_out, energies)`` with energies [L, 2] float64: (‖A‖²_F, energy dropped by the truncation).
        Trailing singular values can be 0 (rank-deficient data); their columns carry no energy.
    """
    blocks, U, S = _check_factors(U, S, blocks)
    if not isinstance(max_rank, int) or max_rank < 1:
        raise ValueError(f"max_rank: expected an integer >= 1, got {max_rank!r}")
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows: expected an integer >= 1, got {chunk_rows!r}")
    return torch.ops.oneformore.isvd_update(U, S, blocks, max_rank, chunk_rows)


def isvd_update_(U: list[torch.Tensor], S: list[torch.Tensor], blocks: list[torch.Tensor],
                 chunk_rows: int = 256) -> torch.Tensor:
    """:func:`isvd_update` in place, on fixed-width factors: the streaming builder's form.

    Each U[l] [d, R] (contiguous, 1 <= R <= d) and S[l] [R] hold the factorisation with its live columns first
    (S > 0, descending) and the rest zero; R is the rank cap (start from zeros). The update overwrites U row panel
    by row panel (row i of the new U depends only on row i of U and of the chunk's residual), so unlike the
    functional op it never holds a second [d, R] factor: memory O(d·R + chunk_rows·d).

    Returns:
        energies [L, 2] float64: (‖A‖²_F, energy dropped by the truncation to R), as :func:`isvd_update`.
    """
    blocks, U, S = _check_factors(U, S, blocks)
    for i, (s, u) in enumerate(zip(S, U)):
        if not (u.is_contiguous() and 1 <= u.shape[1] <= u.shape[0]):
            raise ValueError(f"U[{i}]: expected a contiguous [d, R] tensor with 1 <= R <= d, got shape "
                             f"{tuple(u.shape)}{'' if u.is_contiguous() else ' (not contiguous)'}")
        if not s.is_contiguous():
            raise ValueError(f"S[{i}]: expected a contiguous tensor (written in place)")
        if not _is_fake(s) and s.numel() and not bool((s[:-1] >= s[1:]).all() and s[-1] >= 0):
            raise ValueError(f"S[{i}]: expected non-negative values in descending order (live columns first)")
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows: expected an integer >= 1, got {chunk_rows!r}")
    return torch.ops.oneformore.isvd_update_(U, S, blocks, chunk_rows)


def isvd_output_rank(r: int, n: int, d: int, max_rank: int, chunk_rows: int) -> int:
    """The number of columns isvd_update returns (it depends on shapes only, never on values)."""
    if n == 0:
        return min(r, max_rank)
    for start in range(0, n, chunk_rows):
        c = min(chunk_rows, n - start)
        r = min(max_rank, d, r + c)
    return r


def randomized_svd(
    A: torch.Tensor, k: int, oversample: int = 10, n_iter: int = 2, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-k truncated SVD of a batch of matrices by the Halko–Martinsson–Tropp randomized range finder.

    Y = A·Ω with a Gaussian Ω [n, k + oversample]; ``n_iter`` power iterations Y ← A·(Aᵀ·Q), each product
    re-orthonormalised by QR (so small singular values are not lost to float32 rounding); then the exact SVD of
    the small B = Qᵀ·A. A Python composition of batched ATen calls on purpose: all the work is in batched GEMM,
    QR (geqrf/orgqr, cuSOLVER) and a small SVD that ATen already runs batched on CPU and CUDA, so a C++ op would
    add nothing but hide it from torch.compile.

    Args:
        A: [b, m, n] or [m, n], floating point (float16/bfloat16 computed in float32).
        k: rank, 1 <= k <= min(m, n).
        oversample: extra random directions (>= 0); the sketch has min(k + oversample, m, n) columns.
        n_iter: power iterations (>= 0); 2 suits a decaying spectrum, more for a flat one.
        generator: for a reproducible Ω.

    Returns:
        ``(U [b, m, k], S [b, k], V [b, n, k])`` (no batch dimension for a 2-D A), A ≈ U·diag(S)·Vᵀ, S descending.
    """
    check_tensor("A", A, dtypes=_IN_DTYPES, ndim=(2, 3))
    check_finite("A", A)
    m, n = A.shape[-2], A.shape[-1]
    if not isinstance(k, int) or not 1 <= k <= min(m, n):
        raise ValueError(f"k: expected an integer in [1, {min(m, n)}] (min of A's last two dims), got {k!r}")
    if not isinstance(oversample, int) or oversample < 0:
        raise ValueError(f"oversample: expected an integer >= 0, got {oversample!r}")
    if not isinstance(n_iter, int) or n_iter < 0:
        raise ValueError(f"n_iter: expected an integer >= 0, got {n_iter!r}")
    X = A.to(_compute_dtype(A))
    batched = X.dim() == 3
    if not batched:
        X = X.unsqueeze(0)
    width = min(k + oversample, m, n)
    omega = torch.randn(X.shape[0], n, width, dtype=X.dtype, device=X.device, generator=generator)
    Q = torch.linalg.qr(X @ omega).Q
    Xt = X.mT
    for _ in range(n_iter):
        Q = torch.linalg.qr(Xt @ Q).Q
        Q = torch.linalg.qr(X @ Q).Q
    Ub, S, Vh = torch.linalg.svd(Q.mT @ X, full_matrices=False)
    U = Q @ Ub[..., :k]
    S = S[..., :k]
    V = Vh[..., :k, :].mT
    if not batched:
        return U[0], S[0], V[0]
    return U, S, V


@torch.library.register_fake("oneformore::block_residual")
def _block_residual_fake(blocks, bases):
    return [torch.empty_like(a, memory_format=torch.contiguous_format) for a in blocks], blocks[0].new_empty(
        (len(blocks), 2), dtype=torch.float64
    ) if blocks else torch.empty((0, 2), dtype=torch.float64)


@torch.library.register_fake("oneformore::gram_update_")
def _gram_update_fake(grams, blocks):
    return None


@torch.library.register_fake("oneformore::isvd_update")
def _isvd_update_fake(U, S, blocks, max_rank, chunk_rows):
    U_out, S_out = [], []
    for u, a in zip(U, blocks):
        k = isvd_output_rank(u.shape[1], a.shape[0], a.shape[1], max_rank, chunk_rows)
        U_out.append(u.new_empty((a.shape[1], k)))
        S_out.append(u.new_empty((k,)))
    return U_out, S_out, _energies_like(blocks)


def _energies_like(blocks) -> torch.Tensor:
    """The [L, 2] float64 energies both isvd ops return, on the blocks' device."""
    device = blocks[0].device if blocks else torch.device("cpu")
    return torch.empty((len(blocks), 2), dtype=torch.float64, device=device)


@torch.library.register_fake("oneformore::isvd_update_")
def _isvd_update_inplace_fake(U, S, blocks, chunk_rows):
    return _energies_like(blocks)
