"""Shared fixtures: seeded randomness and the real images in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """Where the real MVTec-layout images live: $ONEFORMORE_TEST_DATA, else ../shared/data beside the repo."""
    env = os.environ.get("ONEFORMORE_TEST_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    root = shared_data_root()
    if not (root / "bottle").is_dir():
        pytest.skip(
            f"real test images not found at {root} (set ONEFORMORE_TEST_DATA to a folder with "
            "bottle/, magnetic_tile/, kolektor/ in the MVTec AD layout)"
        )
    return root


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
