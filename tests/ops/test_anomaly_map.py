"""anomaly_map: the fused kernel against the float64 eager reference and scipy's gaussian_filter, layouts,
dtypes, opcheck, torch.compile, no-gradient contract and argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import oneformore  # noqa: F401
from oneformore import ops
from oneformore.ops import reference

SHAPES = [(2, 8, 16, 16), (2, 19, 8, 7), (2, 5, 3, 4)]  # odd channel counts and sizes: vector tails run


def rel_err(got, want):
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def feats(dtype=torch.float32, shapes=SHAPES):
    a = [torch.randn(s, dtype=dtype) for s in shapes]
    b = [x + 0.5 * torch.randn(x.shape, dtype=dtype) for x in a]
    return a, b


def f64(ts):
    return [t.double() for t in ts]


@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("fusion,weights", [("sum", None), ("mean", None), ("sum", [0.5, 2.0, 1.0]),
                                            ("mean", [1.0, 3.0, 0.5])])
@pytest.mark.parametrize("sigma", [0.0, 4.0, 1.3])
def test_matches_float64_reference(distance, fusion, weights, sigma):
    a, b = feats()
    kw = dict(distance=distance, fusion=fusion, weights=weights, sigma=sigma)
    got = ops.anomaly_map(a, b, (33, 29), **kw)
    want = reference.anomaly_map(f64(a), f64(b), (33, 29), **kw)
    assert got.shape == (2, 1, 33, 29) and got.dtype == torch.float32
    assert rel_err(got, want) < 1e-5


def test_blur_is_scipy_gaussian_filter():
    ndimage = pytest.importorskip("scipy.ndimage")
    a, b = feats()
    raw = reference.anomaly_map(f64(a), f64(b), (40, 24), sigma=0.0)
    for sigma in (1.0, 2.5, 4.0, 8.0):  # 8: the kernel (radius 32) is wider than the 24-px image
        want = ndimage.gaussian_filter(raw[:, 0].numpy(), sigma=(0, sigma, sigma), mode="reflect", truncate=4.0)
        got = ops.anomaly_map(a, b, (40, 24), sigma=sigma)[:, 0].double().numpy()
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-5
        np.testing.assert_allclose(reference.anomaly_map(f64(a), f64(b), (40, 24), sigma=sigma)[:, 0].numpy(), want,
                                   rtol=1e-10, atol=1e-12)


def test_resize_is_bilinear_align_corners():
    a, b = feats(shapes=[(1, 3, 5, 6)])
    d = torch.sqrt(((a[0].double() - b[0].double()) ** 2).sum(1, keepdim=True))
    want = torch.nn.functional.interpolate(d, size=(17, 23), mode="bilinear", align_corners=True)
    assert rel_err(ops.anomaly_map(a, b, (17, 23), sigma=0.0), want) < 1e-5


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 1e-5), (torch.bfloat16, 1e-5)])
def test_half_features_computed_in_float32(dtype, tol):
    a, b = feats(dtype)
    got = ops.anomaly_map(a, b, (32, 32), distance="cosine")
    want = reference.anomaly_map(f64(a), f64(b), (32, 32), distance="cosine")  # same rounded inputs
    assert got.dtype == torch.float32 and rel_err(got, want) < tol


def test_channels_last_and_mixed_scales():
    a, b = feats()
    want = ops.anomaly_map(a, b, (32, 30))
    cl = [t.contiguous(memory_format=torch.channels_last) for t in a]
    clb = [t.contiguous(memory_format=torch.channels_last) for t in b]
    assert rel_err(ops.anomaly_map(cl, clb, (32, 30)), want) < 1e-6
    mixed_a = [cl[0], a[1], a[2].to(torch.bfloat16)]
    mixed_b = [b[0], clb[1], b[2].to(torch.bfloat16)]
    ref = reference.anomaly_map(f64([a[0], a[1], mixed_a[2]]), f64([b[0], b[1], mixed_b[2]]), (32, 30))
    assert rel_err(ops.anomaly_map(mixed_a, mixed_b, (32, 30)), ref) < 1e-5


def test_identical_features_give_zero_map():
    a, _ = feats()
    assert torch.count_nonzero(ops.anomaly_map(a, a, (16, 16))) == 0
    assert ops.anomaly_map(a, a, (16, 16), distance="cosine").abs().max() < 1e-5


def test_opcheck():
    a, b = feats()
    op = torch.ops.oneformore.anomaly_map.default
    torch.library.opcheck(op, (a, b, [20, 24], "l2", "sum", None, 4.0))
    torch.library.opcheck(op, (a, b, [20, 24], "cosine", "mean", [1.0, 2.0, 3.0], 0.0))


def test_torch_compile_fullgraph():
    a, b = feats()

    def fn(a0, a1, a2, b0, b1, b2):
        return ops.anomaly_map([a0, a1, a2], [b0, b1, b2], (24, 24), weights=[1.0, 0.5, 0.25]) * 2

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(*a, *b), fn(*a, *b))


def test_no_gradient():
    a, b = feats()
    a = [t.requires_grad_() for t in a]
    out = ops.anomaly_map(a, b, (8, 8))
    with pytest.raises(RuntimeError, match="inference op and has no gradient"):
        out.sum().backward()


def _args():
    a, b = feats()
    return dict(feats_in=a, feats_rec=b, out_size=(16, 16))


BAD = [
    (lambda k: k.update(feats_in=[]), ValueError, "feats_in: expected at least 1"),
    (lambda k: k.update(feats_in=torch.randn(2, 3, 4, 4)), TypeError, "feats_in: expected a list of tensors"),
    (lambda k: k["feats_rec"].pop(), ValueError, "feats_rec: expected 3 feature maps"),
    (lambda k: k["feats_rec"].__setitem__(1, torch.randn(2, 19, 8, 8)), ValueError,
     r"feats_rec\[1\]: expected shape \(2, 19, 8, 7\)"),
    (lambda k: k["feats_rec"].__setitem__(0, k["feats_rec"][0].half()), TypeError, r"feats_rec\[0\]: expected dtype"),
    (lambda k: k["feats_in"].__setitem__(2, torch.randn(5, 3, 4)), ValueError, r"feats_in\[2\]: expected a 4-D"),
    (lambda k: k["feats_in"].__setitem__(2, torch.randn(3, 5, 3, 4)), ValueError, r"feats_in\[2\]: expected batch"),
    (lambda k: k["feats_in"].__setitem__(0, torch.randn(2, 8, 16, 16, dtype=torch.float64)), TypeError,
     r"feats_in\[0\]: expected dtype float32"),
    (lambda k: k["feats_rec"].__setitem__(1, torch.randn(2, 19, 8, 7, device="meta")), ValueError,
     r"feats_rec\[1\]: expected a tensor on cpu"),
    (lambda k: k.update(out_size=(16,)), ValueError, "out_size: expected two positive ints"),
    (lambda k: k.update(out_size=(0, 4)), ValueError, "out_size: expected two positive ints"),
    (lambda k: k.update(distance="l1"), ValueError, "distance: expected 'l2' or 'cosine'"),
    (lambda k: k.update(fusion="max"), ValueError, "fusion: expected 'sum' or 'mean'"),
    (lambda k: k.update(weights=[1.0, 2.0]), ValueError, "weights: expected 3 floats"),
    (lambda k: k.update(weights=[1.0, float("nan"), 1.0]), ValueError, "weights: expected finite"),
    (lambda k: k.update(weights=[1.0, -1.0, 0.0], fusion="mean"), ValueError, "weight sum, which must be > 0"),
    (lambda k: k.update(sigma=-1.0), ValueError, "sigma: expected a finite float >= 0"),
    (lambda k: k.update(sigma=float("inf")), ValueError, "sigma: expected a finite float >= 0"),
]


@pytest.mark.parametrize("mutate,exc,msg", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_arguments(mutate, exc, msg):
    kw = _args()
    mutate(kw)
    with pytest.raises(exc, match=msg):
        ops.anomaly_map(kw.pop("feats_in"), kw.pop("feats_rec"), kw.pop("out_size"), **kw)


def test_kernel_checks_direct_calls():
    a, b = feats()
    with pytest.raises(RuntimeError, match="argument 'distance'"):
        torch.ops.oneformore.anomaly_map(a, b, [8, 8], "l1", "sum", None, 1.0)
    with pytest.raises(RuntimeError, match="argument 'feats_rec'"):
        torch.ops.oneformore.anomaly_map(a, b[:2], [8, 8], "l2", "sum", None, 1.0)
