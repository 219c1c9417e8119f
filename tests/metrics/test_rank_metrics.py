"""Metrics against scikit-learn and the port of MVTec AD's reference AUPRO, to 1e-6 (in practice ~1e-14)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from oneformore.metrics import AnomalyMetrics, image_scores
from oneformore.metrics.reference import mvtec_aupro, reference_suite, sklearn_f1_max

TOL = 1e-6
KEYS = ["image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"]


def _blobs(n, h, w, gen, n_anomalous=None):
    """Binary masks [n, 1, h, w] with a few random rectangles (several components) on the anomalous images."""
    masks = torch.zeros(n, 1, h, w)
    n_anomalous = n // 2 if n_anomalous is None else n_anomalous
    for i in range(n_anomalous):
        for _ in range(int(torch.randint(1, 4, (1,), generator=gen))):
            y, x = (int(v) for v in torch.randint(0, h - 4, (2,), generator=gen))
            dy, dx = (int(v) for v in torch.randint(1, 6, (2,), generator=gen))
            masks[i, 0, y : y + dy, x : x + dx] = 1
    return masks


def _check(ours: dict, ref: dict):
    for k in ref:
        assert abs(ours[k] - ref[k]) < TOL, (k, ours[k], ref[k])


def _ref(maps, masks, rule="max"):
    labels = masks.flatten(1).amax(1).numpy()
    scores = image_scores(maps, rule).numpy()
    return reference_suite(maps[:, 0].double().numpy(), masks[:, 0].numpy() > 0, scores, labels)


@pytest.mark.parametrize("quantise", [None, 8, 64])  # None: continuous scores; else heavy ties
def test_random_maps_against_references(quantise):
    gen = torch.Generator().manual_seed(3)
    masks = _blobs(10, 24, 20, gen)
    maps = torch.rand(masks.shape, generator=gen) + 0.4 * masks
    if quantise:
        maps = (maps * quantise).round() / quantise
    m = AnomalyMetrics()
    m.update(maps, masks)
    _check(m.compute(), _ref(maps, masks))


def test_not_flipped_below_half():
    gen = torch.Generator().manual_seed(4)
    masks = _blobs(8, 16, 16, gen)
    maps = torch.rand(masks.shape, generator=gen) - 0.5 * masks  # anomalies score LOWER
    m = AnomalyMetrics()
    m.update(maps, masks)
    out, ref = m.compute(), _ref(maps, masks)
    _check(out, ref)
    assert out["pixel_auroc"] < 0.5 and out["image_auroc"] < 0.5


def test_streaming_equals_one_shot_and_compute_is_repeatable():
    gen = torch.Generator().manual_seed(5)
    masks = _blobs(13, 20, 20, gen)
    maps = torch.rand(masks.shape, generator=gen) + 0.3 * masks
    one = AnomalyMetrics()
    one.update(maps, masks)
    streamed = AnomalyMetrics()
    for i in range(0, 13, 4):
        streamed.update(maps[i : i + 4], masks[i : i + 4])
    a = one.compute()
    b = streamed.compute()
    assert a == b  # bit-identical: same sorted arrays
    streamed.update(maps[:1] * 0 + 10, masks[:1])  # update after compute keeps working
    assert streamed.num_images == 14 and streamed.compute() != b


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 40),
    levels=st.sampled_from([2, 3, 10, 1000]),
    seed=st.integers(0, 10_000),
)
def test_flat_scores_against_sklearn(n, levels, seed):
    """Image-level metrics on tiny, tie-heavy score sets (both classes present)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[0], labels[1] = 0, 1
    scores = rng.integers(0, levels, n).astype(np.float32)
    m = AnomalyMetrics(pixel=False)
    m.update(torch.zeros(n, 1, 2, 2), labels=torch.from_numpy(labels), scores=torch.from_numpy(scores))
    out = m.compute()
    assert abs(out["image_auroc"] - roc_auc_score(labels, scores)) < TOL
    assert abs(out["image_ap"] - average_precision_score(labels, scores)) < TOL
    assert abs(out["image_f1_max"] - sklearn_f1_max(labels, scores)) < TOL


@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_limits_against_reference(limit):
    gen = torch.Generator().manual_seed(6)
    masks = _blobs(6, 32, 32, gen, n_anomalous=4)
    maps = torch.rand(masks.shape, generator=gen) + 0.2 * masks
    m = AnomalyMetrics(fpr_limit=limit)
    m.update(maps, masks)
    ref = mvtec_aupro(maps[:, 0].double().numpy(), masks[:, 0].numpy() > 0, limit)
    assert abs(m.compute()["pixel_aupro"] - ref) < TOL


