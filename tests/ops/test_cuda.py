"""Every fused op's CUDA kernel against its CPU kernel on the same random inputs (the CPU kernels are checked against
float64 references in the other files of this folder), plus opcheck on CUDA. Skipped without a GPU; run them on one
with ``python -m pytest tests/ops/test_cuda.py``."""

import sys
from pathlib import Path

import pytest
import torch

from oneformore import ops

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bases import orthonormal  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


def on_cuda(tensors):
    return [t.to(CUDA) for t in tensors]


def assert_close_to_cpu(got_cuda, want_cpu, rtol=1e-5, atol=1e-5):
    torch.testing.assert_close(got_cuda.cpu(), want_cpu, rtol=rtol, atol=atol)


# ----- denoising steps -----
@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_denoise_step_matches_cpu(kind, dtype, channels_last):
    gen = torch.Generator().manual_seed(0)
    x, e, z, k = (torch.randn(3, 4, 9, 7, generator=gen).to(dtype) for _ in range(4))
    if channels_last:
        x, e, z, k = (t.contiguous(memory_format=torch.channels_last) for t in (x, e, z, k))
    mask = torch.rand(3, 1, 9, 7, generator=gen)
    a_t, a_prev = torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.3, 0.7, 1.0])
    step = ops.ddim_step if kind == "ddim" else ops.ddpm_step
    extra = {"eta": 0.5} if kind == "ddim" else {}
    for clip in (None, 1.5):
        want = step(x, e, a_t, a_prev, noise=z, clip_x0=clip, mask=mask, known=k, **extra)
        got = step(*on_cuda([x, e]), a_t.to(CUDA), a_prev.to(CUDA), noise=z.to(CUDA), clip_x0=clip,
                   mask=mask.to(CUDA), known=k.to(CUDA), **extra)
        tol = 1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-5
        assert got.dtype == dtype
        assert_close_to_cpu(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_denoise_opcheck_on_cuda(kind):
    x, e, z, k = (torch.randn(2, 3, 5, 4, device=CUDA) for _ in range(4))
    m = torch.rand(2, 1, 5, 4, device=CUDA)
    a_t = torch.tensor([0.3, 0.5], dtype=torch.float64, device=CUDA)
    a_prev = torch.tensor([0.6, 0.55], dtype=torch.float64, device=CUDA)
    op = getattr(torch.ops.oneformore, f"{kind}_step").default
    args = (x, e, a_t, a_prev, 0.5, z, 1.5, m, k) if kind == "ddim" else (x, e, a_t, a_prev, z, 1.5, m, k)
    torch.library.opcheck(op, args)


# ----- anomaly map -----
@pytest.mark.parametrize("distance", ["l2", "cosine"])
@pytest.mark.parametrize("fusion", ["sum", "mean"])
def test_anomaly_map_matches_cpu(distance, fusion):
    gen = torch.Generator().manual_seed(1)
    shapes = [(2, 8, 16, 16), (2, 19, 8, 7), (2, 5, 3, 4)]
    a = [torch.randn(s, generator=gen) for s in shapes]
    b = [t + 0.5 * torch.randn(t.shape, generator=gen) for t in a]
    want = ops.anomaly_map(a, b, (20, 24), distance=distance, fusion=fusion, sigma=4.0)
    got = ops.anomaly_map(on_cuda(a), on_cuda(b), (20, 24), distance=distance, fusion=fusion, sigma=4.0)
    assert_close_to_cpu(got, want, rtol=1e-4, atol=1e-4)


def test_anomaly_map_opcheck_on_cuda():
    a = [torch.randn(2, 8, 16, 16, device=CUDA), torch.randn(2, 5, 8, 8, device=CUDA)]
    b = [t + 0.5 for t in a]
    torch.library.opcheck(torch.ops.oneformore.anomaly_map.default, (a, b, [20, 24], "l2", "sum", None, 4.0))


# ----- gradient projection -----
def trgp_scale(k: int, gen: torch.Generator) -> torch.Tensor:
    """Q = V diag(λ) Vᵀ with λ in [0, 1): a TRGP-like scale (spectral norm < 1), so float32 rounding stays small."""
    v = orthonormal(k, k, gen)
    return (v * torch.rand(k, generator=gen)) @ v.T


# A linear layer, 1x1 and 3x3 convs, k = d, a layer spanning several 64x64 tiles in every product with a d that
# is not a multiple of the 16-deep K tile, and k = 0 (untouched).
PROJECTION_LAYERS = [((7, 11), 0.5), ((130, 3, 1, 1), 0.9), ((9, 4, 3, 3), 0.25), ((5, 6), 1.0),
                     ((70, 81, 3, 3), 0.4), ((4, 3, 3, 3), 0.0)]


def _projection_case(seed: int, dtypes=(torch.float32,), scaled=False, layers=PROJECTION_LAYERS):
    gen = torch.Generator().manual_seed(seed)
    grads, bases, scales = [], [], []
    for i, (shape, frac) in enumerate(layers):
        g = torch.randn(shape, generator=gen)
        d = g[0].numel()
        k = round(frac * d)
        grads.append(g.to(dtypes[i % len(dtypes)]))
        bases.append(orthonormal(d, k, gen))
        scales.append(trgp_scale(k, gen) if k else torch.zeros(0, 0))
    return grads, bases, (scales if scaled else None)


def _project_both(grads, bases, scales, cuda_bases=None):
    """(CUDA result, CPU result) of the same projection; the CUDA call runs on copies of the inputs."""
    cuda_grads = on_cuda(grads)
    cuda_bases = on_cuda(bases) if cuda_bases is None else cuda_bases
    ops.project_gradients_(cuda_grads, cuda_bases, None if scales is None else on_cuda(scales))
    ops.project_gradients_(grads, bases, scales)
    return cuda_grads, grads


def _assert_projections_match(got, want):
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        tol = 1e-5 if w.dtype == torch.float32 else 1e-2
        assert_close_to_cpu(g, w, rtol=tol, atol=tol)


@pytest.mark.parametrize("schedule", ["auto", "grouped", "library"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("scaled", [False, True])
def test_projection_matches_cpu(schedule, dtype, scaled, monkeypatch):
    monkeypatch.setenv("ONEFORMORE_PROJECTION_CUDA_SCHEDULE", schedule)
    _assert_projections_match(*_project_both(*_projection_case(2, (dtype,), scaled)))


@pytest.mark.parametrize("scaled", [False, True])
def test_projection_mixes_dtypes_and_library_layers_in_one_call(scaled):
    """auto: one layer above the 4 GFLOP threshold goes to cuBLAS, the others to three grouped passes (one per
    gradient dtype) sharing one workspace."""
    big = ((2048, 4096), 128 / 4096)  # 4·2048·4096·128 = 4.3 GFLOP
    layers = [*PROJECTION_LAYERS[:5], big]
    grads, bases, scales = _projection_case(3, (torch.float32, torch.float16, torch.bfloat16), scaled, layers)
    _assert_projections_match(*_project_both(grads, bases, scales))


@pytest.mark.parametrize("schedule", ["grouped", "library"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_projection_non_contiguous_gradients_and_bases(schedule, dtype, monkeypatch):
    monkeypatch.setenv("ONEFORMORE_PROJECTION_CUDA_SCHEDULE", schedule)
    gen = torch.Generator().manual_seed(4)
    conv = torch.randn(66, 20, 3, 3, generator=gen).to(dtype)
    lin = torch.randn(40, 70, generator=gen).to(dtype)
    bases = [orthonormal(180, 90, gen), orthonormal(70, 35, gen)]
    scales = [trgp_scale(90, gen), trgp_scale(35, gen)]
    cuda_conv = conv.to(CUDA).contiguous(memory_format=torch.channels_last)
    cuda_lin = lin.to(CUDA).t().contiguous().t()  # the same [40, 70] values, column-major
    cuda_bases = [bases[0].to(CUDA), bases[1].t().contiguous().to(CUDA).t()]  # a non-contiguous basis too
    assert not cuda_conv.is_contiguous() and not cuda_lin.is_contiguous() and not cuda_bases[1].is_contiguous()
    cuda_scales = on_cuda(scales)
    ops.project_gradients_([cuda_conv, cuda_lin], cuda_bases, cuda_scales)
    ops.project_gradients_([conv, lin], bases, scales)
    _assert_projections_match([cuda_conv, cuda_lin], [conv, lin])


def test_projection_back_to_back_calls_and_a_side_stream(monkeypatch):
    """Several calls queued without synchronisation (each with its own problem list and workspace), on a side
    stream, must each give the CPU result."""
    monkeypatch.setenv("ONEFORMORE_PROJECTION_CUDA_SCHEDULE", "grouped")
    cases = [_projection_case(10 + i, (torch.float32, torch.bfloat16), scaled=bool(i % 2)) for i in range(4)]
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        results = []
        for grads, bases, scales in cases:
            cuda_grads = on_cuda(grads)
            ops.project_gradients_(cuda_grads, on_cuda(bases), None if scales is None else on_cuda(scales))
            results.append(cuda_grads)
    stream.synchronize()
    for (grads, bases, scales), got in zip(cases, results):
        ops.project_gradients_(grads, bases, scales)
        _assert_projections_match(got, grads)


def test_projection_rejects_an_unknown_schedule(monkeypatch):
    monkeypatch.setenv("ONEFORMORE_PROJECTION_CUDA_SCHEDULE", "fastest")
    grads, bases, _ = _projection_case(5)
    with pytest.raises(RuntimeError, match="ONEFORMORE_PROJECTION_CUDA_SCHEDULE: expected auto, grouped or library"):
        ops.project_gradients_(on_cuda(grads), on_cuda(bases))


def test_projection_opcheck_on_cuda():
    grads, bases, scales = _projection_case(6, scaled=True)
    torch.library.opcheck(torch.ops.oneformore.project_gradients_.default, (on_cuda(grads), on_cuda(bases), None))
    torch.library.opcheck(torch.ops.oneformore.project_gradients_.default,
                          (on_cuda(grads), on_cuda(bases), on_cuda(scales)))


# ----- streaming SVD -----
def _svd_layers(gen):
    blocks = [torch.randn(300, 48, generator=gen), torch.randn(129, 20, generator=gen), torch.randn(5, 33, generator=gen)]
    bases = [orthonormal(48, 7, gen), orthonormal(20, 0, gen), orthonormal(33, 33, gen)]
    return blocks, bases


def test_block_residual_and_gram_update_match_cpu():
    gen = torch.Generator().manual_seed(6)
    blocks, bases = _svd_layers(gen)
    want_res, want_energy = ops.block_residual(blocks, bases)
    got_res, got_energy = ops.block_residual(on_cuda(blocks), on_cuda(bases))
    for got, want in zip(got_res, want_res):
        assert_close_to_cpu(got, want, rtol=1e-4, atol=1e-4)
    assert_close_to_cpu(got_energy, want_energy, rtol=1e-4, atol=1e-4)

    grams = [torch.zeros(48, 48), torch.zeros(20, 20)]
    cuda_grams = on_cuda(grams)
    ops.gram_update_(grams, blocks[:2])
    ops.gram_update_(cuda_grams, on_cuda(blocks[:2]))
    for got, want in zip(cuda_grams, grams):
        assert_close_to_cpu(got, want, rtol=1e-4, atol=1e-3)


def _subspace_gap(u_cuda: torch.Tensor, u_cpu: torch.Tensor, rank: int) -> float:
    """‖P_cuda − P_cpu‖ of the leading `rank` columns' projectors: singular vectors are defined up to sign and
    rotation within repeated values, their spans are not."""
    a, b = u_cuda.cpu().double()[:, :rank], u_cpu.double()[:, :rank]
    return float((a @ a.T - b @ b.T).norm())


def test_isvd_updates_match_cpu():
    gen = torch.Generator().manual_seed(7)
    blocks = [torch.randn(200, 48, generator=gen) * torch.logspace(0, -2, 48), torch.randn(90, 20, generator=gen)]
    U, S = [torch.zeros(48, 0), torch.zeros(20, 0)], [torch.zeros(0), torch.zeros(0)]
    want_u, want_s, want_e = ops.isvd_update(U, S, blocks, 10, 64)
    got_u, got_s, got_e = ops.isvd_update(on_cuda(U), on_cuda(S), on_cuda(blocks), 10, 64)
    for gu, gs, wu, ws in zip(got_u, got_s, want_u, want_s):
        assert_close_to_cpu(gs, ws, rtol=1e-4, atol=1e-4)
        assert _subspace_gap(gu, wu, 5) < 1e-3
    assert_close_to_cpu(got_e, want_e, rtol=1e-4, atol=1e-4)

    fixed_u, fixed_s = [torch.zeros(48, 10), torch.zeros(20, 4)], [torch.zeros(10), torch.zeros(4)]
    cuda_u, cuda_s = on_cuda(fixed_u), on_cuda(fixed_s)
    ops.isvd_update_(fixed_u, fixed_s, blocks, 64)
    ops.isvd_update_(cuda_u, cuda_s, on_cuda(blocks), 64)
    for gu, gs, wu, ws in zip(cuda_u, cuda_s, fixed_u, fixed_s):
        assert_close_to_cpu(gs, ws, rtol=1e-4, atol=1e-4)
        assert _subspace_gap(gu, wu, 3) < 1e-3


def test_svd_opcheck_on_cuda():
    gen = torch.Generator().manual_seed(8)
    blocks, bases = _svd_layers(gen)
    blocks, bases = on_cuda(blocks), on_cuda(bases)
    torch.library.opcheck(torch.ops.oneformore.block_residual.default, (blocks, bases))
    torch.library.opcheck(torch.ops.oneformore.gram_update_.default,
                          ([torch.zeros(48, 48, device=CUDA), torch.zeros(20, 20, device=CUDA)], blocks[:2]))
    U = [orthonormal(48, 6, gen).to(CUDA), torch.zeros(20, 0, device=CUDA)]
    S = [torch.linspace(3, 1, 6, device=CUDA), torch.zeros(0, device=CUDA)]
    torch.library.opcheck(torch.ops.oneformore.isvd_update.default, (U, S, blocks[:2], 10, 100))
    torch.library.opcheck(torch.ops.oneformore.isvd_update_.default,
                          ([torch.zeros(48, 10, device=CUDA), torch.zeros(20, 4, device=CUDA)],
                           [torch.zeros(10, device=CUDA), torch.zeros(4, device=CUDA)], blocks[:2], 64))


def test_randomized_svd_on_cuda_matches_linalg_svd():
    gen = torch.Generator(device=CUDA).manual_seed(9)
    scale = torch.logspace(0, -3, 40, device=CUDA)
    A = (torch.randn(500, 40, device=CUDA, generator=gen) * scale) @ torch.randn(40, 120, device=CUDA, generator=gen)
    U, S, V = ops.randomized_svd(A, 10, generator=gen)
    want = torch.linalg.svdvals(A)[:10]
    torch.testing.assert_close(S, want, rtol=1e-3, atol=1e-4)
    assert U.device == A.device and V.shape == (120, 10)
