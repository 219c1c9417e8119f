"""Tall matrices with a known SVD, generated block by block (tests and benchmarks of the subspace builder).

A = P·diag(σ)·Vᵀ where P [N, d] holds the first d columns of the orthonormal DCT-II basis of R^N (rows visited in
a random order) and V [d, d] is an orthonormal DCT basis with its coordinates randomly permuted and sign-flipped.
Both are exactly orthonormal, so the singular values of A are σ, and the energy of the best rank-r subspace is
Σ_{i<r} σ_i², without ever forming A. A block of rows costs O(rows·d·log d) (an inverse DCT per row), and
nothing of size N·d is ever allocated.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import scipy.fft
import torch


def decaying_spectrum(d: int, *, signal_rank: int = 300, decay: float = 1.0, noise: float = 0.005) -> torch.Tensor:
    """σ [d], descending: a power-law signal part (σ_j = (1 + j/10)^-decay for j < signal_rank, like trained
    activations) over an isotropic noise floor ``noise`` (low-rank + noise)."""
    j = torch.arange(d, dtype=torch.float64)
    signal = torch.where(j < signal_rank, (1.0 + j / 10.0) ** (-decay), torch.zeros_like(j))
    return torch.sqrt(signal**2 + noise**2)


class SpectralMatrix:
    """An N×d matrix with singular values ``sigma``, produced in row blocks (see the module docstring)."""

    def __init__(self, n_rows: int, sigma: torch.Tensor, *, seed: int = 0, dtype: torch.dtype = torch.float32):
        d = sigma.numel()
        if n_rows < d:
            raise ValueError(f"n_rows: expected at least d={d} rows (P has d orthonormal columns), got {n_rows}")
        self.n_rows, self.d, self.dtype = n_rows, d, dtype
        self.sigma = sigma.double().numpy()
        rng = np.random.default_rng(seed)
        self._order = rng.permutation(n_rows)
        self._columns = rng.permutation(d)
        self._signs = rng.choice([-1.0, 1.0], size=d)
        scale = np.full(d, math.sqrt(2.0 / n_rows))
        scale[0] = math.sqrt(1.0 / n_rows)
        self._p_scale = scale * self.sigma  # DCT-II column normalisation times σ

    def singular_values(self) -> torch.Tensor:
        return torch.from_numpy(np.sort(self.sigma)[::-1].copy())

    def best_energy(self, rank: int) -> float:
        """Σ of the `rank` largest σ² (what the exact SVD captures at that rank)."""
        return float((self.singular_values()[:rank] ** 2).sum())

    def total_energy(self) -> float:
        return float((self.sigma**2).sum())

    def rows(self, start: int, stop: int, *, piece: int = 32) -> torch.Tensor:
        """Rows [start, stop) of A as a [stop - start, d] tensor (float64 temporaries of ``piece`` rows only)."""
        out = torch.empty(stop - start, self.d, dtype=self.dtype)
        freqs = np.arange(self.d) * (math.pi / self.n_rows)
        for a in range(start, stop, piece):
            b = min(stop, a + piece)
            i = self._order[a:b].astype(np.float64) + 0.5
            coeffs = np.outer(i, freqs)
            np.cos(coeffs, out=coeffs)
            coeffs *= self._p_scale  # rows of P·diag(σ), in place: two piece-sized temporaries in all
            rows = scipy.fft.idct(coeffs, type=2, norm="ortho", axis=1, overwrite_x=True)  # ·Vᵀ (orthonormal DCT)
            rows = rows[:, self._columns]
            rows *= self._signs
            out[a - start : b - start] = torch.from_numpy(rows)
        return out

    def blocks(self, block_rows: int) -> Iterator[torch.Tensor]:
        for start in range(0, self.n_rows, block_rows):
            yield self.rows(start, min(self.n_rows, start + block_rows))

    def captured_energy(self, basis: torch.Tensor) -> float:
        """‖A·U‖²_F for an orthonormal U [d, k], exactly and without forming A: ‖diag(σ)·W·U‖ with W the
        orthogonal d×d column transform W (P has orthonormal columns, so it drops out)."""
        W = scipy.fft.idct(np.eye(self.d), type=2, norm="ortho", axis=1)[:, self._columns] * self._signs
        WU = torch.from_numpy(W) @ basis.double()
        return float(((torch.from_numpy(self.sigma)[:, None] * WU) ** 2).sum())

    def materialise(self) -> torch.Tensor:
        return self.rows(0, self.n_rows, piece=1024)
