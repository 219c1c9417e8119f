"""oneformore.report: dataset-calibrated heatmap strips, plots and run reports (metrics.json + report.md)."""

from .atomic import atomic_path, write_text_atomic
from .calibration import DisplayScale, scale_from_metrics, scale_from_normal_maps
from .plots import plot_r_matrix, plot_roc, plot_task_curves
from .strips import contour, render_strip, save_strip, save_strips
from .writer import RunWriter

__all__ = [
    "DisplayScale",
    "RunWriter",
    "atomic_path",
    "contour",
    "plot_r_matrix",
    "plot_roc",
    "plot_task_curves",
    "render_strip",
    "save_strip",
    "save_strips",
    "scale_from_metrics",
    "scale_from_normal_maps",
    "write_text_atomic",
]
