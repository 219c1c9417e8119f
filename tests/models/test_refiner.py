"""The refiner detector: shapes, the inpainting guarantee (checked with autograd and by perturbation), the
complementary test masks, argument errors, the trainable/frozen split and the trainer integration."""

import pytest
import torch

from oneformore.config import load_config
from oneformore.models.refiner import RefinerDetector, build_refiner
from oneformore.models.defects import add_synthetic_defects
from oneformore.models.refiner.tokens import complementary_masks, training_masks
from oneformore.models.refiner.transformer import MaskedReconstructor
from oneformore.train import Trainer, TrainerConfig

SMALL = [
    "image_size=64",
    "transformer.width=32", "transformer.depth=1", "transformer.heads=2",
    "refiner.width=32", "refiner.blocks=1",
    "inference.t_start=100", "inference.steps=2",
]


def small_config(*overrides):
    return load_config("refiner", [*SMALL, *overrides])


@pytest.fixture(scope="module")
def model() -> RefinerDetector:
    torch.manual_seed(0)
    m = build_refiner(small_config())
    # Make the refiner's zero-initialised output conv non-zero, so the refined output differs from the coarse one.
    torch.nn.init.normal_(m.refiner.conv_out.weight, std=0.05)
    return m.eval()


def test_preset_sections_are_valid():
    cfg = load_config("refiner")
    assert cfg["name"] == "refiner" and cfg["model"] == "refiner" and cfg["image_size"] == 128
    assert set(cfg["backbone"]) == set(load_config("tiny")["backbone"])
    TrainerConfig.from_dict(cfg["train"])
    assert load_config("tiny")["model"] == "continual" and load_config("base")["model"] == "continual"


