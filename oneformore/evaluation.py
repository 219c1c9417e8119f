"""Evaluation of a detector model on a labelled test set: exact metrics per category and per output, and a few
heatmap strips per category.

Every output of ``model.score`` (e.g. the refiner's "refined" and "coarse") gets its own
:class:`~oneformore.metrics.AnomalyMetrics` per category, so one pass over the images reports them side by side.
Strips are coloured with one scale per category and output, F1-optimal on that category's pixels
(:func:`~oneformore.report.calibration.scale_from_metrics`: an oracle threshold, for looking at results), falling
back to the 99th percentile of the normal images' pixels when a category has no masks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data.loader import anomaly_loader
from .metrics import AnomalyMetrics
from .report.calibration import scale_from_metrics, scale_from_normal_maps
from .report.strips import save_strip, strip_name


@dataclass
class Evaluation:
    """``metrics[category][output]``: the accumulated metrics; ``strips``: the PNGs written."""

    metrics: dict[str, dict[str, AnomalyMetrics]] = field(default_factory=dict)
    strips: list[Path] = field(default_factory=list)

    def values(self, output: str | None = None) -> dict[str, dict[str, float]]:
        """category -> metric values of ``output`` (default: the primary, i.e. first, output)."""
        out = {}
        for category, per_output in self.metrics.items():
            name = output or next(iter(per_output))
            out[category] = per_output[name].compute()
        return out

    @property
    def outputs(self) -> list[str]:
        first = next(iter(self.metrics.values()), {})
        return list(first)


def _pick_for_strips(kept: dict, category: str, sample: dict, maps: dict, per_category: int) -> None:
    """Keeps, per category, one normal image and up to ``per_category`` anomalous ones of distinct defect types
    (the first of each type met)."""
    entries = kept.setdefault(category, [])
    if sample["label"] == 0:
        take = not any(s["label"] == 0 for s, _ in entries)
    else:
        defects = {s["defect"] for s, _ in entries if s["label"] == 1}
        take = len(defects) < per_category and sample["defect"] not in defects
    if take:
        entries.append((sample, maps))


@torch.no_grad()
def evaluate(model, dataset, *, batch_size: int = 16, device: torch.device | str = "cpu", seed: int = 0,
             strips_dir: str | Path | None = None, strips_per_category: int = 3, denormalise=None,
             progress: bool = True, desc: str = "test") -> Evaluation:
    """Scores every image of ``dataset`` with ``model.score`` and accumulates the metrics.

    Scoring draws its noise from a generator seeded with ``seed``, so an evaluation is reproducible."""
    model.eval()
    result = Evaluation()
    kept: dict[str, list] = {}
    generator = torch.Generator(device=device).manual_seed(seed) if torch.device(device).type != "cpu" \
        else torch.Generator().manual_seed(seed)
    loader = anomaly_loader(dataset, batch_size=batch_size)
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        images = batch["image"].to(device)
        outputs = model.score(images, generator)
        masks = batch["mask"]
        has_mask = batch.get("has_mask")
        groups: dict[tuple[str, bool], list[int]] = {}
        for i, category in enumerate(batch["category"]):
            groups.setdefault((category, has_mask is None or bool(has_mask[i])), []).append(i)
        for (category, pixel_ok), rows in groups.items():
            index = torch.tensor(rows)
            per_output = result.metrics.setdefault(category, {})
            for name, (maps, scores) in outputs.items():
                if name not in per_output:
                    per_output[name] = AnomalyMetrics()
                per_output[name].update(maps.cpu()[index], masks[index] if pixel_ok else None,
                                        batch["label"][index], scores.cpu()[index])
        if strips_dir is not None:
            for i, category in enumerate(batch["category"]):
                sample = {k: batch[k][i] for k in ("image", "mask", "label", "category", "defect", "path")}
                sample["label"] = int(sample["label"])
                _pick_for_strips(kept, category, sample, {n: m[i].cpu() for n, (m, _) in outputs.items()},
                                 strips_per_category)
    if strips_dir is not None:
        result.strips = _write_strips(Path(strips_dir), kept, result, denormalise)
    return result


def _display_scale(metric: AnomalyMetrics, normal_maps: list[torch.Tensor]):
    try:
        return scale_from_metrics(metric)
    except ValueError:
        return scale_from_normal_maps(torch.stack(normal_maps)) if normal_maps else None


def _write_strips(out_dir: Path, kept: dict, result: Evaluation, denormalise) -> list[Path]:
    paths = []
    for category, entries in kept.items():
        for output, metric in result.metrics[category].items():
            scale = _display_scale(metric, [m[output] for s, m in entries if s["label"] == 0])
            if scale is None or not math.isfinite(scale.threshold):
                continue
            for sample, maps in entries:
                image = denormalise(sample["image"]) if denormalise else sample["image"]
                name = strip_name(sample["path"], category, sample["defect"])
                if len(result.metrics[category]) > 1:
                    name = f"{output}_{name}"
                paths.append(save_strip(out_dir / name, image, sample["mask"], maps[output], scale))
    return paths
