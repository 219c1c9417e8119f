"""``oneformore predict``: anomaly scores and heatmaps for image files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..detector import Detector
from ..report.atomic import write_text_atomic
from .common import add_run_args

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def register(sub) -> None:
    p = sub.add_parser("predict", help="score images: scores.json, scores.csv and one heatmap strip per image")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--checkpoint", required=True, help="a detector.pt (or the run directory holding it)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--batch-size", type=int, default=8)
    add_run_args(p)
    p.set_defaults(func=run)


def expand(paths: list[str]) -> list[Path]:
    files = []
    for item in map(Path, paths):
        if item.is_dir():
            files += sorted(f for f in item.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        elif item.is_file():
            files.append(item)
        else:
            raise SystemExit(f"images: no file or folder at {item}")
    if not files:
        raise SystemExit(f"images: no image files found in {paths}")
    return files


def run(args) -> int:
    images = expand(args.images)  # before loading the model: a typo fails at once
    detector = Detector.load(args.checkpoint, device=args.device, progress=not args.no_progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = detector.predict(images, out / "heatmaps", batch_size=args.batch_size)
    rows = [{k: v for k, v in r.items() if k != "map"} for r in results]
    write_text_atomic(out / "scores.json", json.dumps(rows, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / "scores.csv", buffer.getvalue())
    for r in rows:
        flag = "" if "anomalous" not in r else ("  ANOMALOUS" if r["anomalous"] else "  normal")
        print(f"{r['score']:10.4f}{flag}  {r['path']}")
    print(f"scores: {out / 'scores.csv'}, heatmaps: {out / 'heatmaps'}")
    return 0
