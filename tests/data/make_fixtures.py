"""Small generated datasets in the MVTec-like and raw VisA layouts (random images, rectangular defects)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def _image(path: Path, rng, size=(40, 48), ext_format=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=ext_format)


def _mask(path: Path, size=(40, 48), value=255, box=(5, 15, 10, 30)) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros(size, dtype=np.uint8)
    m[box[0] : box[1], box[2] : box[3]] = value
    Image.fromarray(m).save(path)
    return m


def make_folder_category(root: Path, name: str, *, n_train=3, n_good=2, defects=(("scratch", 2), ("dent", 1)),
                         masks=True, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    cat = root / name
    for i in range(n_train):
        _image(cat / "train" / "good" / f"{i:03d}.png", rng)
    for i in range(n_good):
        _image(cat / "test" / "good" / f"{i:03d}.png", rng)
    for defect, n in defects:
        for i in range(n):
            _image(cat / "test" / defect / f"{i:03d}.png", rng)
            if masks:
                _mask(cat / "ground_truth" / defect / f"{i:03d}_mask.png")
    # clutter that must be ignored
    (cat / "train" / "good" / ".DS_Store").write_bytes(b"\0\1")
    (cat / "train" / "good" / "._000.png").write_bytes(b"not an image")
    (cat / "test" / "good" / "notes.txt").write_text("ignore me")
    (cat / "test" / ".hidden_defect").mkdir(exist_ok=True)
    return cat


def make_visa(root: Path, categories=("candle", "pcb1"), *, n_train=3, n_test_normal=2, n_test_anomaly=2, seed=0) -> Path:
    """Raw VisA layout: <cat>/Data/Images/{Normal,Anomaly}/*.JPG, <cat>/Data/Masks/Anomaly/*.png with region
    indices 1, 2 (not 255), and split_csv/1cls.csv."""
    rng = np.random.default_rng(seed)
    rows = []
    for cat in categories:
        k = 0
        for split, n in (("train", n_train), ("test", n_test_normal)):
            for _ in range(n):
                rel = f"{cat}/Data/Images/Normal/{k:04d}.JPG"
                _image(root / rel, rng, ext_format="JPEG")
                rows.append([cat, split, "normal", rel, ""])
                k += 1
        for i in range(n_test_anomaly):
            rel = f"{cat}/Data/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{cat}/Data/Masks/Anomaly/{i:03d}.png"
            _image(root / rel, rng, ext_format="JPEG")
            m = _mask(root / mrel, value=1)
            m[30:35, 35:40] = 2  # a second region with another index
            Image.fromarray(m).save(root / mrel)
            rows.append([cat, "test", "anomaly", rel, mrel])
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["object", "split", "label", "image", "mask"])
        w.writerows(rows)
    return root
