"""The svd ops against float64 references, opcheck, torch.compile, bad arguments; randomized_svd vs linalg.svd."""

import sys
from pathlib import Path

import pytest
import torch

from oneformore.ops import block_residual, gram_update_, isvd_update, isvd_update_, randomized_svd
from oneformore.ops.reference import svd as ref

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bases import orthonormal  # noqa: E402


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def low_rank(n, d, rank, dtype=torch.float32):
    scale = torch.logspace(0, -2, rank, dtype=torch.float64)
    return ((torch.randn(n, rank, dtype=torch.float64) * scale) @ torch.randn(rank, d, dtype=torch.float64)).to(dtype)


def layers():
    return [torch.randn(300, 48), torch.randn(129, 20), torch.randn(5, 33)], [orthonormal(48, 7), orthonormal(20, 0),
                                                                               orthonormal(33, 33)]


def test_block_residual_matches_float64_reference():
    blocks, bases = layers()
    residuals, energies = block_residual(blocks, bases)
    ref_res, ref_en = ref.block_residual([b.double() for b in blocks], [u.double() for u in bases])
    for r, e in zip(residuals, ref_res):
        assert r.dtype == torch.float32
        assert rel(r, e) < 1e-5 or float(e.norm()) < 1e-4  # full basis: the residual is rounding noise
    assert energies.dtype == torch.float64 and energies.shape == (3, 2)
    assert rel(energies[:, 0], ref_en[:, 0]) < 1e-6
    assert rel(energies[:2, 1], ref_en[:2, 1]) < 1e-5


def test_block_residual_float64_and_half_inputs():
    a, u = torch.randn(64, 16, dtype=torch.float64), orthonormal(16, 3, dtype=torch.float64)
    (r,), e = block_residual([a], [u])
    assert r.dtype == torch.float64
    torch.testing.assert_close(r, a - a @ u @ u.T)
    (rh,), _ = block_residual([a.half()], [u.float()])
    assert rh.dtype == torch.float32


def test_gram_update_matches_reference():
    grams = [torch.randn(48, 48), torch.zeros(20, 20)]
    blocks = [torch.randn(300, 48), torch.randn(7, 20)]
    expected = [g.double().clone() for g in grams]
    ref.gram_update_(expected, [b.double() for b in blocks])
    gram_update_(grams, blocks)
    for g, e in zip(grams, expected):
        assert rel(g, e) < 1e-5


def test_isvd_update_matches_exact_svd_of_the_stacked_rows():
    d = 40
    prev = low_rank(50, d, 12)
    U0, S0, _ = torch.linalg.svd(prev.double().T, full_matrices=False)
    U0, S0 = U0[:, :12].float(), S0[:12].float()
    blocks = [low_rank(300, d, 12) @ torch.eye(d), torch.randn(70, 16)]
    U_in = [U0, torch.zeros(16, 0)]
    S_in = [S0, torch.zeros(0)]
    U, S, energies = isvd_update(U_in, S_in, blocks, max_rank=64, chunk_rows=64)
    rU, rS, ren = ref.isvd_update([u.double() for u in U_in], [s.double() for s in S_in],
                                  [b.double() for b in blocks], 64, 64)
    for u, s, ru, rs in zip(U, S, rU, rS):
        assert u.shape == ru.shape and s.shape == rs.shape
        # the Gram each factorisation represents: U·diag(S²)·Uᵀ = U0·S0²·U0ᵀ + AᵀA
        assert rel(u * s**2 @ u.T, ru * rs**2 @ ru.T) < 1e-5
        top = int((rs > rs[0] * 1e-3).sum())
        assert rel(s[:top], rs[:top]) < 1e-5
        live = s > 0
        eye = u[:, live].T @ u[:, live]
        # float32 core: eigenvectors 100x below the top are orthonormal to ~eps·λ_max/λ (IterativeSVD.bases()
        # re-orthonormalises its final basis)
        assert float((eye - torch.eye(eye.shape[0])).abs().max()) < 1e-3
    assert rel(energies[:, 0], ren[:, 0]) < 1e-6


