"""The run verbs end to end through ``oneformore.cli.main.main`` on procedural data, at sizes that train in seconds:
train (two variants and the comparison) -> test -> predict, the refiner through the same verbs, the demo, and the
argument errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from oneformore.cli.main import main
from oneformore.data.source import DataSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "detector"))
from small import small  # noqa: E402

REFINER_SMALL = ["image_size=32", "transformer.width=32", "transformer.depth=1", "transformer.heads=2",
                 "refiner.width=32", "refiner.blocks=1", "features.norm_batches=1", "inference.steps=2",
                 "train.steps=4", "train.batch_size=4", "train.warmup_steps=1", "train.checkpoint_every=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--config", "tiny", "--categories", "stripes;disc", "--variants", "projection,naive",
                 "--out", str(out), "--no-progress", *small()]) == 0
    return out


def test_train_writes_each_variant_and_the_comparison(trained, capsys):
    for variant in ("projection", "naive"):
        assert (trained / variant / "detector.pt").is_file() and (trained / variant / "report.md").is_file()
        assert (trained / variant / "config.yaml").read_text().startswith("name: tiny")
    table = (trained / "comparison.md").read_text()
    assert "projection" in table and "naive" in table and (trained / "comparison.json").is_file()


def test_test_verb_reports_every_learned_category(trained, tmp_path, capsys):
    assert main(["test", "--checkpoint", str(trained / "projection"), "--out", str(tmp_path), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "stripes: image AUROC" in printed and "disc: image AUROC" in printed
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"stripes", "disc"} and 0.0 <= metrics["disc"]["image_auroc"] <= 1.0


def test_predict_verb_scores_a_folder(trained, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    data = DataSource(None, image_size=32)
    test_set = data.dataset(["disc"], "test")
    for i in (0, 1, len(test_set) - 1):
        x = data.denormalise(test_set[i]["image"]).clamp(0, 1)
        Image.fromarray((x.permute(1, 2, 0) * 255).round().byte().numpy()).save(images / f"part{i}.png")
    (images / ".hidden.png").write_bytes(b"not an image")  # hidden files are ignored
    out = tmp_path / "pred"
    assert main(["predict", str(images), "--checkpoint", str(trained / "projection" / "detector.pt"),
                 "--out", str(out), "--no-progress"]) == 0
    rows = json.loads((out / "scores.json").read_text())
    assert len(rows) == 3 and all(isinstance(r["anomalous"], bool) and r["score"] >= 0 for r in rows)
    assert (out / "scores.csv").read_text().startswith("path,score,anomalous")
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == ["part0.png", "part1.png", f"part{len(test_set) - 1}.png"]


def test_refiner_trains_and_tests_through_the_same_verbs(tmp_path, capsys):
    out = tmp_path / "unified"
    assert main(["train", "--model", "refiner", "--categories", "stripes,disc", "--out", str(out), "--no-progress",
                 *REFINER_SMALL]) == 0
    state = torch.load(out / "joint" / "detector.pt", map_location="cpu", weights_only=True)
    assert state["config"]["model"] == "refiner" and state["tasks"] == [["stripes", "disc"]]
    assert main(["test", "--checkpoint", str(out / "joint"), "--out", str(tmp_path / "t"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "stripes: image AUROC" in printed and "stripes (coarse): image AUROC" in printed


def test_demo_runs_the_three_variants(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress", *small(), "continual.bases.images=8"]) == 0
    printed = capsys.readouterr().out
    assert all(v in printed for v in ("projection", "naive", "joint")) and (out / "comparison.md").is_file()


def test_bad_arguments_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--variants"):
        main(["train", "--categories", "stripes", "--variants", "replay", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--config"):
        main(["train", "--model", "refiner", "--config", "tiny", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="images"):
        main(["predict", str(tmp_path / "missing"), "--checkpoint", str(tmp_path), "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        main(["test", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path)])
