"""matplotlib figures of a run: the continual R matrix, per-task metric curves, ROC curves. Written atomically
with the Agg backend (no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .atomic import atomic_path  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def plot_r_matrix(r, path, *, task_names: Sequence[str] | None = None, metric: str = "metric") -> Path:
    """Heatmap of R[t, j] (row t: after learning task t; column j: evaluated task), values written in the cells;
    unmeasured cells (j > t) left blank."""
    r = np.asarray(r, dtype=float)
    n = r.shape[0]
    names = list(task_names) if task_names else [f"T{i}" for i in range(n)]
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n, 0.8 + 0.6 * n))
    lo, hi = float(np.nanmin(r)), float(np.nanmax(r))
    im = ax.imshow(np.ma.masked_invalid(r), cmap="viridis", vmin=lo, vmax=hi)
    for t in range(n):
        for j in range(n):
            if np.isfinite(r[t, j]):
                bright = (r[t, j] - lo) / max(hi - lo, 1e-12) > 0.6  # dark text on the yellow end of viridis
                ax.text(j, t, f"{r[t, j]:.3f}", ha="center", va="center", color="k" if bright else "w", fontsize=8)
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), [f"after {x}" for x in names])
    ax.set_xlabel("evaluated task j")
    ax.set_ylabel("learned task t")
    ax.set_title(f"R[t, j]: {metric}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_task_curves(curves: Mapping[str, Sequence[float]], path, *, task_names: Sequence[str] | None = None) -> Path:
    """One line per metric over the tasks (e.g. average image AUROC over the seen tasks after each task)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    n = max(len(v) for v in curves.values())
    for name, values in curves.items():
        ax.plot(range(len(values)), values, marker="o", label=name)
    ax.set_xticks(range(n), list(task_names) if task_names else [f"T{i}" for i in range(n)])
    ax.set_xlabel("after task")
    ax.set_ylabel("value")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path, *, aurocs: Mapping[str, float] | None = None) -> Path:
    """ROC curves, one per entry of ``curves`` (name -> (fpr, tpr))."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for name, (fpr, tpr) in curves.items():
        label = f"{name} (AUROC {aurocs[name]:.4f})" if aurocs and name in aurocs else name
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
