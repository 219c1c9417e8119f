"""oneformore.diffusion: schedules against the papers' formulas, samplers with an oracle noise model."""

from __future__ import annotations

import math

import pytest
import torch

from oneformore.diffusion import DDIMSampler, DDPMSampler, NoiseSchedule, Sampler


def test_linear_schedule_is_ddpm():
    s = NoiseSchedule("linear")
    assert len(s) == 1000
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(s.betas[1:] - s.betas[:-1], torch.full((999,), (0.02 - 1e-4) / 999, dtype=torch.float64))
    t = 436
    assert s.alphas_cumprod[t].item() == pytest.approx(math.prod(1 - float(b) for b in s.betas[: t + 1]), rel=1e-12)
    assert s.alphas_cumprod_prev[0].item() == 1.0
    assert torch.equal(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    # DDPM's T=1000 linear schedule leaves almost no signal at the end (Ho et al. 2020: L_T ≈ 1e-5 bits).
    assert s.alphas_cumprod[-1].item() < 1e-4


def test_scaled_linear_schedule_is_stable_diffusion():
    s = NoiseSchedule("scaled_linear")
    assert s.betas[0].item() == pytest.approx(0.00085) and s.betas[-1].item() == pytest.approx(0.012)
    root = torch.sqrt(s.betas)
    assert torch.allclose(root[1:] - root[:-1], (root[1] - root[0]).expand(999))


def test_cosine_schedule_is_improved_ddpm():
    T, s_ = 1000, 0.008
    s = NoiseSchedule("cosine", T)

    def f(t):
        return math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2

    for t in (0, 1, 250, 500, 900):  # index t is the paper's t + 1: ᾱ = f(t + 1) / f(0) while β is unclipped
        assert s.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert s.betas.max().item() == pytest.approx(0.999)  # clipped at the end
    assert torch.all(s.betas[:-1] <= 0.999)


def test_schedule_arguments():
    with pytest.raises(ValueError, match="kind: expected"):
        NoiseSchedule("quadratic")
    with pytest.raises(ValueError, match="num_steps"):
        NoiseSchedule("linear", 0)
    s = NoiseSchedule("linear", 100)
    assert s.timesteps(99, 10) == [99, 88, 77, 66, 55, 44, 33, 22, 11, 0]
    assert s.timesteps(50, 1) == [50]
    assert s.timesteps(3, 4) == [3, 2, 1, 0]
    with pytest.raises(ValueError, match="t_start"):
        s.timesteps(100, 10)
    with pytest.raises(ValueError, match="steps"):
        s.timesteps(5, 7)
    assert s.alpha_bar(-1) == 1.0


def test_noise_to_is_q_xt_given_x0():
    s = NoiseSchedule("cosine", 200)
    sampler = Sampler(s)
    x0, n = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    a = s.alphas_cumprod[120].item()
    assert torch.allclose(sampler.noise_to(x0, 120, n), math.sqrt(a) * x0 + math.sqrt(1 - a) * n)


def _oracle(schedule, x0):
    """The ideal noise model: knows x0, returns the ε with x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε."""
    def model(x, t):
        a = schedule.alphas_cumprod[t].to(x.dtype).view(-1, 1, 1, 1)
        return (x - torch.sqrt(a) * x0) / torch.sqrt(1 - a)
    return model


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("eager", [False, True])
def test_ddim_with_oracle_recovers_x0(kind, eager):
    s = NoiseSchedule(kind, 1000)
    x0 = torch.randn(2, 4, 8, 8, dtype=torch.float32)
    sampler = DDIMSampler(s, eager=eager)
    x = sampler.reconstruct(_oracle(s, x0), x0, 600, 10, generator=torch.Generator().manual_seed(0))
    assert (x - x0).abs().max() < 1e-4


@pytest.mark.parametrize("method", ["ddpm", "ddim"])
def test_stochastic_samplers_with_oracle_recover_x0(method):
    # DDPM (and DDIM with eta = 1): the last step to ᾱ_prev = 1 has no variance and returns the oracle's x0.
    s = NoiseSchedule("linear", 1000)
    x0 = torch.randn(2, 3, 8, 8)
    sampler = Sampler(s, method, eta=1.0)
    x = sampler.reconstruct(_oracle(s, x0), x0, 400, 8, generator=torch.Generator().manual_seed(1))
    assert (x - x0).abs().max() < 1e-4


def test_fused_and_eager_samplers_agree():
    s = NoiseSchedule("scaled_linear")
    x0 = torch.randn(2, 4, 8, 8)
    net = torch.nn.Conv2d(4, 4, 3, padding=1)

    def model(x, t):
        return net(x) * 0.1 + t.view(-1, 1, 1, 1) / 1000

    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    results = []
    for eager in (False, True):
        sampler = Sampler(s, "ddpm", clip_x0=3.0, eager=eager)
        results.append(sampler.reconstruct(model, x0, 500, 5, mask=mask, known=x0,
                                           generator=torch.Generator().manual_seed(3)))
    assert torch.allclose(results[0], results[1], atol=1e-5)
    assert torch.equal(results[0] * mask, x0 * mask)  # the kept region is the known content at the end


def test_sampler_arguments():
    s = NoiseSchedule("linear", 100)
    with pytest.raises(ValueError, match="method"):
        Sampler(s, "euler")
    with pytest.raises(ValueError, match="mask and known"):
        DDPMSampler(s).sample(lambda x, t: x, torch.randn(1, 1, 2, 2), 10, 2, mask=torch.ones(1, 1, 2, 2))
