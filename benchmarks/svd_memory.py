"""Peak extra memory of one way of building a rank-k subspace of the 20000×2304 matrix, in a fresh process.

    python benchmarks/svd_memory.py METHOD   (METHOD: iterative, linalg_svd, svd_lowrank, sklearn, randomized_svd)

Prints one JSON line: the peak resident memory (VmHWM, the counter behind resource.getrusage's max RSS, reset
through /proc/self/clear_refs once the imports are done, whose transient peak would otherwise hide the method's)
minus the baseline measured after the
imports (torch, oneformore, scikit-learn) and the block generator's set-up (and minus a second baseline taken
after one small BLAS/LAPACK call of each kind and one run of the method on a 600×300 matrix), the wall time of the method, and the
energy its rank-r basis captures relative to the exact SVD (r = the GPM threshold rank, 0.97). The streaming method
generates its blocks on the fly and never holds the matrix; the others get the materialised matrix (counted).
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch
from sklearn.utils.extmath import randomized_svd as sk_randomized_svd

import oneformore.ops
from oneformore.continual import IterativeSVD
from oneformore.continual.synthetic import SpectralMatrix, decaying_spectrum

ROWS, D, BLOCK, MAX_RANK, CHUNK = 20000, 2304, 512, 256, 128


def max_rss_bytes() -> int:
    """Peak resident memory since the last reset_peak() (VmHWM, the counter getrusage's ru_maxrss reports)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def reset_peak() -> None:
    """Resets the peak to the current RSS (Linux >= 4.0): the imports' transient peak would hide the method's."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def stream_basis(blocks, max_rank: int = MAX_RANK, chunk_rows: int = CHUNK) -> torch.Tensor:
    """IterativeSVD over an iterable of [n_i, d] row blocks: an orthonormal [d, r] basis."""
    builder = IterativeSVD(0.97, max_rank=max_rank, chunk_rows=chunk_rows)
    for block in blocks:
        builder.update({"layer": block})
        del block  # else the loop variable keeps this block alive while the generator makes the next one
    return builder.bases()["layer"]


def matrix_basis(method: str, A: torch.Tensor, rank: int = MAX_RANK) -> torch.Tensor:
    """An orthonormal [d, k] basis of the dominant row space of the materialised ``A``, computed by ``method``."""
    if method == "linalg_svd":
        return torch.linalg.svd(A, full_matrices=False)[2][:rank].T
    if method == "svd_lowrank":
        return torch.svd_lowrank(A, q=rank, niter=2)[2]
    if method == "randomized_svd":
        return oneformore.ops.randomized_svd(A, rank - 10, oversample=10, n_iter=2)[2]
    if method == "sklearn":
        return torch.from_numpy(sk_randomized_svd(A.numpy(), rank - 10, n_oversamples=10, n_iter=2,
                                                  random_state=0)[2].T.copy())
    raise SystemExit(f"unknown method {method!r}")


def right_basis(method: str, matrix: SpectralMatrix) -> torch.Tensor:
    """The stream generates its blocks on the fly; every other method gets the materialised matrix (counted)."""
    if method == "iterative":
        return stream_basis(matrix.blocks(BLOCK))
    return matrix_basis(method, matrix.materialise())


def warm_up(method: str) -> None:
    """The method once on a small matrix (600×300, rank 64): its first calls fault in code pages of libtorch/MKL
    (file-backed, counted in RSS: about 5 MB for the streaming path) and allocate MKL's buffers for small sizes,
    neither of which grows with the problem."""
    small = SpectralMatrix(600, decaying_spectrum(300, signal_rank=60), seed=1)
    if method == "iterative":
        stream_basis(small.blocks(128), max_rank=64, chunk_rows=32)
    else:
        matrix_basis(method, small.materialise(), rank=64)


def main(method: str) -> None:
    torch.manual_seed(0)
    matrix = SpectralMatrix(ROWS, decaying_spectrum(D), seed=0)
    reset_peak()
    baseline = max_rss_bytes()
    # MKL keeps the buffers of its first GEMM/eigensolver calls for the life of the process (~10 MB, whatever
    # the method) and first calls fault in code pages: a second figure is taken over a baseline after a small
    # call of each kind and one run of the method on a small matrix.
    x = torch.randn(256, 256)
    torch.linalg.eigh(x @ x.T)
    torch.linalg.svd(x)
    torch.linalg.qr(x)
    del x
    warm_up(method)
    reset_peak()
    warmed = max_rss_bytes()
    start = time.perf_counter()
    basis = right_basis(method, matrix)
    seconds = time.perf_counter() - start
    peak_extra = max_rss_bytes() - baseline
    after_warmup = max_rss_bytes() - warmed
    sigma2 = matrix.singular_values() ** 2
    rank = int(torch.searchsorted(sigma2.cumsum(0) / sigma2.sum(), torch.tensor(0.97, dtype=torch.float64))) + 1
    captured = matrix.captured_energy(basis[:, :rank]) / matrix.best_energy(rank)
    print(json.dumps({"method": method, "seconds": seconds, "peak_extra_bytes": peak_extra,
                      "peak_extra_after_blas_warmup_bytes": after_warmup,
                      "matrix_bytes": ROWS * D * 4, "rank": rank, "energy_vs_exact": captured}))


if __name__ == "__main__":
    main(sys.argv[1])