def test_shapes_and_output_order(model):
    images = torch.randn(3, 3, 64, 64)
    out = model.score(images, torch.Generator().manual_seed(0))
    assert list(out) == ["refined", "coarse"]
    for maps, scores in out.values():
        assert maps.shape == (3, 1, 64, 64) and maps.dtype == torch.float32
        assert scores.shape == (3,) and torch.isfinite(maps).all()
    assert not torch.equal(out["refined"][0], out["coarse"][0])
    loss = model.training_loss({"image": images}, torch.Generator().manual_seed(1))
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_score_is_reproducible_and_eager_matches_fused(model):
    images = torch.randn(2, 3, 64, 64)
    a = model.score(images, torch.Generator().manual_seed(3))
    b = model.score(images, torch.Generator().manual_seed(3))
    model.inference.eager = True
    try:
        c = model.score(images, torch.Generator().manual_seed(3))
    finally:
        model.inference.eager = False
    for name in a:
        assert torch.equal(a[name][0], b[name][0])
        torch.testing.assert_close(c[name][0], a[name][0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("position", ["learned", "sinusoidal"])
def test_masked_outputs_never_depend_on_masked_inputs(position):
    torch.manual_seed(0)
    net = MaskedReconstructor(20, (6, 7), width=32, depth=2, heads=4, position=position)
    feats = torch.randn(2, 20, 6, 7, requires_grad=True)
    mask = training_masks(2, 6, 7, pattern="random", ratio_min=0.4, ratio_max=0.4, block_size=2, partitions=4,
                          generator=torch.Generator().manual_seed(0))
    out = net(feats, mask)
    m = mask.unsqueeze(1)
    # d(any masked output)/d(masked inputs) must be exactly zero ...
    (grad,) = torch.autograd.grad((out * m * torch.randn_like(out)).sum(), feats)
    assert torch.count_nonzero(grad * m) == 0
    # ... while the visible inputs do reach the masked outputs (context is used: the check can fail).
    assert torch.count_nonzero(grad * ~m) > 0


def test_reconstruction_at_a_token_ignores_that_tokens_input(model):
    """The whole test-time path (K transformer passes + refiner DDIM with the visible tokens held): replacing the
    input of one partition's tokens changes nothing at those tokens, in both outputs."""
    x = torch.randn(2, model.transformer.channels, 8, 8)
    part = complementary_masks(8, 8, model.mask_cfg.test_partitions, "grid")[1]
    x2 = torch.where(part, torch.randn_like(x) * 5, x)
    c1, r1 = model.reconstruct_features(x, torch.Generator().manual_seed(0))
    c2, r2 = model.reconstruct_features(x2, torch.Generator().manual_seed(0))
    inside = part.expand_as(c1)
    assert torch.equal(c1[inside], c2[inside]) and torch.equal(r1[inside], r2[inside])
    assert not torch.allclose(c1[~inside], c2[~inside]) and not torch.allclose(r1[~inside], r2[~inside])


def test_samples_average_independent_refinements(model):
    """inference.samples=2 is the mean of the refinements from two successive noise draws (grid masks draw
    nothing), and the coarse output does not change."""
    x = torch.randn(2, model.transformer.channels, 8, 8)
    saved = model.inference.samples
    try:
        model.inference.samples = 1
        g = torch.Generator().manual_seed(5)
        c1, r1 = model.reconstruct_features(x, g)
        _, r2 = model.reconstruct_features(x, g)
        model.inference.samples = 2
        c, r = model.reconstruct_features(x, torch.Generator().manual_seed(5))
    finally:
        model.inference.samples = saved
    assert torch.equal(c, c1) and not torch.equal(r1, r2)
    torch.testing.assert_close(r, (r1 + r2) / 2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("h,w,k,pattern", [(16, 16, 4, "grid"), (7, 5, 9, "grid"), (16, 16, 3, "random"),
                                           (5, 3, 15, "random")])
def test_complementary_masks_cover_every_token_once(h, w, k, pattern):
    masks = complementary_masks(h, w, k, pattern, torch.Generator().manual_seed(0))
    assert masks.shape == (k, h, w) and masks.dtype == torch.bool
    assert torch.equal(masks.sum(0), torch.ones(h, w, dtype=torch.long))
    assert all(bool(mk.any()) for mk in masks)


def test_grid_partitions_keep_every_neighbour_visible():
    masks = complementary_masks(16, 16, 4, "grid")
    for mk in masks:
        padded = torch.nn.functional.pad(mk.float()[None, None], (1, 1, 1, 1))
        neighbours = torch.nn.functional.conv2d(padded, torch.ones(1, 1, 3, 3))[0, 0] - mk.float()
        assert float(neighbours[mk].max()) == 0


@pytest.mark.parametrize("pattern", ["random", "block", "grid"])
def test_training_masks_ratio_and_determinism(pattern):
    kw = dict(pattern=pattern, ratio_min=0.3, ratio_max=0.5, block_size=3, partitions=4)
    a = training_masks(16, 16, 16, generator=torch.Generator().manual_seed(5), **kw)
    b = training_masks(16, 16, 16, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a, b)
    ratio = a.float().mean(dim=(1, 2))
    assert bool((ratio > 0).all()) and bool((ratio < 1).all())
    if pattern == "random":
        assert bool((ratio >= 0.3 - 1e-6).all()) and bool((ratio <= 0.5 + 1e-6).all())
    if pattern == "grid":
        assert torch.allclose(ratio, torch.full_like(ratio, 0.25))


def test_argument_errors_name_the_argument(model):
    g = torch.Generator()
    with pytest.raises(TypeError, match="images: expected a floating dtype"):
        model.score(torch.zeros(1, 3, 64, 64, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"images: expected shape \[B, 3, H, W\]"):
        model.score(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="images: height and width must be multiples of features.grid_stride=8"):
        model.score(torch.zeros(1, 3, 60, 64))
    with pytest.raises(TypeError, match="generator: expected a torch.Generator"):
        model.score(torch.zeros(1, 3, 64, 64), generator=0)
    with pytest.raises(TypeError, match=r"batch\['image'\]: expected a floating dtype"):
        model.training_loss({"image": torch.zeros(1, 3, 64, 64, dtype=torch.uint8)}, g)
    with pytest.raises(TypeError, match="batch: expected a dict with an 'image'"):
        model.training_loss(torch.zeros(1, 3, 64, 64), g)


@pytest.mark.parametrize("override,match", [
    ("mask.test_partitions=3", "mask.test_partitions: the 'grid' pattern needs a perfect square"),
    ("mask.pattern=stripes", "mask.pattern: expected one of"),
    ("mask.ratio_max=1.0", "mask.ratio_min/ratio_max"),
    ("inference.t_start=1000", "inference.t_start: expected < 1000"),
    ("inference.levels=both", "inference.levels"),
    ("inference.samples=0", "inference.samples: expected an integer >= 1"),
    ("features.grid_stride=32", "features.grid_stride: expected one of the backbone strides"),
    ("transformer.heads=3", "transformer.width .* divisible by transformer.heads"),
    ("refiner.train_t_max=0", "refiner.train_t_max"),
    ("refiner.prediction=x0", "refiner.prediction: expected 'eps' or 'coarse_anchored'"),
    ("refiner.min_snr_gamma=-1", "refiner.min_snr_gamma"),
    ("refiner.defect_prob=1.5", r"refiner.defect_prob: expected a probability in \[0, 1\]"),
    ("refiner.defect_strength_min=0", r"refiner.defect_strength_min: expected in \(0, 1\]"),
    ("refiner.defect_max=0", "refiner.defect_max: expected >= 1"),
])
def test_config_errors_name_the_key(override, match):
    with pytest.raises(ValueError, match=match):
        build_refiner(small_config(override))


def test_unknown_section_key_is_rejected():
    cfg = small_config()
    cfg["transformer"]["depht"] = 2
    with pytest.raises(ValueError, match=r"transformer: unknown keys \['depht'\]"):
        build_refiner(cfg)


def test_trainable_holds_every_trained_parameter_and_no_backbone(model):
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    assert trained == {id(p) for p in model.trainable.parameters()}
    assert all(not p.requires_grad for p in model.features.parameters())
    names = {n for n, _ in model.trainable.named_modules()}
    assert "transformer" in names and "refiner" in names


def test_activation_pass_runs_the_networks_without_updating_statistics(model):
    seen = set()
    hooks = [mod.register_forward_hook(lambda mod, inp, out, name=name: seen.add(name))
             for name, mod in model.trainable.named_modules() if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d))]
    before = model.normalizer.batches.clone()
    try:
        model.activation_pass({"image": torch.randn(2, 3, 64, 64)}, torch.Generator().manual_seed(0))
    finally:
        for h in hooks:
            h.remove()
    assert {"transformer.blocks.0.attn.qkv", "refiner.conv_in", "refiner.cond_in", "refiner.conv_out"} <= seen
    assert torch.equal(model.normalizer.batches, before)
    assert all(p.grad is None for p in model.trainable.parameters())


class RandomImages(torch.utils.data.Dataset):
    def __init__(self, n):
        self.images = torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": 0}


def test_trainer_fits_it_and_resumes_exactly(tmp_path, one_thread):
    cfg = TrainerConfig(steps=4, batch_size=2, lr=1e-3, progress=False, ema_decay=0.9)
    torch.manual_seed(0)
    full = Trainer(build_refiner(small_config()), RandomImages(6), cfg, tmp_path / "full", device="cpu").fit()
    torch.manual_seed(0)
    first = Trainer(build_refiner(small_config()), RandomImages(6), cfg, tmp_path / "cut", device="cpu")
    first.fit(stop_after=2)
    torch.manual_seed(1)  # a resumed run must not depend on the fresh model's initialisation
    rest = Trainer(build_refiner(small_config()), RandomImages(6), cfg, tmp_path / "cut", device="cpu").fit()
    assert len(full) == 4 and all(torch.isfinite(torch.tensor(full)))
    assert rest == pytest.approx(full, rel=1e-5)
    # the feature statistics were accumulated during training and saved with the model
    state = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    assert int(state["normalizer.batches"]) == 4


def test_coarse_anchored_refiner_starts_as_the_identity_on_the_coarse_reconstruction():
    """With the zero-initialised output conv, x̂0 = coarse at every step, so deterministic DDIM returns it."""
    torch.manual_seed(0)
    m = build_refiner(small_config("refiner.prediction=coarse_anchored", "refiner.min_snr_gamma=5")).eval()
    coarse, refined = m.reconstruct_features(torch.randn(2, m.transformer.channels, 8, 8),
                                             torch.Generator().manual_seed(0))
    torch.testing.assert_close(refined, coarse, rtol=1e-4, atol=1e-4)
    loss = m.train().training_loss({"image": torch.randn(2, 3, 64, 64)}, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_refiner_trained_from_the_coarse_start_has_an_x0_loss():
    """refiner.start=coarse: x_t is noised from the coarse reconstruction and the loss is on x̂0 − x over the
    masked tokens. With the zero-initialised output conv of the coarse-anchored refiner, x̂0 = coarse, so its
    loss equals the transformer's own masked error; from the clean start (ε-loss) it does not."""
    torch.manual_seed(0)
    # without synthetic defects, so that the refiner's coarse condition is the transformer's output on the clean input
    m = build_refiner(small_config("refiner.prediction=coarse_anchored", "refiner.start=coarse",
                                   "refiner.defect_prob=0")).train()
    batch = {"image": torch.randn(2, 3, 64, 64)}
    transformer_loss, refiner_loss = m._losses(batch, torch.Generator().manual_seed(0), update_stats=False)
    torch.testing.assert_close(refiner_loss, transformer_loss, rtol=1e-4, atol=1e-6)
    m.diffusion_cfg.start = "clean"
    transformer_clean, refiner_clean = m._losses(batch, torch.Generator().manual_seed(0), update_stats=False)
    torch.testing.assert_close(transformer_clean, transformer_loss)
    assert abs(refiner_clean.item() - transformer_loss.item()) > 1e-3
    with pytest.raises(ValueError, match="refiner.start: expected 'clean' or 'coarse'"):
        build_refiner(small_config("refiner.start=noise"))


def test_synthetic_defects_corrupt_the_chosen_samples_only():
    images = torch.randn(6, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    before = images.clone()
    out, chosen = add_synthetic_defects(images, 0.5, 0.3, torch.Generator().manual_seed(2))
    again, chosen_again = add_synthetic_defects(images, 0.5, 0.3, torch.Generator().manual_seed(2))
    assert torch.equal(images, before) and torch.equal(out, again) and torch.equal(chosen, chosen_again)
    assert out.shape == images.shape and out.dtype == images.dtype
    changed = (out != images).flatten(1).any(1)
    assert 0 < len(chosen) < 6 and changed.nonzero().flatten().tolist() == chosen.tolist()
    none, empty = add_synthetic_defects(images, 0.0, 0.3, torch.Generator().manual_seed(2))
    assert torch.equal(none, images) and empty.numel() == 0
    _, every = add_synthetic_defects(images, 1.0, 1.0, torch.Generator().manual_seed(2))
    assert every.tolist() == list(range(6))
    with pytest.raises(ValueError, match=r"prob: expected a probability in \[0, 1\]"):
        add_synthetic_defects(images, -0.1, 0.3, torch.Generator())
    with pytest.raises(ValueError, match=r"strength_min: expected in \(0, 1\]"):
        add_synthetic_defects(images, 0.5, 1.5, torch.Generator())
    with pytest.raises(ValueError, match="max_defects: expected >= 1"):
        add_synthetic_defects(images, 0.5, 0.3, torch.Generator(), max_defects=0)


def test_more_defects_per_image_change_more_pixels():
    images = torch.randn(8, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    one, _ = add_synthetic_defects(images, 1.0, 1.0, torch.Generator().manual_seed(1), max_defects=1)
    many, _ = add_synthetic_defects(images, 1.0, 1.0, torch.Generator().manual_seed(1), max_defects=4)

    def changed(out):
        return int(((out - images).abs().amax(1) > 0.1).sum())

    assert changed(many) > 1.5 * changed(one)


@pytest.mark.parametrize("defect_prob", [0.0, 1.0])
def test_refiner_context_comes_from_the_corrupted_image_and_its_target_stays_clean(defect_prob):
    """With refiner.defect_prob = 1 every sample's refiner sees a corrupted visible context and the transformer's
    reconstruction of exactly that context; the transformer's own loss (clean input) is unchanged."""
    torch.manual_seed(0)
    m = build_refiner(small_config("refiner.start=coarse", "refiner.prediction=coarse_anchored",
                                   "refiner.defect_prob=0")).train()
    batch = {"image": torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))}
    seen = {}
    hook = m.refiner.register_forward_pre_hook(lambda mod, args: seen.update(zip(("x_t", "t", "coarse", "visible",
                                                                                  "mask"), args)))
    try:
        clean = m._losses(batch, torch.Generator().manual_seed(0), update_stats=False)
        clean_visible = seen["visible"]
        m.diffusion_cfg.defect_prob = defect_prob
        corrupted = m._losses(batch, torch.Generator().manual_seed(0), update_stats=False)
    finally:
        hook.remove()
    torch.testing.assert_close(corrupted[0], clean[0])
    mask = seen["mask"][:, 0] > 0
    with torch.no_grad():
        torch.testing.assert_close(seen["coarse"], m.transformer(seen["visible"], mask))
    differs = (seen["visible"] != clean_visible).flatten(1).any(1)
    assert differs.tolist() == [defect_prob == 1.0] * 2
    # the refiner's loss: x̂0 = coarse (zero-initialised correction) against the clean features
    x = m.encode(batch["image"])
    expected = ((seen["coarse"] - x) ** 2 * seen["mask"]).sum() / (seen["mask"].sum() * x.shape[1])
    torch.testing.assert_close(corrupted[1], expected, rtol=1e-4, atol=1e-6)
