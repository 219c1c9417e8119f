"""ddim_step / ddpm_step: the fused kernels against the float64 eager reference, layouts, dtypes, out=,
opcheck, gradcheck, torch.compile and argument errors."""

from __future__ import annotations

import pytest
import torch

import oneformore  # noqa: F401  (registers the ops)
from oneformore import ops
from oneformore.ops import reference

B, C, H, W = 3, 4, 9, 11  # odd sizes: vector bodies and scalar tails both run


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)).item()


def inputs(dtype=torch.float32, shape=(B, C, H, W)):
    x, e, z, k = (torch.randn(shape, dtype=dtype) for _ in range(4))
    m = torch.rand(shape[0], 1, *shape[2:])
    return x, e, z, k, m


def f64(*ts):
    return [None if t is None else t.double() for t in ts]


ALPHA_PAIRS = [
    (0.3, 0.6),                                                   # scalars
    (torch.tensor([0.05, 0.5, 0.9]), torch.tensor([0.2, 0.7, 1.0])),  # per-sample, incl. the final step
    (0.999, 0.9999),                                              # near 1: ill-conditioned 1 - a
]


@pytest.mark.parametrize("alphas", ALPHA_PAIRS)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("clip", [None, 1.5])
@pytest.mark.parametrize("blend", [False, True])
def test_ddim_matches_float64_reference(alphas, eta, clip, blend):
    x, e, z, k, m = inputs()
    kw = dict(eta=eta, noise=z, clip_x0=clip, mask=m if blend else None, known=k if blend else None)
    got = ops.ddim_step(x, e, *alphas, **kw)
    xd, ed, zd, kd, md = f64(x, e, z, k, m)
    want = reference.ddim_step(xd, ed, *alphas, eta=eta, noise=zd, clip_x0=clip,
                               mask=md if blend else None, known=kd if blend else None)
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("alphas", ALPHA_PAIRS)
@pytest.mark.parametrize("clip", [None, 1.5])
@pytest.mark.parametrize("blend", [False, True])
def test_ddpm_matches_float64_reference(alphas, clip, blend):
    x, e, z, k, m = inputs()
    got = ops.ddpm_step(x, e, *alphas, noise=z, clip_x0=clip, mask=m if blend else None, known=k if blend else None)
    xd, ed, zd, kd, md = f64(x, e, z, k, m)
    want = reference.ddpm_step(xd, ed, *alphas, noise=zd, clip_x0=clip, mask=md if blend else None,
                               known=kd if blend else None)
    assert rel_err(got, want) < 1e-5


def test_ddim_eta_one_is_the_ddpm_posterior():
    # With σ² = β̃ the DDIM update equals the DDPM posterior sample (no clamp: eps and x0 are consistent).
    x, e, z, _, _ = inputs()
    a_t, a_prev = torch.tensor([0.2, 0.5, 0.8]), torch.tensor([0.3, 0.9, 0.85])
    ddim = ops.ddim_step(x, e, a_t, a_prev, eta=1.0, noise=z)
    ddpm = ops.ddpm_step(x, e, a_t, a_prev, noise=z)
    assert rel_err(ddim, ddpm) < 1e-5


def test_deterministic_ddim_needs_no_noise_and_inverts():
    x, e, _, _, _ = inputs()
    assert torch.equal(ops.ddim_step(x, e, 0.4, 0.7), ops.ddim_step(x, e, 0.4, 0.7, noise=torch.randn_like(x)))
    # eta = 0 is valid in both directions (DDIM inversion): stepping 0.4 -> 0.7 -> 0.4 returns x.
    back = ops.ddim_step(ops.ddim_step(x, e, 0.4, 0.7), e, 0.7, 0.4)
    assert rel_err(back, x) < 1e-5


def test_mask_extremes_and_shared_mask():
    x, e, z, k, _ = inputs()
    plain = ops.ddim_step(x, e, 0.3, 0.6, eta=0.5, noise=z)
    ones, zeros = torch.ones(B, 1, H, W), torch.zeros(1, 1, H, W)
    assert torch.allclose(ops.ddim_step(x, e, 0.3, 0.6, eta=0.5, noise=z, mask=ones, known=k), k, atol=1e-6)
    assert torch.allclose(ops.ddim_step(x, e, 0.3, 0.6, eta=0.5, noise=z, mask=zeros, known=k), plain, atol=1e-6)
    shared = torch.rand(1, 1, H, W)
    got = ops.ddim_step(x, e, 0.3, 0.6, eta=0.5, noise=z, mask=shared, known=k)
    want = ops.ddim_step(x, e, 0.3, 0.6, eta=0.5, noise=z, mask=shared.expand(B, 1, H, W).contiguous(), known=k)
    assert torch.equal(got, want)


