"""Which feature tokens the transformer must inpaint: training masks and the complementary test-time partitions.

A mask is a bool tensor over the token grid, True = masked (replaced by the mask token, to be predicted from the
visible ones). The paper turns UniAD's reconstruction into inpainting but does not fix the mask pattern; we offer
three, all drawn from the caller's generator (so the trainer's steps stay reproducible):

- ``"random"``: each sample masks a uniformly random subset of ``round(ratio · N)`` tokens (MAE / SimMIM style);
- ``"block"``: square blocks of ``block_size`` tokens at random places until ``ratio`` of the grid is covered
  (BEiT-style blockwise masking, harder: whole regions must be inferred from their surroundings);
- ``"grid"``: one of the test-time partitions below, with a random phase, so training sees exactly the test masks.

``ratio`` is drawn per sample uniformly from [ratio_min, ratio_max] for random/block.

At test time every token must be predicted once from context: :func:`complementary_masks` gives K disjoint masks
whose union is the whole grid. ``"grid"`` puts token (i, j) in partition (i mod s)·s + (j mod s) with s = √K, so every
masked token has all 8 neighbours visible; ``"random"`` splits a random permutation into K near-equal parts.
"""

from __future__ import annotations

import math

import torch

PATTERNS = ("random", "block", "grid")
TEST_PATTERNS = ("grid", "random")


def _check_grid(h: int, w: int) -> None:
    if h < 1 or w < 1:
        raise ValueError(f"grid: expected a positive token grid, got {h}x{w}")


def grid_side(partitions: int) -> int:
    s = math.isqrt(partitions)
    if s * s != partitions or s < 1:
        raise ValueError(f"mask.test_partitions: the 'grid' pattern needs a perfect square (1, 4, 9, ...), "
                         f"got {partitions}")
    return s


def complementary_masks(h: int, w: int, partitions: int, pattern: str = "grid",
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """[K, h, w] bool: K disjoint masks covering every token exactly once."""
    _check_grid(h, w)
    if pattern not in TEST_PATTERNS:
        raise ValueError(f"mask.test_pattern: expected one of {TEST_PATTERNS}, got {pattern!r}")
    if not 1 <= partitions <= h * w:
        raise ValueError(f"mask.test_partitions: expected 1 <= K <= {h * w} tokens, got {partitions}")
    if pattern == "grid":
        s = grid_side(partitions)
        i = torch.arange(h).view(h, 1) % s
        j = torch.arange(w).view(1, w) % s
        part = i * s + j
    else:
        order = torch.randperm(h * w, generator=generator)
        part = torch.empty(h * w, dtype=torch.long)
        part[order] = torch.arange(h * w) % partitions
        part = part.view(h, w)
    return part.unsqueeze(0) == torch.arange(partitions).view(-1, 1, 1)


def _ratios(batch: int, ratio_min: float, ratio_max: float, generator) -> torch.Tensor:
    return ratio_min + (ratio_max - ratio_min) * torch.rand(batch, generator=generator, dtype=torch.float64)


def random_masks(batch: int, h: int, w: int, ratio_min: float, ratio_max: float, generator) -> torch.Tensor:
    n = h * w
    counts = (_ratios(batch, ratio_min, ratio_max, generator) * n).round().clamp(1, n - 1).long()
    ranks = torch.rand(batch, n, generator=generator).argsort(dim=1).argsort(dim=1)
    return (ranks < counts.view(-1, 1)).view(batch, h, w)


def block_masks(batch: int, h: int, w: int, ratio_min: float, ratio_max: float, block_size: int,
                generator) -> torch.Tensor:
    n = h * w
    targets = (_ratios(batch, ratio_min, ratio_max, generator) * n).round().clamp(1, n - 1).long()
    bh, bw = min(block_size, h), min(block_size, w)
    masks = torch.zeros(batch, h, w, dtype=torch.bool)
    for b in range(batch):
        while int(masks[b].sum()) < int(targets[b]):
            top = int(torch.randint(0, h - bh + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - bw + 1, (1,), generator=generator))
            masks[b, top:top + bh, left:left + bw] = True
        if bool(masks[b].all()):  # keep at least one visible token: there must be context
            masks[b].view(-1)[int(torch.randint(0, n, (1,), generator=generator))] = False
    return masks


def grid_masks(batch: int, h: int, w: int, partitions: int, generator) -> torch.Tensor:
    parts = complementary_masks(h, w, partitions, "grid")
    pick = torch.randint(0, partitions, (batch,), generator=generator)
    return parts[pick]


def training_masks(batch: int, h: int, w: int, *, pattern: str, ratio_min: float, ratio_max: float,
                   block_size: int, partitions: int, generator: torch.Generator | None) -> torch.Tensor:
    """[B, h, w] bool training masks (see the module docstring)."""
    _check_grid(h, w)
    if pattern == "random":
        return random_masks(batch, h, w, ratio_min, ratio_max, generator)
    if pattern == "block":
        return block_masks(batch, h, w, ratio_min, ratio_max, block_size, generator)
    if pattern == "grid":
        return grid_masks(batch, h, w, partitions, generator)
    raise ValueError(f"mask.pattern: expected one of {PATTERNS}, got {pattern!r}")
