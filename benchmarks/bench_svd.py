"""Subspace of a 20000×2304 activation matrix (rank set by GPM's 0.97 threshold, cap 256): IterativeSVD streaming
blocks of 512 rows vs torch.linalg.svd, torch.svd_lowrank, oneformore.ops.randomized_svd and scikit-learn's
randomized_svd on the materialised matrix. Time: pytest-benchmark, in process, on pre-generated data (the stream
gets the same rows as a list of blocks). Peak memory: benchmarks/svd_memory.py in a fresh process per method
(generation on the fly for the stream), recorded in extra_info.

    python -m pytest benchmarks/bench_svd.py --benchmark-only --benchmark-group-by=group
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from svd_memory import BLOCK, D, ROWS, matrix_basis, stream_basis  # benchmarks/ is on sys.path under pytest

from oneformore.continual.synthetic import SpectralMatrix, decaying_spectrum

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ["iterative", "linalg_svd", "svd_lowrank", "randomized_svd", "sklearn"]


@pytest.fixture(scope="module")
def matrix():
    return SpectralMatrix(ROWS, decaying_spectrum(D), seed=0)


@pytest.fixture(scope="module")
def materialised(matrix):
    return matrix.materialise()


def memory(method: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, os.path.join(HERE, "svd_memory.py"), method], env=env, check=True,
                         capture_output=True, text=True, timeout=1200)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(method: str, A: torch.Tensor):
    if method == "iterative":
        return stream_basis(A[start : start + BLOCK] for start in range(0, A.shape[0], BLOCK))
    return matrix_basis(method, A)


@pytest.mark.parametrize("method", METHODS)
def test_subspace_20000x2304(benchmark, method, materialised):
    benchmark.group = "svd: rank-256 subspace of 20000x2304"
    benchmark.extra_info.update(memory(method))
    benchmark.pedantic(run, args=(method, materialised), rounds=1, iterations=1, warmup_rounds=0)
