"""The continual diffusion detector learns: a few hundred steps on real MVTec `bottle` must beat image AUROC 0.7 on
its test set (the issue's bar). The test asserts a stricter 0.85, well under what it reaches, so that a regression
in the model shows. The tiny preset (diffusion in the backbone's feature space, 128 px) trained for 200 steps
reached image AUROC 0.980 (pixel AUROC 0.975), in 87 s under pytest, on the 2-core Intel development machine."""

from __future__ import annotations

from oneformore.data.source import DataSource
from oneformore.detector import Detector


def test_tiny_detector_beats_auroc_0_7_on_real_bottle(shared_data, tmp_path):
    detector = Detector("tiny", ["train.steps=200", "train.checkpoint_every=0"], device="cpu", progress=False)
    data = DataSource(shared_data, "mvtec", 128, cache=True)  # every epoch after the first skips PNG decoding
    detector.fit([["bottle"]], data, tmp_path, test=False)
    values = detector.test(data, ["bottle"]).values()["bottle"]
    assert values["image_auroc"] > 0.85, values