def test_noise_is_drawn_when_not_given():
    x, e, _, _, _ = inputs()
    torch.manual_seed(1)
    a = ops.ddpm_step(x, e, 0.3, 0.6)
    torch.manual_seed(1)
    b = ops.ddpm_step(x, e, 0.3, 0.6, noise=torch.randn_like(x))
    assert torch.equal(a, b)
    assert not torch.equal(a, ops.ddpm_step(x, e, 0.3, 0.6, noise=torch.zeros_like(x)))


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("step", ["ddim", "ddpm"])
def test_half_types_compute_in_float32(dtype, tol, step):
    x, e, z, k, m = inputs(dtype, shape=(2, 3, 17, 13))
    fn, ref = (ops.ddim_step, reference.ddim_step) if step == "ddim" else (ops.ddpm_step, reference.ddpm_step)
    kw = dict(eta=0.7) if step == "ddim" else {}
    got = fn(x, e, torch.tensor([0.3, 0.8]), torch.tensor([0.5, 0.9]), noise=z, mask=m, known=k, **kw)
    xd, ed, zd, kd, md = f64(x, e, z, k, m)
    want = ref(xd, ed, torch.tensor([0.3, 0.8]), torch.tensor([0.5, 0.9]), noise=zd, mask=md, known=kd, **kw)
    assert got.dtype == dtype
    assert rel_err(got, want) < tol  # one rounding of the output


@pytest.mark.parametrize("blend", [False, True])
def test_channels_last_and_mixed_layouts(blend):
    x, e, z, k, m = inputs(shape=(2, 5, 7, 6))
    kw = dict(eta=0.5, noise=z, clip_x0=2.0, mask=m if blend else None, known=k if blend else None)
    want = ops.ddim_step(x, e, 0.3, 0.6, **kw)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (x, e, z, k)]
    kw_cl = dict(kw, noise=cl[2], known=cl[3] if blend else None)
    got = ops.ddim_step(cl[0], cl[1], 0.3, 0.6, **kw_cl)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    assert torch.allclose(got, want, atol=1e-6)
    # x_t channels_last, eps contiguous: converted, still right.
    assert torch.allclose(ops.ddim_step(cl[0], e, 0.3, 0.6, **kw), want, atol=1e-6)
    # a non-contiguous view.
    big = torch.randn(2, 5, 7, 12)
    view = big[..., ::2]
    assert torch.allclose(ops.ddim_step(view, e, 0.3, 0.6, **kw), ops.ddim_step(view.contiguous(), e, 0.3, 0.6, **kw),
                          atol=1e-6)


def test_inference_mode_then_autograd():
    # Cached alpha tensors made under inference_mode must not reach autograd afterwards.
    x, e = torch.randn(2, 3), torch.randn(2, 3)
    with torch.inference_mode():
        ops.ddim_step(x, e, 0.25, 0.75)
    x.requires_grad_()
    ops.ddim_step(x, e, 0.25, 0.75).sum().backward()
    assert x.grad is not None


def test_other_ranks():
    x, e = torch.randn(4, 10, 3), torch.randn(4, 10, 3)
    got = ops.ddim_step(x, e, torch.tensor([0.1, 0.2, 0.3, 0.4]), 0.5)
    want = reference.ddim_step(x.double(), e.double(), torch.tensor([0.1, 0.2, 0.3, 0.4]), 0.5)
    assert rel_err(got, want) < 1e-5


def test_out_and_in_place():
    x, e, z, k, m = inputs()
    want = ops.ddim_step(x, e, 0.3, 0.6, eta=0.2, noise=z, mask=m, known=k)
    out = torch.empty_like(x)
    assert ops.ddim_step(x, e, 0.3, 0.6, eta=0.2, noise=z, mask=m, known=k, out=out) is out
    assert torch.equal(out, want)
    out_cl = torch.empty_like(x, memory_format=torch.channels_last)  # other layout than the inputs
    ops.ddim_step(x, e, 0.3, 0.6, eta=0.2, noise=z, mask=m, known=k, out=out_cl)
    assert torch.equal(out_cl, want) and out_cl.is_contiguous(memory_format=torch.channels_last)
    x2 = x.clone()
    assert ops.ddim_step(x2, e, 0.3, 0.6, eta=0.2, noise=z, mask=m, known=k, out=x2) is x2
    assert torch.equal(x2, want)
    ddpm_want = ops.ddpm_step(x, e, 0.3, 0.6, noise=z)
    x3 = x.clone()
    ops.ddpm_step(x3, e, 0.3, 0.6, noise=z, out=x3)
    assert torch.equal(x3, ddpm_want)


