"""Per-category metrics of every output of a detector's ``score()`` (for the refiner: "refined" and "coarse"),
in one pass over a test set, so the outputs are compared on the same images and the same randomness."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ...metrics import AnomalyMetrics


@torch.no_grad()
def evaluate_outputs(model, dataset: Dataset, *, batch_size: int = 16, seed: int = 0, progress: bool = True,
                     image_score: str = "max", pool_size: int = 16) -> dict[str, dict[str, dict[str, float]]]:
    """{output: {category: metrics, ..., "mean": mean over categories}} with :class:`AnomalyMetrics` per category
    (image and pixel AUROC, AP, F1-max, AUPRO). ``model.score(images, generator)`` must return
    {output: (maps, scores)}; the generator is seeded with ``seed`` once for the whole pass."""
    generator = torch.Generator().manual_seed(seed)
    metrics: dict[str, dict[str, AnomalyMetrics]] = defaultdict(dict)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    for batch in tqdm(loader, desc="scoring", disable=not progress):
        outputs = model.score(batch["image"], generator)
        categories = list(batch["category"])
        for name, (maps, scores) in outputs.items():
            maps, scores = maps.cpu(), scores.cpu()
            for cat in sorted(set(categories)):
                idx = torch.tensor([i for i, c in enumerate(categories) if c == cat])
                acc = metrics[name].setdefault(cat, AnomalyMetrics(image_score=image_score, pool_size=pool_size))
                acc.update(maps[idx], batch["mask"][idx], batch["label"][idx], scores[idx])
    model.train(was_training)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, per_cat in metrics.items():
        res = {cat: acc.compute() for cat, acc in sorted(per_cat.items())}
        keys = next(iter(res.values())).keys()
        res["mean"] = {k: sum(r[k] for r in res.values()) / len(res) for k in keys}
        results[name] = res
    return results
