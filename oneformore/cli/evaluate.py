"""``oneformore test``: evaluate a trained detector on a labelled test set."""

from __future__ import annotations

from pathlib import Path

from ..detector import Detector
from ..report import RunWriter
from .common import add_data_args, add_run_args, data_source, parse_categories


def register(sub) -> None:
    p = sub.add_parser("test", help="evaluate a checkpoint: metrics, report and heatmap strips")
    p.add_argument("--checkpoint", required=True, help="a detector.pt (or the run directory holding it)")
    add_data_args(p)
    p.add_argument("--categories", help="comma-separated (default: every category the detector learned)")
    p.add_argument("--out", required=True, help="output directory")
    add_run_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    detector = Detector.load(args.checkpoint, device=args.device, progress=not args.no_progress)
    data = data_source(args, detector.config["image_size"])
    categories = [c for t in parse_categories(args.categories) for c in t] if args.categories else None
    out = Path(args.out)
    evaluation = detector.test(data, categories, strips_dir=out / "strips")
    writer = RunWriter(out)
    for output in evaluation.outputs:
        for category, metrics in evaluation.metrics.items():
            name = category if output == evaluation.outputs[0] else f"{category} ({output})"
            values = writer.add_metrics(name, metrics[output])
            print(f"{name}: image AUROC {values['image_auroc']:.4f}"
                  + (f", pixel AUROC {values['pixel_auroc']:.4f}, AUPRO {values['pixel_aupro']:.4f}"
                     if "pixel_auroc" in values else ""))
    writer.add_strips(evaluation.strips)
    print(f"report: {writer.finish(title=f'oneformore test: {args.checkpoint}')}")
    return 0
