"""Eager-PyTorch references of the svd ops (same signatures as oneformore.ops.svd)."""

from __future__ import annotations

import torch


def block_residual(blocks: list[torch.Tensor], bases: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
    residuals = [a - (a @ u) @ u.T for a, u in zip(blocks, bases)]
    energies = torch.tensor(
        [[float(a.double().square().sum()), float(r.double().square().sum())] for a, r in zip(blocks, residuals)],
        dtype=torch.float64,
    ).reshape(len(blocks), 2)
    return residuals, energies


def gram_update_(grams: list[torch.Tensor], blocks: list[torch.Tensor]) -> None:
    for g, a in zip(grams, blocks):
        g += a.T @ a


def isvd_update(U, S, blocks, max_rank: int, chunk_rows: int = 256):
    """The exact answer the incremental update approximates only through its truncation: the thin SVD of
    [U·diag(S), Aᵀ] (all rows at once), cut to the same number of columns."""
    from ..svd import isvd_output_rank

    U_out, S_out, energies = [], [], []
    for u, s, a in zip(U, S, blocks):
        M = torch.cat([u * s, a.T], dim=1)
        Um, Sm, _ = torch.linalg.svd(M, full_matrices=False)
        k = isvd_output_rank(u.shape[1], a.shape[0], a.shape[1], max_rank, chunk_rows)
        Um = torch.cat([Um, Um.new_zeros(Um.shape[0], max(0, k - Um.shape[1]))], dim=1)
        Sm = torch.cat([Sm, Sm.new_zeros(max(0, k - Sm.shape[0]))])
        U_out.append(Um[:, :k])
        S_out.append(Sm[:k])
        energies.append([float(a.double().square().sum()), float(Sm[k:].double().square().sum())])
    return U_out, S_out, torch.tensor(energies, dtype=torch.float64).reshape(len(blocks), 2)


def isvd_update_(U, S, blocks, chunk_rows: int = 256):
    """In-place form of :func:`isvd_update` on fixed-width factors (zero columns past the live ones)."""
    energies = []
    for u, s, a in zip(U, S, blocks):
        (nu,), (ns,), e = isvd_update([u], [s], [a], u.shape[1], chunk_rows)
        u.zero_()[:, : nu.shape[1]] = nu
        s.zero_()[: ns.shape[0]] = ns
        energies.append(e)
    return torch.cat(energies) if energies else torch.zeros(0, 2, dtype=torch.float64)


def randomized_svd(A: torch.Tensor, k: int, oversample: int = 10, n_iter: int = 2, *, generator=None):
    """The exact truncated SVD that the randomized one approximates."""
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    return U[..., :k], S[..., :k], Vh[..., :k, :].mT