def test_aupro_extremes_and_eight_connectivity():
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, 1, 1] = masks[0, 0, 2, 2] = 1  # diagonal neighbours: ONE region under 8-connectivity
    masks[0, 0, 6, 6] = 1
    perfect = masks.clone()
    m = AnomalyMetrics()
    m.update(perfect, masks)
    assert m.compute()["pixel_aupro"] == pytest.approx(1.0)
    assert m._num_regions == 2
    m = AnomalyMetrics()
    m.update(1 - masks, masks)
    assert m.compute()["pixel_aupro"] == pytest.approx(0.0)


@pytest.mark.data
def test_real_like_maps_on_bottle(shared_data):
    from oneformore.data import AnomalyTransform, MVTecAD

    ds = MVTecAD(shared_data, "bottle", "test", AnomalyTransform(size=64))
    masks = torch.stack([ds[i]["mask"] for i in range(0, len(ds), 2)])
    gen = torch.Generator().manual_seed(7)
    maps = F.avg_pool2d(masks, 5, 1, 2) + 0.5 * torch.rand(masks.shape, generator=gen)
    for rule in ("max", "pooled_max"):
        m = AnomalyMetrics(image_score=rule, pool_size=4)
        for i in range(0, len(masks), 8):
            m.update(maps[i : i + 8], masks[i : i + 8])
        labels = masks.flatten(1).amax(1).numpy()
        scores = image_scores(maps, rule, 4).numpy()
        ref = reference_suite(maps[:, 0].double().numpy(), masks[:, 0].numpy() > 0, scores, labels)
        _check(m.compute(), ref)


def test_image_score_rules():
    maps = torch.zeros(2, 1, 8, 8)
    maps[0, 0, 0, 0] = 9.0  # one hot pixel
    maps[1, 0, 2:6, 2:6] = 2.0  # an area
    assert image_scores(maps).tolist() == [9.0, 2.0]
    pooled = image_scores(maps, "pooled_max", pool_size=4)
    assert pooled.tolist() == pytest.approx([9.0 / 16, 2.0])
    with pytest.raises(ValueError, match="rule: expected one of"):
        image_scores(maps, "mean")


def test_bad_inputs():
    m = AnomalyMetrics()
    maps = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="masks: expected binary"):
        m.update(maps, torch.full_like(maps, 0.5))
    with pytest.raises(ValueError, match="masks: expected the shape of maps"):
        m.update(maps, torch.zeros(2, 1, 4, 5))
    masks = torch.zeros_like(maps)
    masks[0, 0, 0, 0] = 1
    with pytest.raises(ValueError, match="labels: an image labelled normal"):
        m.update(maps, masks, labels=torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="maps: expected finite"):
        m.update(torch.full_like(maps, float("nan")), masks)
    with pytest.raises(ValueError, match=r"maps: expected shape \[B, 1, H, W\]"):
        m.update(torch.rand(4, 4), masks)
    with pytest.raises(RuntimeError, match="no batch"):
        AnomalyMetrics().compute()
    with pytest.raises(ValueError, match="fpr_limit"):
        AnomalyMetrics(fpr_limit=0)
    m.update(maps, torch.zeros_like(maps))  # normal images only: metrics undefined, NaN with a warning
    with pytest.warns(UserWarning) as rec:
        out = m.compute()
    messages = " | ".join(str(w.message) for w in rec)
    assert "need both normal and anomalous images" in messages and "need anomalous pixels" in messages
    assert np.isnan(out["image_auroc"]) and np.isnan(out["pixel_aupro"])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), levels=st.sampled_from([3, 5, 17, 10_000]), limit=st.sampled_from([0.1, 0.3, 0.5]))
def test_pixel_metrics_tie_heavy_against_references(seed, levels, limit):
    gen = torch.Generator().manual_seed(seed)
    masks = _blobs(4, 10, 10, gen, n_anomalous=2)
    maps = torch.randint(0, levels, masks.shape, generator=gen).float() + masks * float(torch.randint(0, 3, (1,), generator=gen))
    m = AnomalyMetrics(fpr_limit=limit)
    m.update(maps, masks)
    out = m.compute()
    _check({k: out[k] for k in KEYS[3:6]}, {k: v for k, v in _ref(maps, masks).items() if k in KEYS[3:6]})
    ref = mvtec_aupro(maps[:, 0].double().numpy(), masks[:, 0].numpy() > 0, limit)
    assert abs(out["pixel_aupro"] - ref) < TOL, (out["pixel_aupro"], ref)


