"""The Detector under torchrun: 2 processes on gloo share every batch (DDP) and the bases (sharded streaming),
end with the same model, and rank 0 alone writes the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from oneformore.detector import CHECKPOINT, Detector
from oneformore.train.trainer import load_checkpoint

REPO = Path(__file__).resolve().parents[2]


def test_two_process_fit_on_gloo(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("_ddp_worker.py")), str(tmp_path / "run")]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun still running after {e.timeout} s; output so far:\n{e.stdout}\n{e.stderr}")
    assert done.returncode == 0, f"torchrun exited with {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    for task in ("task0", "task1"):
        assert load_checkpoint(tmp_path / "run" / task / "last.pt")["world_size"] == 2
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert state["completed"] == 1 and len(state["r"]["image_auroc"]) == 2
    assert any(u.shape[1] > 0 for u in state["projector"]["bases"].values())
    assert (tmp_path / "run" / "report.md").is_file()
    assert not list((tmp_path / "run").glob("**/.*.tmp"))  # no stray temporary files from a second writer
    Detector.load(tmp_path / "run", device="cpu", progress=False)
