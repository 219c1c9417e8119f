"""The continual diffusion detector as one module with the interface every detector model of the package has.

Detector-model interface (what :class:`oneformore.detector.Detector` and the trainer rely on):

- ``training_loss(batch, generator) -> Tensor``: the scalar loss of one step (the trainer's model interface);
- ``score(images, generator=None) -> {output name: (maps [B, 1, H, W], image scores [B])}``: the first entry is the
  detector's primary output; others are extra outputs reported alongside (the refiner's coarse output);
- ``activation_pass(batch, generator)``: one forward pass of the trainable networks on inputs distributed like
  the training inputs, run under the activation collector's hooks to build the gradient-projection bases;
- ``trainable``: the module holding every trainable network (what the gradient projector covers);
- ``prepare(dataset, out_dir, progress)`` (optional): a stage that runs once before the first task.

Here: ``prepare`` trains the autoencoder (latent space) on the first task's images, or loads pretrained weights
from the local file ``autoencoder.weights``, and freezes it, as the paper's latent diffusion uses a frozen
pretrained autoencoder; in feature space (``space: features``) there is nothing to prepare: the frozen pretrained
backbone is the encoder, and its feature statistics are taken from the first task's first training batches;
``training_loss`` is the denoising objective with AMN-masked conditions (:mod:`oneformore.models.objective`);
``score`` is :class:`~oneformore.models.inference.AnomalyScorer`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..data.loader import collate_samples
from ..diffusion import NoiseSchedule
from ..train import Trainer, TrainerConfig
from .backbone import load_backbone
from .build import build_networks
from .features import FeatureSpace
from .inference import AnomalyScorer, InferenceConfig
from .objective import DenoisingObjective, ObjectiveConfig


def build_schedule(config: dict) -> NoiseSchedule:
    diffusion = config.get("diffusion", {})
    return NoiseSchedule(diffusion.get("schedule", "linear"), int(diffusion.get("num_steps", 1000)))


def load_autoencoder_weights(ae: nn.Module, path: str | Path) -> None:
    """Loads ``config.autoencoder.weights`` into ``ae``: the autoencoder's ``state_dict()`` saved with
    ``torch.save``, or the ``last.pt`` of its training run (its EMA weights), read with ``weights_only=True``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"autoencoder.weights: no file at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "ema" in state and "step" in state:  # a Trainer checkpoint
        state = state["ema"] or state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"autoencoder.weights: {path} holds a {type(state).__name__}, expected a state dict")
    own = ae.state_dict()
    missing = sorted(set(own) - set(state) - {"scale", "trained"})
    wrong = sorted(k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or wrong:
        raise ValueError(f"autoencoder.weights: {path} does not fit the configured autoencoder (missing "
                         f"{missing[:3]}, shape mismatch {wrong[:3]}); check the autoencoder section of the config")
    ae.load_state_dict({**own, **{k: v for k, v in state.items() if k in own}})


class ContinualDiffusionModel(nn.Module):
    """UNet + control branch (+ autoencoder) + frozen backbone, built from a resolved config (``tiny``/``base``)."""

    def __init__(self, config: dict, backbone: nn.Module | None = None):
        super().__init__()
        self.config = config
        if backbone is None:
            bb = config["backbone"]
            backbone = load_backbone(bb["name"], bb.get("weights"), tuple(bb.get("strides", (4, 8, 16))))
        self.backbone = backbone.requires_grad_(False).eval()
        self.features = None
        if config.get("space", "latent") == "features":
            feats = dict(config.get("features") or {})
            self.features = FeatureSpace(self.backbone, int(feats.get("grid_stride", 8)),
                                         int(feats.get("norm_batches", 50)), float(feats.get("cache_mb", 0)))
        self.networks = build_networks(config, self.features.channels if self.features is not None else None)
        schedule = build_schedule(config)
        objective = ObjectiveConfig(**(config.get("objective") or {}))
        self.objective = DenoisingObjective(self.networks, torch.as_tensor(schedule.alphas_cumprod), objective,
                                            self.features)
        self.scorer = AnomalyScorer(self.networks, self.backbone, schedule,
                                    InferenceConfig(**config.get("inference", {})), self.features,
                                    objective.prediction)

    @property
    def trainable(self) -> nn.Module:
        return self.networks.denoiser

    @property
    def autoencoder(self):
        return self.networks.autoencoder

    def train(self, mode: bool = True) -> "ContinualDiffusionModel":
        super().train(mode)
        self.backbone.eval()
        self.objective.train(mode)  # keeps the autoencoder in eval mode
        return self

    def training_loss(self, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.objective.training_loss(batch, generator)

    @torch.no_grad()
    def activation_pass(self, batch, generator: torch.Generator | None = None) -> None:
        """The denoiser on the training inputs (:meth:`DenoisingObjective.training_inputs`: a random timestep per
        image, AMN-masked condition, synthetic defects when configured), without updating feature statistics."""
        x_t, t, cond, *_ = self.objective.training_inputs(batch["image"], generator, keys=batch.get("path"))
        self.networks.denoiser(x_t, t, cond)

    @torch.no_grad()
    def score(self, images: torch.Tensor, generator: torch.Generator | None = None):
        maps, scores, _ = self.scorer(images, generator)
        return {"diffusion": (maps, scores)}

    def prepare(self, dataset, out_dir: str | Path, progress: bool = True) -> None:
        """Trains the autoencoder on ``dataset`` into ``out_dir``, or loads ``autoencoder.weights``; calibrates
        its latent scale (unless the weights carry a calibrated one) and freezes it. Once: a no-op when it is
        already prepared or in pixel space."""
        ae = self.networks.autoencoder
        if ae is None or bool(ae.trained):
            return
        cfg = TrainerConfig.from_dict({**self.config["autoencoder_train"], "progress": progress})
        device = next(ae.parameters()).device
        weights = self.config["autoencoder"].get("weights")
        if weights:
            load_autoencoder_weights(ae, weights)
        else:
            ae.requires_grad_(True).train()
            trainer = Trainer(ae, dataset, cfg, Path(out_dir), device=device, collate_fn=collate_samples)
            trainer.fit()
            ae.load_state_dict(trainer.ema_state_dict())
        ae.requires_grad_(False).eval()
        if not bool(ae.trained):  # trained here, or loaded without its calibrated scale
            loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=collate_samples)
            ae.calibrate_scale(batch["image"].to(device) for batch in loader)
        ae.trained.fill_(True)
