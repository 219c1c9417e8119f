"""After a task: the per-layer GPM bases of the inputs the task fed the model, built by streaming.

The model's ``activation_pass(batch, generator)`` runs the trainable networks on training-like inputs (for the
diffusion detector: noised latents at random timesteps with AMN-masked conditions), ``passes_per_batch`` times per
batch, so the bases cover the Markov chain's timesteps as the paper's iterative SVD does. The
:class:`ActivationCollector` hooks stream each layer's input rows (im2col for convolutions) block by block into an
:class:`IterativeSVD` in residual mode against the earlier tasks' bases: nothing grows with the number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..data.loader import anomaly_loader
from ..train.distributed import rank as dist_rank
from ..train.distributed import world_size as dist_world_size
from .collector import ActivationCollector
from .iterative_svd import IterativeSVD


@dataclass
class BasisConfig:
    """``threshold``/``threshold_step``: GPM's energy criterion τ_t = τ_0 + t·Δ; ``max_rank``: rank kept while
    streaming a wide layer; ``images``: training images used (at most); ``passes_per_batch``: timesteps drawn per
    image; ``block_rows``/``max_rows_per_call``/``max_rows_per_layer``: the collector's budgets."""

    threshold: float = 0.97
    threshold_step: float = 0.003
    max_rank: int = 256
    images: int = 64
    batch_size: int = 8
    passes_per_batch: int = 4
    block_rows: int = 512
    max_rows_per_call: int = 1024
    max_rows_per_layer: int = 32768

    @classmethod
    def from_dict(cls, d: dict) -> "BasisConfig":
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"continual.bases: unknown keys {unknown}; expected some of {sorted(names)}")
        return cls(**d)


@torch.no_grad()
def build_task_bases(model, layers: dict, dataset, old_bases: dict[str, torch.Tensor], task: int,
                     cfg: BasisConfig, *, device="cpu", seed: int = 0, progress: bool = True) -> dict[str, torch.Tensor]:
    """name -> orthonormal basis [d, k] after ``task`` (the old basis followed by the added directions)."""
    generator = torch.Generator().manual_seed(seed * 7919 + task)
    builder = IterativeSVD(cfg.threshold, threshold_step=cfg.threshold_step, task=task, old_bases=old_bases,
                           max_rank=cfg.max_rank)
    collector = ActivationCollector(layers, builder, block_rows=cfg.block_rows, max_rows_per_call=cfg.max_rows_per_call,
                                    max_rows_per_layer=cfg.max_rows_per_layer, generator=generator)
    chosen = torch.randperm(len(dataset), generator=generator)[: cfg.images].tolist()
    rank, world = dist_rank(), dist_world_size()
    if world > 1:  # each rank streams its shard (its own noise too); IterativeSVD.bases() reduces over the ranks
        if len(chosen) < world:
            raise ValueError(f"continual.bases.images: {len(chosen)} images cannot be shared by {world} ranks")
        chosen = chosen[rank::world]
        generator.manual_seed(seed * 7919 + task + 1_000_003 * rank)
    subset = torch.utils.data.Subset(dataset, chosen)
    model.eval()
    with collector:
        for batch in tqdm(anomaly_loader(subset, batch_size=cfg.batch_size), desc=f"bases after task {task}",
                          disable=not progress, leave=False):
            batch = {"image": batch["image"].to(device)}
            for _ in range(cfg.passes_per_batch):
                model.activation_pass(batch, generator)
    return builder.bases()