def _raw_args(kind):
    x, e, z, k, m = inputs(shape=(2, 3, 5, 4))
    a_t, a_prev = torch.tensor([0.3, 0.5], dtype=torch.float64), torch.tensor([0.6, 0.55], dtype=torch.float64)
    if kind == "ddim":
        return (x, e, a_t, a_prev, 0.5, z, 1.5, m, k)
    return (x, e, a_t, a_prev, z, 1.5, m, k)


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_opcheck(kind):
    op = getattr(torch.ops.oneformore, f"{kind}_step")
    args = _raw_args(kind)
    torch.library.opcheck(op.default, args)
    no_mask = args[:-2] + (None, None)
    torch.library.opcheck(op.default, no_mask)
    cl = tuple(a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4
               else a for a in args)
    torch.library.opcheck(op.default, cl)
    torch.library.opcheck(op.out, args, {"out": torch.empty_like(args[0])})


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
@pytest.mark.parametrize("clip", [None, 0.8])
def test_gradcheck_float64(kind, clip):
    x, e, z, k, m = (t.double().requires_grad_() for t in inputs(shape=(2, 2, 3, 4)))
    a_t, a_prev = torch.tensor([0.3, 0.5], dtype=torch.float64), torch.tensor([0.6, 0.55], dtype=torch.float64)
    if kind == "ddim":
        def fn(x, e, z, k, m):
            return ops.ddim_step(x, e, a_t, a_prev, eta=0.6, noise=z, clip_x0=clip, mask=m, known=k)
    else:
        def fn(x, e, z, k, m):
            return ops.ddpm_step(x, e, a_t, a_prev, noise=z, clip_x0=clip, mask=m, known=k)
    assert torch.autograd.gradcheck(fn, (x, e, z, k, m))
    # and the gradient equals the reference's
    out = fn(x, e, z, k, m)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, e, z, k, m), g)
    ref = reference.ddim_step if kind == "ddim" else reference.ddpm_step
    kw = dict(eta=0.6) if kind == "ddim" else {}
    want = torch.autograd.grad(ref(x, e, a_t, a_prev, noise=z, clip_x0=clip, mask=m, known=k, **kw), (x, e, z, k, m), g)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-6)


def test_torch_compile_fullgraph():
    x, e, z, k, m = inputs()
    a_t = torch.tensor([0.2, 0.4, 0.6])

    def fn(x, e, z, k, m, a_t):
        y = ops.ddim_step(x, e, a_t, 0.7, eta=0.3, noise=z, mask=m, known=k, clip_x0=3.0)
        return ops.ddpm_step(y * 2, e, 0.5, 0.8, noise=z) + 1

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(x, e, z, k, m, a_t), fn(x, e, z, k, m, a_t), atol=1e-6)

    def in_place(x, e):  # the out= overload (a mutating op) is functionalised
        y = x.clone()
        ops.ddim_step(y, e, 0.3, 0.6, out=y)
        return y

    compiled_in_place = torch.compile(in_place, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled_in_place(x, e), in_place(x, e), atol=1e-6)


def test_alpha_validation_in_the_kernel_too():
    x, e = torch.randn(2, 3), torch.randn(2, 3)
    with pytest.raises(RuntimeError, match="alpha_prev >= alpha_t"):
        torch.ops.oneformore.ddpm_step(x, e, torch.tensor([0.5, 0.5]), torch.tensor([0.6, 0.4]), None, None, None,
                                       None)
    with pytest.raises(RuntimeError, match=r"alpha_t must lie in \(0, 1\]"):
        torch.ops.oneformore.ddim_step(x, e, torch.tensor([0.0, 0.5]), torch.tensor([0.6, 0.6]), 0.0, None, None,
                                       None, None)


