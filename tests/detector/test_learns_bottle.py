"""The continual diffusion detector learns: a few hundred steps on real MVTec `bottle` at 128 px must beat image
AUROC 0.7 on its test set (measured in development on the 2-core Intel machine: 0.844 with 150 autoencoder and
300 diffusion steps, 257 s; 0.78 with 300 and 400, 310 s; 0.49 with 100 and 200, which is too short)."""

from __future__ import annotations

from oneformore.data.source import DataSource
from oneformore.detector import Detector


def test_tiny_detector_beats_auroc_0_7_on_real_bottle(shared_data, tmp_path):
    detector = Detector("tiny", ["train.steps=300", "autoencoder_train.steps=150", "train.checkpoint_every=0"],
                        device="cpu", progress=False)
    data = DataSource(shared_data, "mvtec", 128, cache=True)  # every epoch after the first skips PNG decoding
    detector.fit([["bottle"]], data, tmp_path, test=False)
    values = detector.test(data, ["bottle"]).values()["bottle"]
    assert values["image_auroc"] > 0.7, values
