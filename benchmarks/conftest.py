"""Benchmarks run with pytest-benchmark: `pytest benchmarks --benchmark-only`. Every group compares the fused op
with the eager-PyTorch reference (and torch.compile of it, and outside libraries where they exist)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