def test_isvd_update_truncation_reports_the_dropped_energy():
    a = torch.randn(200, 30, dtype=torch.float64)
    U, S, energies = isvd_update([torch.zeros(30, 0, dtype=torch.float64)], [torch.zeros(0, dtype=torch.float64)],
                                 [a], max_rank=5, chunk_rows=200)
    s_all = torch.linalg.svdvals(a)
    assert U[0].shape == (30, 5)
    torch.testing.assert_close(S[0], s_all[:5])
    torch.testing.assert_close(energies[0, 1].item(), float((s_all[5:] ** 2).sum()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_isvd_update_in_place_matches_the_functional_op(dtype):
    # Three layers: one that fills its width in the first chunk, one narrower than the rows streamed (truncation
    # from the second call on), one whose width equals d.
    shapes = [(70, 16), (90, 12), (9, 9)]
    U = [torch.zeros(d, w, dtype=dtype) for d, w in shapes]
    S = [torch.zeros(w, dtype=dtype) for _, w in shapes]
    fU = [torch.zeros(d, 0, dtype=dtype) for d, _ in shapes]
    fS = [torch.zeros(0, dtype=dtype) for _ in shapes]
    storage = [u.data_ptr() for u in U]
    for step in range(3):
        blocks = [low_rank(40, d, 10, dtype) + 1e-3 * torch.randn(40, d, dtype=dtype) for d, _ in shapes]
        energies = isvd_update_(U, S, blocks, 16)
        outs = [isvd_update([u], [s], [a], w, 16) for u, s, a, (_, w) in zip(fU, fS, blocks, shapes)]
        fU = [o[0][0] for o in outs]
        fS = [o[1][0] for o in outs]
        expected = torch.cat([o[2] for o in outs])
        assert energies.dtype == torch.float64 and energies.shape == (3, 2)
        torch.testing.assert_close(energies[:, 0], expected[:, 0], rtol=1e-5, atol=0)
        # the dropped energy is a small difference: compared relative to the block's energy
        assert float(((energies[:, 1] - expected[:, 1]).abs() / expected[:, 0]).max()) < 1e-6
        for u, s, fu, fs in zip(U, S, fU, fS):
            k = fu.shape[1]
            assert rel(u[:, :k] * s[:k] ** 2 @ u[:, :k].T, fu * fs**2 @ fu.T) < 1e-5
            assert not u[:, k:].any() and not s[k:].any()
    assert [u.data_ptr() for u in U] == storage  # updated in place


def test_isvd_update_in_place_matches_the_float64_reference():
    # float64 (a float32 core resolves the noise tail only to ~eps·σ_max², see the op's docs); one chunk per call,
    # so each call is exactly the reference's SVD of [U·diag(S), Aᵀ] truncated to the width
    d, w = 50, 20
    U, S = torch.zeros(d, w, dtype=torch.float64), torch.zeros(w, dtype=torch.float64)
    rU, rS = U.clone(), S.clone()
    for _ in range(2):
        a = low_rank(30, d, 8, torch.float64) + 1e-2 * torch.randn(30, d, dtype=torch.float64)
        energies = isvd_update_([U], [S], [a], 64)
        ren = ref.isvd_update_([rU], [rS], [a], 64)
        assert rel(S, rS) < 1e-10
        assert rel(U * S**2 @ U.T, rU * rS**2 @ rU.T) < 1e-10
        assert rel(energies, ren) < 1e-8


def _sample_args():
    blocks, bases = layers()
    return blocks, bases


def test_opcheck():
    blocks, bases = _sample_args()
    torch.library.opcheck(torch.ops.oneformore.block_residual.default, (blocks, bases))
    torch.library.opcheck(torch.ops.oneformore.gram_update_.default,
                          ([torch.zeros(48, 48), torch.zeros(20, 20)], blocks[:2]))
    U = [orthonormal(48, 6), torch.zeros(20, 0)]
    S = [torch.linspace(3, 1, 6), torch.zeros(0)]
    torch.library.opcheck(torch.ops.oneformore.isvd_update.default, (U, S, blocks[:2], 10, 100))
    torch.library.opcheck(torch.ops.oneformore.isvd_update_.default,
                          ([torch.zeros(48, 10), torch.zeros(20, 4)], [torch.zeros(10), torch.zeros(4)], blocks[:2], 64))


def test_torch_compile_fullgraph():
    blocks, bases = _sample_args()

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(blocks, bases, grams):
        residuals, energies = torch.ops.oneformore.block_residual(blocks, bases)
        torch.ops.oneformore.gram_update_(grams, residuals)
        U, S, e2 = torch.ops.oneformore.isvd_update([torch.zeros_like(b) for b in bases], [
            torch.zeros(b.shape[1], dtype=b.dtype) for b in bases], residuals, 8, 64)
        return residuals, energies, U, S, e2

    grams = [torch.zeros(b.shape[1], b.shape[1]) for b in blocks]
    residuals, energies, U, S, e2 = step(blocks, bases, grams)
    ref_res, ref_en = ref.block_residual(blocks, bases)
    assert rel(residuals[0], ref_res[0]) < 1e-5
    assert rel(grams[0], ref_res[0].T @ ref_res[0]) < 1e-5
    assert [u.shape[1] for u in U] == [8, 8, 8]


def test_bad_arguments():
    a, u = torch.randn(10, 8), orthonormal(8, 2)
    with pytest.raises(ValueError, match=r"bases\[0\]: expected 8 rows"):
        block_residual([a], [orthonormal(9, 2)])
    with pytest.raises(ValueError, match=r"blocks\[0\]: expected finite values"):
        block_residual([a.masked_fill(a > 1, float("nan"))], [u])
    with pytest.raises(ValueError, match=r"bases: expected one tensor per layer"):
        block_residual([a, a], [u])
    with pytest.raises(TypeError, match=r"blocks\[0\]: expected dtype"):
        block_residual([a.int()], [u])
    with pytest.raises(ValueError, match=r"blocks\[0\]: expected a 2-D tensor"):
        block_residual([a[None]], [u])
    with pytest.raises(ValueError, match=r"grams\[0\]: expected a square"):
        gram_update_([torch.zeros(8, 7)], [a])
    with pytest.raises(ValueError, match=r"grams\[0\]: expected shape \(8, 8\)"):
        gram_update_([torch.zeros(9, 9)], [a])
    with pytest.raises(ValueError, match=r"S\[0\]: expected 2 values"):
        isvd_update([u], [torch.ones(3)], [a], 4)
    with pytest.raises(ValueError, match=r"max_rank: expected an integer >= 1"):
        isvd_update([u], [torch.ones(2)], [a], 0)
    with pytest.raises(ValueError, match=r"U\[0\]: expected a contiguous \[d, R\] tensor with 1 <= R <= d"):
        isvd_update_([torch.zeros(8, 0)], [torch.zeros(0)], [a])
    with pytest.raises(ValueError, match=r"U\[0\]: .*\(not contiguous\)"):
        isvd_update_([torch.zeros(4, 8).T], [torch.zeros(4)], [a])
    with pytest.raises(ValueError, match=r"S\[0\]: expected non-negative values in descending order"):
        isvd_update_([torch.zeros(8, 3)], [torch.tensor([1.0, 2.0, 0.0])], [a])
    with pytest.raises(ValueError, match=r"chunk_rows: expected an integer >= 1"):
        isvd_update_([torch.zeros(8, 3)], [torch.zeros(3)], [a], 0)
    with pytest.raises(RuntimeError, match=r"argument 'U'.*expected a contiguous \[d, R\] factor"):
        torch.ops.oneformore.isvd_update_([torch.zeros(8, 9)], [torch.zeros(9)], [a], 4)
    with pytest.raises(RuntimeError, match=r"argument 'U'.*expected \[8, k\]"):
        torch.ops.oneformore.isvd_update([orthonormal(9, 2)], [torch.ones(2)], [a], 4, 4)


def decaying(b, m, n, dtype=torch.float64):
    k = min(m, n)
    U = torch.linalg.qr(torch.randn(b, m, k, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(b, n, k, dtype=torch.float64)).Q
    s = 0.8 ** torch.arange(k, dtype=torch.float64)
    return ((U * s) @ V.mT).to(dtype), s


@pytest.mark.parametrize("shape", [(3, 200, 120), (90, 150)])
def test_randomized_svd_matches_linalg_svd_on_a_decaying_spectrum(shape):
    batch = len(shape) == 3
    A, s = decaying(shape[0] if batch else 1, *shape[-2:], dtype=torch.float32)
    A = A if batch else A[0]
    k = 12
    U, S, V = randomized_svd(A, k, oversample=10, n_iter=2)
    Ue, Se, Vhe = torch.linalg.svd(A.double(), full_matrices=False)
    assert U.shape == (*A.shape[:-1][:-1], A.shape[-2], k) and S.shape[-1] == k and V.shape[-2:] == (A.shape[-1], k)
    torch.testing.assert_close(S.double(), Se[..., :k], rtol=1e-4, atol=1e-6)
    # subspace error: the part of the exact top-k singular vectors outside the computed span
    for got, exact in ((U, Ue[..., :k]), (V, Vhe[..., :k, :].mT)):
        miss = exact - got.double() @ (got.double().mT @ exact)
        assert float(torch.linalg.matrix_norm(miss, ord=2).max()) < 1e-3
    best = (Ue[..., :k] * Se[..., None, :k]) @ Vhe[..., :k, :]  # the exact rank-k truncation
    torch.testing.assert_close(((U * S.unsqueeze(-2)) @ V.mT).double(), best, atol=1e-4, rtol=0)


def test_randomized_svd_compiles_and_rejects_bad_arguments():
    A, _ = decaying(2, 40, 30, dtype=torch.float32)
    compiled = torch.compile(lambda x: randomized_svd(x, 5), fullgraph=True, backend="aot_eager")
    U, S, V = compiled(A)
    torch.testing.assert_close(S, torch.linalg.svdvals(A)[..., :5], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"k: expected an integer in \[1, 30\]"):
        randomized_svd(A, 31)
    with pytest.raises(ValueError, match=r"A: expected a 2 or 3-D tensor"):
        randomized_svd(A[0, 0], 1)
    with pytest.raises(ValueError, match=r"n_iter: expected an integer >= 0"):
        randomized_svd(A, 3, n_iter=-1)
    with pytest.raises(ValueError, match=r"A: expected finite values"):
        randomized_svd(A.masked_fill(A > 0.1, float("inf")), 3)
