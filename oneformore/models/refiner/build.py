"""``build_refiner(config)``: the refiner detector from a resolved config (``oneformore/configs/refiner.yaml``)."""

from __future__ import annotations

from ...diffusion import NoiseSchedule
from ..backbone import load_backbone
from .config import DiffusionConfig, FeatureConfig, InferenceConfig, MaskConfig, TransformerConfig, from_section
from .denoiser import RefinerDenoiser
from ..features import AlignedFeatures, FeatureNormalizer
from .model import RefinerDetector
from .transformer import MaskedReconstructor

SECTIONS = ("backbone", "features", "transformer", "mask", "refiner", "inference")


def build_refiner(config: dict) -> RefinerDetector:
    """A :class:`RefinerDetector` for ``config`` (keys: image_size, backbone, features, transformer, mask,
    refiner, inference; other top-level keys such as train are ignored here)."""
    if not isinstance(config, dict):
        raise TypeError(f"config: expected a dict (a resolved YAML preset), got {type(config).__name__}")
    if config.get("model", "refiner") != "refiner":
        raise ValueError(f"config.model: expected 'refiner', got {config.get('model')!r}")
    size = config.get("image_size", 128)
    size = (size, size) if isinstance(size, int) else tuple(size)
    feature_cfg = from_section(FeatureConfig, "features", config.get("features"))
    transformer_cfg = from_section(TransformerConfig, "transformer", config.get("transformer"))
    mask_cfg = from_section(MaskConfig, "mask", config.get("mask"))
    diffusion_cfg = from_section(DiffusionConfig, "refiner", config.get("refiner"))
    inference_cfg = from_section(InferenceConfig, "inference", config.get("inference"))
    bb = dict(config.get("backbone") or {})
    backbone = load_backbone(bb.get("name", "efficientnet_lite0"), bb.get("weights"),
                             tuple(bb.get("strides", (4, 8, 16))), bb.get("out_indices"))
    features = AlignedFeatures(backbone, feature_cfg.grid_stride)
    if size[0] % feature_cfg.grid_stride or size[1] % feature_cfg.grid_stride:
        raise ValueError(f"image_size: {size} must be a multiple of features.grid_stride={feature_cfg.grid_stride}")
    grid = features.grid_size(size)
    transformer = MaskedReconstructor(features.channels, grid, transformer_cfg.width, transformer_cfg.depth,
                                      transformer_cfg.heads, transformer_cfg.mlp_ratio, transformer_cfg.position)
    denoiser = RefinerDenoiser(features.channels, diffusion_cfg.width, diffusion_cfg.blocks)
    schedule = NoiseSchedule(diffusion_cfg.schedule, diffusion_cfg.num_steps)
    return RefinerDetector(features, FeatureNormalizer(features.channels, feature_cfg.norm_batches), transformer,
                           denoiser, schedule, mask_cfg, diffusion_cfg, inference_cfg)
