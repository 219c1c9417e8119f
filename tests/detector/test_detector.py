"""The Detector API end to end on procedural data: the task loop, gradient projection that really protects old
tasks, checkpoints (weights_only, resume mid-task and mid-sequence) and the report."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from oneformore.data.source import DataSource
from oneformore.detector import CHECKPOINT, Detector
from oneformore.train.trainer import load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from small import small  # noqa: E402

TASKS = [["stripes"], ["disc"]]


def _source():
    return DataSource(None, image_size=32)


def _fit(tmp_path, variant="projection", *extra, **kw):
    detector = Detector("tiny", small(*extra), device="cpu", progress=False)
    return detector, detector.fit(TASKS, _source(), tmp_path / variant, variant=variant, **kw)


@pytest.fixture(scope="module")
def projection_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    detector, result = _fit(tmp)
    return tmp / "projection", detector, result


def test_fit_fills_the_r_matrices_and_writes_the_report(projection_run):
    out, detector, result = projection_run
    assert set(result.r) == {"image_auroc", "pixel_auroc", "pixel_aupro"}
    r = result.r["image_auroc"]
    assert len(r) == 2 and math.isnan(r[0][1]) and all(0.0 <= v <= 1.0 for v in (r[0][0], r[1][0], r[1][1]))
    assert set(result.final) == {"stripes", "disc"} and set(result.summary["image_auroc"]) == {"acc", "fm", "bwt"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"stripes", "disc"} and "image_auroc" in metrics["continual"]
    report = (out / "report.md").read_text()
    assert "R matrix" in report and "strips/" in report
    assert (out / "config.yaml").is_file() and sorted(p.name for p in (out / "strips").iterdir())


def test_checkpoint_loads_weights_only_and_predicts_the_same(projection_run, tmp_path):
    out, detector, _ = projection_run
    state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
    assert state["completed"] == 1 and state["tasks"] == TASKS and state["projector"]["bases"]
    loaded = Detector.load(out, device="cpu", progress=False)
    images = _source().dataset(["stripes"], "test")
    batch = torch.stack([images[i]["image"] for i in (0, 20)])
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = next(iter(detector.model.score(batch, g()).values()))[0]
    b = next(iter(loaded.model.score(batch, g()).values()))[0]
    torch.testing.assert_close(a, b)
    assert loaded.calibration is not None and loaded.calibration.threshold == detector.calibration.threshold


def _projected_weights(detector):
    return {name: m.weight.detach().clone() for name, m in detector.projector.layers.items()}


@pytest.mark.parametrize("variant", ["projection", "naive"])
def test_the_second_task_keeps_old_inputs_outputs_only_with_projection(tmp_path, variant):
    """After task 0 the bases are built; training task 1 must leave W·U (the layers' response to task-0 inputs)
    unchanged with projection, under AdamW with weight decay, and change it without."""
    detector = Detector("tiny", small("train.steps=10", "train.lr=1e-3", "train.weight_decay=0.1"),
                        device="cpu", progress=False)
    data = _source()
    # task 0 with bases, even for the naive run (which ignores them): same start for both
    detector.fit(TASKS[:1], data, tmp_path / "t0", variant="projection", test=False)
    detector._update_bases(0, data.dataset(TASKS[0], "train"))
    before = _projected_weights(detector)
    bases = dict(detector.projector.bases)
    detector._train_task(1, data.dataset(TASKS[1], "train"), tmp_path / "t1", 10, variant == "projection", None)
    after = _projected_weights(detector)
    moved, leaked = 0.0, 0.0
    for name, u in bases.items():
        if u.shape[1] == 0:
            continue
        delta = (after[name] - before[name]).reshape(after[name].shape[0], -1)
        moved += float(delta.norm() ** 2)
        leaked += float((delta @ u).norm() ** 2)
    assert moved > 0.0  # the second task did train
    if variant == "projection":
        assert leaked <= 1e-8 * moved
    else:
        assert leaked > 1e-3 * moved


def test_resume_mid_task_gives_the_uninterrupted_weights(tmp_path):
    d1 = Detector("tiny", small(), device="cpu", progress=False)
    assert d1.fit(TASKS, _source(), tmp_path / "a", stop_after=3, test=False) is None  # killed in task 0
    d1 = Detector("tiny", small(), device="cpu", progress=False)  # a fresh process picks the run up
    d1.fit(TASKS, _source(), tmp_path / "a", test=False)
    d2 = Detector("tiny", small(), device="cpu", progress=False)
    d2.fit(TASKS, _source(), tmp_path / "b", test=False)
    s1, s2 = d1.model.state_dict(), d2.model.state_dict()
    diffs = {k: float((s1[k].double() - s2[k].double()).abs().max()) for k in s1 if s1[k].is_floating_point()}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= 1e-6, (worst, diffs[worst], sorted(diffs.values())[len(diffs) // 2])


def test_resume_mid_sequence_skips_finished_tasks(projection_run):
    out, _, result = projection_run
    again = Detector("tiny", small(), device="cpu", progress=False)
    mtime = (out / CHECKPOINT).stat().st_mtime_ns
    task0 = (out / "task0" / "last.pt").stat().st_mtime_ns
    rerun = again.fit(TASKS, _source(), out)
    assert (out / "task0" / "last.pt").stat().st_mtime_ns == task0  # not retrained
    for metric, r in result.r.items():  # NaN above the diagonal: compare with equal_nan
        np.testing.assert_array_equal(np.asarray(rerun.r[metric]), np.asarray(r))
    assert (out / CHECKPOINT).stat().st_mtime_ns >= mtime


def test_a_run_directory_of_another_sequence_is_refused(projection_run):
    out, _, _ = projection_run
    with pytest.raises(ValueError, match="use another out_dir"):
        Detector("tiny", small(), device="cpu", progress=False).fit([["marble"]], _source(), out)


def test_joint_training_is_one_task_over_every_category(tmp_path):
    detector, result = _fit(tmp_path, "joint")
    assert len(result.r["image_auroc"]) == 1 and len(result.r["image_auroc"][0]) == 2
    assert math.isnan(result.summary["image_auroc"]["fm"])
    state = load_checkpoint(tmp_path / "joint" / CHECKPOINT)
    assert state["projector"] is None and not (tmp_path / "joint" / "task1").exists()


def test_bad_arguments_are_named(tmp_path):
    detector = Detector("tiny", small(), device="cpu", progress=False)
    with pytest.raises(ValueError, match="variant"):
        detector.fit(TASKS, _source(), tmp_path, variant="replay")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        Detector.load(tmp_path / "nothing.pt")
    with pytest.raises(ValueError, match="categories"):
        detector.test(_source())
    with pytest.raises(FileNotFoundError, match="images"):
        detector.predict([tmp_path / "missing.png"])


def test_latent_space_trains_its_autoencoder_once_before_the_first_task(tmp_path):
    detector, result = _fit(tmp_path, "projection", "space=latent")
    ae = detector.model.autoencoder
    assert bool(ae.trained) and float(ae.scale) != 1.0 and not any(p.requires_grad for p in ae.parameters())
    r = result.r["image_auroc"]
    assert all(0.0 <= v <= 1.0 for v in (r[0][0], r[1][0], r[1][1]))
    assert detector.projector.bases and any(u.shape[1] > 0 for u in detector.projector.bases.values())


def test_feature_space_has_no_autoencoder_and_freezes_its_statistics(projection_run):
    _, detector, _ = projection_run
    model = detector.model
    assert model.autoencoder is None and model.features is not None
    normalizer = model.features.normalizer
    assert int(normalizer.batches) > 0 and float(normalizer.std.min()) > 0  # taken from task 0, kept since
    state = detector.state_dict()["model"]
    assert "features.normalizer.mean" in state and "features.normalizer.std" in state


def test_autoencoder_weights_from_a_local_file_replace_its_training(tmp_path):
    latent = Detector("tiny", small("space=latent"), device="cpu", progress=False).model.autoencoder
    with torch.no_grad():
        for param in latent.parameters():
            param.add_(0.01)  # not the initialisation a fresh detector starts from
    latent.scale.fill_(0.5)
    latent.trained.fill_(True)
    trained = latent.state_dict()
    images = _source().dataset(["stripes"], "train")
    for name, payload in [("state.pt", trained),  # the autoencoder's state dict, or its training run's last.pt
                          ("last.pt", {"step": 4, "ema": trained, "model": trained})]:
        torch.save(payload, tmp_path / name)
        fresh = Detector("tiny", small("space=latent", f"autoencoder.weights={tmp_path / name}"), device="cpu",
                         progress=False)
        fresh.model.prepare(images, tmp_path / "ae_run", False)
        assert not (tmp_path / "ae_run").exists()  # nothing trained
        loaded = fresh.model.autoencoder.state_dict()
        for key, value in trained.items():
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
    bare = {k: v for k, v in trained.items() if k not in ("scale", "trained")}  # no latent scale: calibrated
    torch.save(bare, tmp_path / "bare.pt")
    fresh = Detector("tiny", small("space=latent", f"autoencoder.weights={tmp_path / 'bare.pt'}"), device="cpu",
                     progress=False)
    fresh.model.prepare(images, tmp_path / "ae_run", False)
    assert bool(fresh.model.autoencoder.trained) and float(fresh.model.autoencoder.scale) != 1.0
    wider = Detector("tiny", small("space=latent", "autoencoder.channels=16",
                                   f"autoencoder.weights={tmp_path / 'state.pt'}"),
                     device="cpu", progress=False)
    with pytest.raises(ValueError, match="autoencoder.weights: .* does not fit"):
        wider.model.prepare(images, tmp_path / "ae_run", False)
    missing = Detector("tiny", small("space=latent", f"autoencoder.weights={tmp_path / 'nothing.pt'}"),
                       device="cpu", progress=False)
    with pytest.raises(FileNotFoundError, match="autoencoder.weights"):
        missing.model.prepare(images, tmp_path / "ae_run", False)
