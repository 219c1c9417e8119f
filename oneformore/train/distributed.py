"""torchrun support for the run verbs: start the process group from torchrun's environment, and tell rank 0 (the
one that writes run files) apart from the others."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment(device: str | torch.device | None = None) -> torch.device:
    """Under torchrun (``WORLD_SIZE`` > 1) starts the default process group once (NCCL for CUDA, gloo for the
    CPU) and returns the device this rank should use (``cuda:LOCAL_RANK`` for CUDA); otherwise returns ``device``
    (default: CUDA when available)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not launched_by_torchrun():
        return device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes run files (rank 0, or the only process)."""
    return rank() == 0