def test_user_scores_with_nan_map_leave_no_partial_state():
    m = AnomalyMetrics()
    maps = torch.rand(2, 1, 4, 4)
    maps[0, 0, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="maps: expected finite"):
        m.update(maps, torch.zeros_like(maps), scores=torch.tensor([0.1, 0.2]))
    assert m.num_images == 0


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), levels=st.sampled_from([4, 50, 10_000]), every=st.sampled_from([1, 37, 500]))
def test_spilled_runs_equal_in_memory(tmp_path_factory, seed, levels, every):
    """Scores spilled to disk in sorted runs (many runs: k-th selection across runs) give identical results."""
    gen = torch.Generator().manual_seed(seed)
    masks = _blobs(6, 12, 12, gen, n_anomalous=3)
    maps = torch.randint(0, levels, masks.shape, generator=gen).float() / levels + 0.3 * masks
    memory = AnomalyMetrics()
    spilled = AnomalyMetrics(spill_dir=tmp_path_factory.mktemp("spill"), spill_every=every)
    for i in range(0, 6, 2):
        memory.update(maps[i : i + 2], masks[i : i + 2])
        spilled.update(maps[i : i + 2], masks[i : i + 2])
    a, b = memory.compute(), spilled.compute()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-12), k
    assert memory.normal_pixel_quantile(0.9) == spilled.normal_pixel_quantile(0.9)
    spill_files = list(spilled._neg._files)
    assert spill_files and all(f.is_file() for f in spill_files)
    spilled.reset()
    assert not any(f.exists() for f in spill_files)  # temporary runs removed


def test_sorted_runs_selection_and_counts():
    from oneformore.metrics import SortedRuns

    rng = np.random.default_rng(0)
    runs = [np.sort(np.round(rng.normal(size=n), 1).astype(np.float32)) for n in (50, 1, 300)]
    runs.append(np.array([-0.0, 0.0], dtype=np.float32))
    together = np.sort(np.concatenate(runs))
    r = SortedRuns(runs)
    desc = together[::-1]
    assert all(r.kth_largest(k) == desc[k] for k in range(0, r.size, 7))
    q = np.linspace(-3, 3, 11).astype(np.float32)
    assert np.array_equal(r.count_below(q, inclusive=False), np.searchsorted(together, q, "left"))
    assert np.array_equal(r.count_below(q, inclusive=True), np.searchsorted(together, q, "right"))


def test_function_api_matches_sklearn():
    from oneformore.metrics import auroc_from_sorted, average_precision_from_sorted, f1_max_from_sorted

    rng = np.random.default_rng(1)
    neg, pos = np.sort(rng.normal(size=300)).astype(np.float32), np.sort(rng.normal(0.5, 1, 40)).astype(np.float32)
    labels = np.r_[np.zeros(300), np.ones(40)]
    scores = np.r_[neg, pos]
    assert auroc_from_sorted(torch.from_numpy(neg), torch.from_numpy(pos[::-1].copy())) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision_from_sorted(neg, pos) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert f1_max_from_sorted(neg, pos)[0] == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-12)


def test_results_are_plain_floats():
    masks = torch.zeros(2, 1, 6, 6)
    masks[0, 0, 1:3, 1:3] = 1
    m = AnomalyMetrics()
    m.update(torch.rand(2, 1, 6, 6) + masks, masks)
    assert all(type(v) is float for v in m.compute().values())


@pytest.mark.filterwarnings("ignore:image metrics need both")
@pytest.mark.parametrize("pattern", ["distinct", "tie_at_limit", "tie_across_limit", "pos_tied_with_neg"])
def test_aupro_limit_exactly_on_a_point(pattern):
    """10 normal pixels and limit 0.3: the curve has a point exactly at FPR 0.3 (the reference's `x_max in x`
    branch) or a tie group straddling it."""
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, :2, :3] = 1  # 6 anomalous pixels, 10 normal
    neg_scores = {
        "distinct": [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
        "tie_at_limit": [9, 8, 7, 7, 5, 4, 3, 2, 1, 0],
        "tie_across_limit": [9, 8, 6, 6, 6, 4, 3, 2, 1, 0],
        "pos_tied_with_neg": [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
    }[pattern]
    pos_scores = [7.0, 7.0, 6.5, 5.0, 1.0, 9.5] if pattern == "pos_tied_with_neg" else [8.5, 7.5, 6.5, 2.5, 1.5, 0.5]
    maps = torch.zeros_like(mask)
    maps[mask.bool()] = torch.tensor(pos_scores)
    maps[~mask.bool()] = torch.tensor(neg_scores, dtype=torch.float32)
    m = AnomalyMetrics()
    m.update(maps, mask)
    ref = mvtec_aupro(maps[:, 0].double().numpy(), mask[:, 0].numpy() > 0, 0.3)
    assert abs(m.compute()["pixel_aupro"] - ref) < 1e-12
