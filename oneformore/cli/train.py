"""``oneformore train``: learn a task sequence (continual detector) or all categories at once (refiner)."""

from __future__ import annotations

from pathlib import Path

from ..comparison import compare_variants
from ..config import load_config
from ..detector import VARIANTS
from ..train.distributed import init_from_environment, is_main
from .common import add_data_args, add_run_args, add_task_args, data_source, tasks_from_args

DEFAULT_CONFIG = {"continual": "tiny", "refiner": "refiner"}


def register(sub) -> None:
    p = sub.add_parser("train", help="train a detector on a task sequence and write its report",
                       description="Trains task after task, tests on every category seen after each task, and "
                                   "writes metrics.json, report.md, plots and heatmap strips to --out. An "
                                   "interrupted run resumes when started again with the same --out. Under "
                                   "torchrun (--nproc_per_node=N) the ranks share every batch (DDP).")
    p.add_argument("--model", choices=sorted(DEFAULT_CONFIG), default="continual")
    p.add_argument("--config", help="a preset (tiny, base, refiner) or a YAML file (default: tiny for continual, "
                                    "refiner for refiner)")
    add_data_args(p)
    add_task_args(p)
    p.add_argument("--variants", default=None,
                   help=f"comma-separated, from {', '.join(VARIANTS)} (default: projection for continual, joint "
                        "for refiner); several give a side-by-side comparison.md")
    p.add_argument("--out", required=True, help="run directory")
    add_run_args(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.steps=400")
    p.set_defaults(func=run)


def run(args) -> int:
    config = load_config(args.config or DEFAULT_CONFIG[args.model], args.overrides)
    if config.get("model", "continual") != args.model:
        raise SystemExit(f"--config {args.config}: a {config.get('model')!r} config, but --model is {args.model!r}")
    variants = (args.variants or ("joint" if args.model == "refiner" else "projection")).split(",")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise SystemExit(f"--variants: unknown {bad}; expected some of {list(VARIANTS)}")
    data = data_source(args, config["image_size"])
    tasks = tasks_from_args(args, data)
    device = init_from_environment(args.device)  # under torchrun: the process group and this rank's device
    results = compare_variants(config, tasks, data, Path(args.out), variants=variants, device=device,
                               progress=not args.no_progress and is_main())
    if not is_main():
        return 0
    for variant, result in results.items():
        acc = {m: round(s["acc"], 4) for m, s in result.summary.items()}
        print(f"{variant}: ACC {acc}  ->  {Path(args.out) / variant / 'report.md'}")
    print(f"comparison: {Path(args.out) / 'comparison.md'}")
    return 0
