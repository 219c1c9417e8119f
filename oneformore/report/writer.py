"""A run's output folder: metrics.json, plots and a short report.md embedding them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Sequence

from ..metrics import AnomalyMetrics, continual_summary
from .atomic import write_text_atomic
from .plots import plot_r_matrix, plot_roc, plot_task_curves


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):
        return _jsonable(x.tolist())
    return x


class RunWriter:
    """Collects a run's results and writes them under ``out_dir``.

    >>> w = RunWriter("runs/exp1")                                            # doctest: +SKIP
    >>> w.add_metrics("bottle", metrics)      # an AnomalyMetrics: its values and ROC curves   # doctest: +SKIP
    >>> w.add_continual(R, task_names, metric="image_auroc")                  # doctest: +SKIP
    >>> w.finish(title="MVTec 14-1")          # metrics.json + report.md      # doctest: +SKIP
    """

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics: dict[str, dict] = {}
        self.continual: dict[str, dict] = {}
        self.figures: list[tuple[str, Path]] = []
        self.strips: list[Path] = []

    def _rel(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.out_dir.resolve()))

    def add_metrics(self, name: str, metrics: AnomalyMetrics | Mapping[str, float]) -> dict[str, float]:
        """Records one evaluation (e.g. one category); with an AnomalyMetrics also plots its ROC curves."""
        if isinstance(metrics, AnomalyMetrics):
            values = metrics.compute()
            curves = metrics.roc_curves()
            aurocs = {k: values.get(f"{k}_auroc", math.nan) for k in curves}
            path = plot_roc(curves, self.out_dir / "plots" / f"roc_{name}.png", aurocs=aurocs)
            self.figures.append((f"ROC: {name}", path))
        else:
            values = dict(metrics)
        self.metrics[name] = values
        return values

    def add_continual(self, r, task_names: Sequence[str] | None = None, *, metric: str = "image_auroc") -> dict:
        """Records a continual R matrix for ``metric``: plots it, the per-task average over seen tasks, and
        stores ACC/FM/BWT."""
        import numpy as np

        r = np.asarray(r, dtype=float)
        summary = continual_summary(r)
        self.continual[metric] = {"R": r, "task_names": list(task_names or []), **summary}
        self.figures.append((f"R matrix: {metric}", plot_r_matrix(r, self.out_dir / "plots" / f"r_matrix_{metric}.png", task_names=task_names, metric=metric)))
        seen_avg = [float(np.mean(r[t, : t + 1])) for t in range(r.shape[0])]
        self.figures.append((f"average {metric} over seen tasks", plot_task_curves({metric: seen_avg}, self.out_dir / "plots" / f"curve_{metric}.png", task_names=task_names)))
        return summary

    def add_strips(self, paths: Sequence[Path]) -> None:
        self.strips.extend(Path(p) for p in paths)

    def finish(self, title: str = "oneformore run", notes: str = "", max_strips_in_report: int = 8) -> Path:
        """Writes metrics.json and report.md (both atomically); returns the report's path."""
        payload = {"metrics": self.metrics, "continual": self.continual}
        write_text_atomic(self.out_dir / "metrics.json", json.dumps(_jsonable(payload), indent=2) + "\n")
        lines = [f"# {title}", ""]
        if notes:
            lines += [notes, ""]
        if self.metrics:
            keys = sorted({k for v in self.metrics.values() for k in v if not k.endswith("threshold")})
            lines += ["| | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
            for name, vals in self.metrics.items():
                cells = [f"{vals[k]:.4f}" if isinstance(vals.get(k), float) else "" for k in keys]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
        for metric, c in self.continual.items():
            lines += [f"Continual ({metric}): ACC {c['acc']:.4f}, FM {c['fm']:.4f}, BWT {c['bwt']:.4f}", ""]
        for caption, path in self.figures:
            lines += [f"![{caption}]({self._rel(path)})", ""]
        if self.strips:
            lines += [f"Heatmap strips (image | ground truth | overlay | prediction): {len(self.strips)} in "
                      f"`{self._rel(self.strips[0].parent)}/`", ""]
            lines += [f"![{p.stem}]({self._rel(p)})" for p in self.strips[:max_strips_in_report]] + [""]
        report = self.out_dir / "report.md"
        write_text_atomic(report, "\n".join(lines))
        return report
