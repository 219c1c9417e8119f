"""The continual diffusion detector learns: a few hundred steps on real MVTec `bottle` at 128 px must beat image
AUROC 0.7 on its test set (measured in development: about 0.77 after 400 steps)."""

from __future__ import annotations

from oneformore.data.source import DataSource
from oneformore.detector import Detector


def test_tiny_detector_beats_auroc_0_7_on_real_bottle(shared_data, tmp_path):
    detector = Detector("tiny", ["train.steps=400", "autoencoder_train.steps=300", "train.checkpoint_every=0"],
                        device="cpu", progress=False)
    data = DataSource(shared_data, "mvtec", 128)
    detector.fit([["bottle"]], data, tmp_path, test=False)
    values = detector.test(data, ["bottle"]).values()["bottle"]
    assert values["image_auroc"] > 0.7, values
