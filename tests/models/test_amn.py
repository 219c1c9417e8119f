"""AMN condition masking: statistics, grid alignment, determinism, the condition layout."""

import pytest
import torch

from oneformore.models.amn import AMNConfig, condition, masked_condition, sample_masks


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", ["patches", "boxes"])
def test_masked_share_follows_the_ratio(shape):
    cfg = AMNConfig(mask_prob=1.0, ratio_min=0.3, ratio_max=0.3, patch_size=8, shape=shape)
    masks = sample_masks(64, 64, 64, cfg, _gen())
    share = masks.mean(dim=(1, 2, 3))
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    if shape == "patches":  # exactly round(0.3 · 64) cells of the 8x8 grid
        torch.testing.assert_close(share, torch.full((64,), 19 / 64))
    else:  # boxes stop once the share is reached; one box adds at most 16 cells
        assert (share >= 0.3 - 1e-6).all() and (share <= 0.3 + 16 / 64).all()


def test_masks_are_on_the_patch_grid():
    cfg = AMNConfig(mask_prob=1.0, patch_size=8, shape="mixed")
    masks = sample_masks(16, 40, 36, cfg, _gen())  # 36 is not a multiple of 8: last column cropped
    assert masks.shape == (16, 1, 40, 36)
    cells = masks.unfold(2, 8, 8)[..., :32].unfold(3, 8, 8)  # [B, 1, 5, 4, 8, 8]
    assert ((cells.amax((-1, -2)) - cells.amin((-1, -2))) == 0).all()


def test_mask_probability_and_ratio_range():
    cfg = AMNConfig(mask_prob=0.5, ratio_min=0.1, ratio_max=0.5, patch_size=4, shape="patches")
    share = sample_masks(400, 32, 32, cfg, _gen()).mean(dim=(1, 2, 3))
    masked = share > 0
    assert 0.4 < masked.float().mean() < 0.6
    assert share[masked].min() >= 0.1 - 1 / 64 and share[masked].max() <= 0.5 + 1 / 64
    assert 0.25 < share[masked].mean() < 0.35  # uniform on [0.1, 0.5]
    assert sample_masks(8, 32, 32, AMNConfig(mask_prob=0.0), _gen()).sum() == 0


def test_deterministic_given_the_generator():
    cfg = AMNConfig(mask_prob=1.0)
    a = sample_masks(4, 64, 64, cfg, _gen(3))
    b = sample_masks(4, 64, 64, cfg, _gen(3))
    c = sample_masks(4, 64, 64, cfg, _gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_condition_layout():
    image = torch.randn(2, 3, 16, 16)
    whole = condition(image)
    assert whole.shape == (2, 4, 16, 16) and torch.equal(whole[:, :3], image) and whole[:, 3].abs().sum() == 0
    cond, mask = masked_condition(image, AMNConfig(mask_prob=1.0, patch_size=4), _gen())
    hidden = mask.bool().expand(-1, 3, -1, -1)
    assert torch.equal(cond[:, 3:], mask)
    assert (cond[:, :3][hidden] == 0).all() and torch.equal(cond[:, :3][~hidden], image[~hidden])
    noisy, _ = masked_condition(image, AMNConfig(mask_prob=1.0, patch_size=4, fill="noise"), _gen())
    assert noisy[:, :3][hidden].std() > 0.5


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="mask_prob"):
        AMNConfig(mask_prob=1.5)
    with pytest.raises(ValueError, match="ratio"):
        AMNConfig(ratio_min=0.6, ratio_max=0.5)
    with pytest.raises(ValueError, match="amn.shape"):
        AMNConfig(shape="circles")
    with pytest.raises(ValueError, match="mask: expected shape"):
        condition(torch.randn(2, 3, 8, 8), torch.zeros(2, 1, 4, 4))