BAD = [
    (dict(alpha_t=float("nan")), ValueError, "alpha_t: expected a cumulative alpha in"),
    (dict(alpha_t=torch.tensor([0.3, float("nan")])), ValueError, "alpha_t: expected finite values, found nan at sample 1"),
    (dict(alpha_t=0.0), ValueError, r"alpha_t: expected a cumulative alpha in \(0, 1\]"),
    (dict(alpha_prev=1.5), ValueError, "alpha_prev: expected a cumulative alpha"),
    (dict(alpha_t=torch.tensor([0.3, 1.2])), ValueError, r"alpha_t: expected cumulative alphas in \(0, 1\]"),
    (dict(alpha_t=torch.tensor([0.3, 0.4, 0.5])), ValueError, r"alpha_t: expected a float or a tensor of shape \(2,\)"),
    (dict(alpha_t=torch.tensor([1, 1])), TypeError, "alpha_t: expected a floating tensor"),
    (dict(alpha_t="0.5"), TypeError, "alpha_t: expected a float or a"),
    (dict(eta=-0.1), ValueError, "eta: expected a finite float >= 0"),
    (dict(alpha_t=0.7, alpha_prev=0.6, eta=0.5), ValueError, "alpha_prev: ddim_step with eta > 0 needs"),
    (dict(eta=5.0), ValueError, "eta: ddim_step needs 1 - alpha_prev - sigma"),
    (dict(eps=torch.randn(2, 3, 4, 4)), ValueError, r"eps: expected shape \(2, 3, 4, 5\)"),
    (dict(eps=torch.randn(2, 3, 4, 5, dtype=torch.float16)), TypeError, "eps: expected dtype in"),
    (dict(eps=torch.randn(2, 3, 4, 5, device="meta")), ValueError, "eps: expected a tensor on cpu"),
    (dict(x_t=torch.ones(2, 3, 4, 5, dtype=torch.int32)), TypeError, "x_t: expected dtype in"),
    (dict(x_t=[1.0]), TypeError, "x_t: expected a torch.Tensor"),
    (dict(noise=torch.randn(2, 3)), ValueError, "noise: expected shape"),
    (dict(clip_x0=-1.0), ValueError, "clip_x0: expected None or a positive float"),
    (dict(mask=torch.rand(2, 1, 4, 5)), ValueError, "known: mask was given without known"),
    (dict(known=torch.rand(2, 3, 4, 5)), ValueError, "mask: known was given without mask"),
    (dict(mask=torch.rand(2, 3, 4, 5), known=torch.rand(2, 3, 4, 5)), ValueError, r"mask: expected shape \(2 or 1, 1"),
    (dict(out=torch.empty(2, 3, 4, 4)), ValueError, "out: expected shape"),
]


@pytest.mark.parametrize("bad,exc,msg", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_arguments(bad, exc, msg):
    args = dict(x_t=torch.randn(2, 3, 4, 5), eps=torch.randn(2, 3, 4, 5), alpha_t=0.3, alpha_prev=0.6)
    args.update(bad)
    x_t, eps, a_t, a_prev = (args.pop(k) for k in ("x_t", "eps", "alpha_t", "alpha_prev"))
    with pytest.raises(exc, match=msg):
        ops.ddim_step(x_t, eps, a_t, a_prev, **args)


def test_bad_ddpm_arguments():
    x, e = torch.randn(2, 3), torch.randn(2, 3)
    with pytest.raises(ValueError, match="alpha_t: ddpm_step needs alpha_t < 1"):
        ops.ddpm_step(x, e, 1.0, 1.0)
    with pytest.raises(ValueError, match="alpha_prev: ddpm_step needs alpha_prev >= alpha_t"):
        ops.ddpm_step(x, e, 0.5, 0.4)
    with pytest.raises(ValueError, match="gradients with respect to the alphas"):
        ops.ddpm_step(x, e, torch.tensor([0.3, 0.3], requires_grad=True), 0.4)
    with pytest.raises(ValueError, match="mask: blending needs 4-D x_t"):
        ops.ddpm_step(x, e, 0.3, 0.4, mask=torch.rand(2, 1, 1, 3), known=x)


hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 9), st.integers(1, 9)),
    channels_last=st.booleans(),
    eta=st.sampled_from([0.0, 0.3, 1.0]),
    clip=st.sampled_from([None, 0.5]),
    blend=st.booleans(),
    shared_mask=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_and_layouts(shape, channels_last, eta, clip, blend, shared_mask, seed):
    g = torch.Generator().manual_seed(seed)
    x, e, z, k = (torch.randn(shape, generator=g) for _ in range(4))
    m = torch.rand((1 if shared_mask else shape[0], 1, *shape[2:]), generator=g)
    a_t = torch.rand(shape[0], generator=g, dtype=torch.float64) * 0.9 + 0.05
    a_prev = a_t + (1 - a_t) * torch.rand(shape[0], generator=g, dtype=torch.float64)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xs, es, zs, ks = (t.contiguous(memory_format=fmt) for t in (x, e, z, k))
    kw = dict(eta=eta, clip_x0=clip, mask=m if blend else None)
    got = ops.ddim_step(xs, es, a_t, a_prev, noise=zs, known=ks if blend else None, **kw)
    want = reference.ddim_step(x.double(), e.double(), a_t, a_prev, noise=z.double(),
                               known=k.double() if blend else None, **kw)
    assert (got.double() - want).abs().max() <= 1e-5 * want.abs().max() + 1e-6
