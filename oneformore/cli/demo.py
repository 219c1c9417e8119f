"""``oneformore demo``: a short continual run, end to end, on a fresh machine.

Without ``--data`` it uses the built-in procedural dataset (textured products with synthetic scratches, holes and
stains, generated deterministically: nothing to download) at 64 px; with ``--data ROOT`` the first three
categories of that folder at the config's size. Three tasks, the three variants (projection, naive fine-tuning,
joint training), then ``comparison.md`` and each variant's report with its plots and heatmap strips.
"""

from __future__ import annotations

from pathlib import Path

from ..comparison import compare_variants
from ..config import load_config
from .common import add_data_args, add_run_args, data_source, parse_categories

PROCEDURAL_TASKS = [["stripes"], ["disc"], ["marble"]]
# small enough for a few minutes on a laptop CPU; the real-data demo keeps the tiny config's sizes
PROCEDURAL_OVERRIDES = ["image_size=64", "train.steps=150", "train.warmup_steps=10"]


def register(sub) -> None:
    p = sub.add_parser("demo", help="a few-minute continual run with its report (no data needed)")
    add_data_args(p)
    p.add_argument("--categories", help='tasks for --data, e.g. "bottle;magnetic_tile;kolektor" (default: its first three)')
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    add_run_args(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=run)


def run(args) -> int:
    overrides = (PROCEDURAL_OVERRIDES if args.data is None else []) + list(args.overrides)
    config = load_config("tiny", overrides)
    data = data_source(args, config["image_size"])
    if args.categories:
        tasks = parse_categories(args.categories)
    elif args.data is None:
        tasks = PROCEDURAL_TASKS
    else:
        tasks = [[c] for c in data.categories()[:3]]
    print(f"demo: {data}, tasks {' -> '.join('+'.join(t) for t in tasks)}, out {args.out}")
    results = compare_variants(config, tasks, data, Path(args.out), device=args.device, progress=not args.no_progress)
    for variant, result in results.items():
        s = result.summary["image_auroc"]
        print(f"{variant:>10}: image AUROC ACC {s['acc']:.3f}  FM {s['fm']:.3f}")
    print(f"report: {Path(args.out) / 'comparison.md'}")
    return 0
