"""Fixtures for the model tests."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Small training runs on a shared 2-core machine: one intra-op thread avoids OpenMP oversubscription
    (measured here under load: 0.54 s vs 7.7 s per step of the tiny objective test)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
