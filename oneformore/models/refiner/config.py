"""The refiner's config sections (``oneformore/configs/refiner.yaml``) as validated dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ...metrics.image_score import IMAGE_SCORE_RULES
from ..defects import check_defect_settings
from .tokens import PATTERNS, TEST_PATTERNS, grid_side


def from_section(cls, section: str, d: dict | None):
    d = dict(d or {})
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{section}: unknown keys {unknown}; expected some of {sorted(names)}")
    return cls(**d)


@dataclass
class FeatureConfig:
    grid_stride: int = 8  # the token grid: every backbone level is resized to this stride
    norm_batches: int = 50  # training batches whose statistics standardise the features (then frozen)


@dataclass
class TransformerConfig:
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    position: str = "learned"  # learned | sinusoidal


@dataclass
class MaskConfig:
    pattern: str = "random"  # training masks: random | block | grid
    ratio_min: float = 0.25
    ratio_max: float = 0.5
    block_size: int = 4  # tokens per block side ("block")
    test_partitions: int = 4  # K complementary masks at test time ("grid": a perfect square)
    test_pattern: str = "grid"  # grid | random

    def __post_init__(self):
        if self.pattern not in PATTERNS:
            raise ValueError(f"mask.pattern: expected one of {PATTERNS}, got {self.pattern!r}")
        if self.test_pattern not in TEST_PATTERNS:
            raise ValueError(f"mask.test_pattern: expected one of {TEST_PATTERNS}, got {self.test_pattern!r}")
        if not 0.0 < self.ratio_min <= self.ratio_max < 1.0:
            raise ValueError(f"mask.ratio_min/ratio_max: expected 0 < ratio_min <= ratio_max < 1, "
                             f"got {self.ratio_min}, {self.ratio_max}")
        if self.block_size < 1:
            raise ValueError(f"mask.block_size: expected >= 1, got {self.block_size}")
        if self.test_partitions < 2:
            raise ValueError(f"mask.test_partitions: expected >= 2 (K = 1 would mask every token), "
                             f"got {self.test_partitions}")
        if "grid" in (self.pattern, self.test_pattern):
            grid_side(self.test_partitions)


@dataclass
class DiffusionConfig:
    width: int = 128
    blocks: int = 3
    schedule: str = "linear"  # NoiseSchedule kind
    num_steps: int = 1000
    train_t_max: int = 1000  # training timesteps are drawn from [0, train_t_max)
    loss_weight: float = 1.0  # weight of the refiner's ε-loss in the sum with the transformer's loss
    # "eps": the network's output is ε̂. "coarse_anchored": the output is a correction Δ of the coarse
    # reconstruction, x̂0 = coarse + Δ, turned into ε̂ = (x_t − √ᾱ·x̂0)/√(1 − ᾱ) (the loss is still on ε̂).
    prediction: str = "eps"
    min_snr_gamma: float = 0.0  # > 0: ε-loss weighted by min(SNR, γ)/SNR (Hang et al. 2023); 0: unweighted
    # What a training x_t is noised from. "clean": the true features x (DDPM; the ε-loss). "coarse": the coarse
    # reconstruction (visible tokens: x), as sampling starts at test time, with the loss on x̂0 − x: the refiner
    # learns to turn a noised coarse estimate into x instead of reading x out of an x_t that at test time never
    # contains it (at t = 200, x_t built from x still holds 2/3 of x's signal; see the README's refiner section).
    start: str = "clean"
    # Synthetic anomalies in the refiner's context (see defects.py): each training image is corrupted with
    # probability defect_prob by 1 to defect_max procedural defects, each at an opacity in [defect_strength_min, 1];
    # the refiner is conditioned on the corrupted image's visible features and on the transformer's reconstruction
    # from them, and its target stays the clean features. The transformer's own training input is never corrupted.
    defect_prob: float = 0.0
    defect_strength_min: float = 0.3
    defect_max: int = 1

    def __post_init__(self):
        check_defect_settings(self.defect_prob, self.defect_strength_min, self.defect_max,
                              ("refiner.defect_prob", "refiner.defect_strength_min", "refiner.defect_max"))
        if self.prediction not in ("eps", "coarse_anchored"):
            raise ValueError(f"refiner.prediction: expected 'eps' or 'coarse_anchored', got {self.prediction!r}")
        if self.start not in ("clean", "coarse"):
            raise ValueError(f"refiner.start: expected 'clean' or 'coarse', got {self.start!r}")
        if self.min_snr_gamma < 0:
            raise ValueError(f"refiner.min_snr_gamma: expected >= 0, got {self.min_snr_gamma}")
        if not 1 <= self.train_t_max <= self.num_steps:
            raise ValueError(f"refiner.train_t_max: expected in [1, num_steps={self.num_steps}], "
                             f"got {self.train_t_max}")


@dataclass
class InferenceConfig:
    """``t_start``: the step the coarse reconstruction is noised to; ``steps``: DDIM steps from there; ``eta``:
    DDIM stochasticity; ``samples``: refinements from independent noise draws, averaged (a Monte-Carlo estimate of
    the posterior mean, whose distance to the input is what the map should measure; one draw adds its noise to
    every normal token's score); ``distance``/``fusion``/``sigma``/``levels``: the anomaly map (``levels: concat``
    compares the concatenated features as one scale, as UniAD; ``split`` gives each backbone level its own scale
    of the fused op); ``image_score``/``pool_size``: the image score; ``eager``: reference ops, not the fused ones."""

    t_start: int = 200
    steps: int = 3
    eta: float = 0.0
    samples: int = 1
    distance: str = "l2"
    fusion: str = "sum"
    sigma: float = 4.0
    levels: str = "concat"
    image_score: str = "max"
    pool_size: int = 16
    eager: bool = False

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"inference.steps: expected >= 1, got {self.steps}")
        if not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"inference.samples: expected an integer >= 1, got {self.samples!r}")
        if not 0 <= self.t_start:
            raise ValueError(f"inference.t_start: expected >= 0, got {self.t_start}")
        if self.levels not in ("concat", "split"):
            raise ValueError(f"inference.levels: expected 'concat' or 'split', got {self.levels!r}")
        if self.image_score not in IMAGE_SCORE_RULES:
            raise ValueError(f"inference.image_score: expected one of {IMAGE_SCORE_RULES}, got {self.image_score!r}")
