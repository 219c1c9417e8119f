"""A detector small enough to train in seconds: 32 px procedural images, a narrow UNet, a few steps."""

from __future__ import annotations

SMALL = [
    "image_size=32", "unet.channels=16", "autoencoder.channels=8", "control.hint_widths=[8,16]",
    "train.steps=6", "train.batch_size=4", "train.warmup_steps=2", "train.checkpoint_every=0",
    "autoencoder_train.steps=4", "autoencoder_train.batch_size=4",
    "continual.bases.images=8", "continual.bases.batch_size=4", "continual.bases.passes_per_batch=2",
    "inference.steps=2", "eval.batch_size=8",
]


def small(*extra: str) -> list[str]:
    return SMALL + list(extra)
