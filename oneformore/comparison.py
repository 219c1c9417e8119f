"""Several training variants of one task sequence in one run, side by side.

``compare_variants`` trains each variant (``projection``, ``naive``, ``joint``; see :mod:`oneformore.detector`)
into ``out_dir/<variant>/`` with the same config and seed, sharing the stages that do not depend on the variant
(the autoencoder, trained once on the first task's images, in ``out_dir/shared/``), then writes
``out_dir/comparison.json``, ``out_dir/comparison.md`` (a table of final image AUROC, pixel AUROC, AUPRO, ACC and
FM per variant) and a bar plot. Every variant resumes independently, so a killed comparison resumes too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .data.source import DataSource  # noqa: E402
from .detector import R_METRICS, Detector, RunResult  # noqa: E402
from .report.atomic import atomic_path, write_text_atomic  # noqa: E402
from .train.distributed import is_main  # noqa: E402

LABELS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pixel_aupro": "AUPRO"}


def compare_variants(config, tasks, data: DataSource | str | None, out_dir: str | Path, *,
                     variants: Sequence[str] = ("projection", "naive", "joint"), overrides: Sequence[str] = (),
                     device=None, progress: bool = True) -> dict[str, RunResult]:
    out_dir = Path(out_dir)
    results = {}
    for variant in variants:
        detector = Detector(config, overrides, device=device, progress=progress)
        data_source = data if isinstance(data, DataSource) else DataSource(data, image_size=detector.config["image_size"])
        results[variant] = detector.fit(tasks, data_source, out_dir / variant, variant=variant,
                                        shared_dir=out_dir / "shared")
    if is_main():  # the other ranks of a torchrun run hold no results (their fit returns None)
        write_comparison(results, out_dir)
    return results


def _fmt(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def comparison_table(results: dict[str, RunResult]) -> str:
    """Markdown: one row per variant; final metrics averaged over the tasks, ACC and FM per metric."""
    head = ["variant"] + [f"{LABELS[m]} ACC" for m in R_METRICS] + [f"{LABELS[m]} FM" for m in R_METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, res in results.items():
        acc = [res.summary.get(m, {}).get("acc", math.nan) for m in R_METRICS]
        fm = [res.summary.get(m, {}).get("fm", math.nan) for m in R_METRICS]
        lines.append("| " + " | ".join([variant] + [_fmt(v) for v in acc + fm]) + " |")
    return "\n".join(lines)


def per_category_table(results: dict[str, RunResult]) -> str:
    """Markdown: final image AUROC / pixel AUROC / AUPRO per category and variant."""
    lines = ["| variant | category | image AUROC | pixel AUROC | AUPRO |", "|---|---|---|---|---|"]
    for variant, res in results.items():
        for category, values in res.final.items():
            lines.append(f"| {variant} | {category} | " + " | ".join(_fmt(values.get(m, math.nan)) for m in R_METRICS) + " |")
    return "\n".join(lines)


def write_comparison(results: dict[str, RunResult], out_dir: Path) -> Path:
    payload = {v: {"tasks": r.tasks, "R": r.r, "summary": r.summary, "final": r.final} for v, r in results.items()}
    write_text_atomic(out_dir / "comparison.json", json.dumps(payload, indent=2, default=float) + "\n")
    plot = _plot(results, out_dir / "comparison.png")
    text = ["# Variants compared", "", "ACC: final metric averaged over the tasks; FM: forgetting (mean over earlier "
            "tasks of the best value ever reached minus the final value; lower is better; not defined for joint "
            "training).", "", comparison_table(results), "", per_category_table(results), "",
            f"![variants]({plot.name})", ""]
    text += [f"Each variant's own report: [{v}]({v}/report.md)" for v in results]
    path = out_dir / "comparison.md"
    write_text_atomic(path, "\n".join(text) + "\n")
    return path


def _plot(results: dict[str, RunResult], path: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    width = 0.8 / max(1, len(results))
    x = np.arange(len(R_METRICS))
    for i, (variant, res) in enumerate(results.items()):
        acc = [res.summary.get(m, {}).get("acc", math.nan) for m in R_METRICS]
        fm = [res.summary.get(m, {}).get("fm", math.nan) for m in R_METRICS]
        axes[0].bar(x + i * width, acc, width, label=variant)
        axes[1].bar(x + i * width, np.nan_to_num(fm), width, label=variant)
    for ax, title in zip(axes, ("ACC (higher is better)", "FM (lower is better)")):
        ax.set_xticks(x + width * (len(results) - 1) / 2, [LABELS[m] for m in R_METRICS])
        ax.set_title(title)
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
