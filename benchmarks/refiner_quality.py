"""Trains one refiner on several categories at once and reports coarse vs refined metrics (not run in CI).

    PYTHONPATH=$PWD python benchmarks/refiner_quality.py --categories bottle,magnetic_tile,kolektor \
        --out runs/refiner_unified [train.steps=1500 inference.t_start=200 ...]

Data: ``MVTecAD(root, categories, split)`` at the preset's image size, decoded once into memory (the preset has no
augmentation, so every epoch would decode the same pixels again). Training: the shared ``Trainer``; evaluation with
the EMA weights. Prints per-category and mean image AUROC, pixel AUROC and AUPRO for the "coarse" and "refined"
outputs and writes them to ``<out>/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from oneformore.config import load_config
from oneformore.data import AnomalyTransform, CachedDataset, MVTecAD
from oneformore.models.refiner import build_refiner
from oneformore.models.refiner.config import InferenceConfig
from oneformore.models.refiner.evaluation import evaluate_outputs
from oneformore.train import Trainer, TrainerConfig


def table(results: dict) -> str:
    cats = list(results["refined"])
    lines = ["| category | output | image AUROC | pixel AUROC | AUPRO |", "|---|---|---|---|---|"]
    for cat in cats:
        for name in ("coarse", "refined"):
            r = results[name][cat]
            lines.append(f"| {cat} | {name} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['pixel_aupro']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="refiner")
    ap.add_argument("--categories", default="bottle,magnetic_tile,kolektor")
    ap.add_argument("--data", default=os.environ.get("ONEFORMORE_TEST_DATA", "../shared/data"))
    ap.add_argument("--out", default="runs/refiner_quality")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave the default)")
    ap.add_argument("--sweep", default="", help="extra evaluations after training, ';'-separated groups of "
                    "','-separated inference overrides, e.g. 'inference.t_start=400;inference.t_start=800,"
                    "inference.steps=5' (an ablation: every setting is reported, none is selected)")
    ap.add_argument("overrides", nargs="*", help="dotted KEY=VALUE config overrides")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_config(args.config, args.overrides)
    cats = args.categories.split(",")
    transform = AnomalyTransform(config["image_size"])
    train = CachedDataset(MVTecAD(args.data, cats, "train", transform), preload=True, desc="loading train")
    test = CachedDataset(MVTecAD(args.data, cats, "test", transform), preload=True, desc="loading test")
    torch.manual_seed(config["train"].get("seed", 0))
    model = build_refiner(config)
    trainer = Trainer(model, train, TrainerConfig.from_dict(config["train"]), args.out, device="cpu")
    start = time.perf_counter()
    history = trainer.fit()
    train_s = time.perf_counter() - start
    model.load_state_dict(trainer.ema_state_dict())
    start = time.perf_counter()
    results = evaluate_outputs(model, test, batch_size=16)
    test_s = time.perf_counter() - start
    record = {"config": config, "categories": cats, "train_seconds": train_s, "test_seconds": test_s,
              "final_loss": history[-1] if history else None, "results": results, "sweep": {}}
    print(table(results))
    print(f"train {train_s:.0f} s, test {test_s:.0f} s, threads {torch.get_num_threads()}", flush=True)
    for group in filter(None, args.sweep.split(";")):
        swept = load_config(args.config, [*args.overrides, *group.split(",")])
        model.inference = InferenceConfig(**swept["inference"])
        res = evaluate_outputs(model, test, batch_size=16)
        record["sweep"][group] = res
        print(f"\n{group}\n{table(res)}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "metrics.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
