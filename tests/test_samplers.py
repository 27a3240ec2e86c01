"""Samplers against closed-form Gaussian cases, hand-computed steps, seeding, the configs and the toy models.

The closed-form model: data x0 ~ N(mu, s^2 I) diffused by the SD schedule has x_t ~ N(sqrt(a_t) mu, v_t I) with
v_t = a_t s^2 + 1 - a_t, and the exact (MMSE) eps model is eps(x_t, t) = sqrt(1 - a_t) (x_t - sqrt(a_t) mu) / v_t.
With it every sampler step is affine in x plus independent Gaussian noise, so end points are known exactly. In the
sigma parametrisation of the sgm samplers (x = x_VP / sqrt(a_t) = x0 + sigma eps) the denoiser is
D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu), and the probability-flow ODE dx/dsigma = (x - D) / sigma keeps
(x - mu) / sqrt(s^2 + sigma^2) constant.
"""

import itertools
import logging
import math
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor

from modules.diffusion.noise_schedule import NoiseSchedule
from modules.diffusion.samplers import (
    DDIMSampler,
    DPMPP2MSampler,
    DPMPP2SAncestralSampler,
    EulerAncestralSampler,
)
from modules.generation import GenerationRequest
from tests.conftest import compose_config

CONF = Path(__file__).resolve().parents[1] / "conf"
VIDEO_SHAPE = (4, 2, 5, 50, 100)  # [B, C, T, H, W]: 200 000 scalar samples


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule()


def gaussian_eps_model(schedule: NoiseSchedule, scale: float, mean: float = 0.0):
    """Exact eps model for data N(mean, scale^2): eps = sqrt(1 - a_t) (x_t - sqrt(a_t) mean) / (a_t scale^2 + 1 - a_t)."""

    def eps_model(x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        a_t = schedule.alphas_cumprod_f64[t].to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
        return (1 - a_t).sqrt() * (x_t - a_t.sqrt() * mean) / (a_t * scale**2 + 1 - a_t)

    return eps_model


def linear_eps_model(x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
    """An arbitrary affine eps model for hand-computed steps."""
    return 0.3 * x_t + 0.1


def ddim_levels(schedule: NoiseSchedule, num_steps: int) -> list[tuple[float, float]]:
    """(a_t, a_prev) per DDIM step in run order, written out from ldm's definition."""
    ascending = list(range(1, 1000, 1000 // num_steps))
    alphas = schedule.alphas_cumprod_f64
    previous = [0, *ascending[:-1]]
    return [(alphas[t].item(), alphas[p].item()) for t, p in zip(ascending, previous, strict=True)][::-1]


def marginal_variance(a: float, scale: float) -> float:
    return a * scale**2 + 1 - a


def angle(a: float, scale: float) -> float:
    """theta_t = atan2(sqrt(1 - a_t), sqrt(a_t) s): the direction of u_t = (sqrt(a_t) s, sqrt(1 - a_t))."""
    return math.atan2(math.sqrt(1 - a), math.sqrt(a) * scale)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_ddim_eta0_matches_the_exact_linear_map(schedule: NoiseSchedule, scale: float):
    """Deterministic DDIM on N(0, s^2) data maps x_T to G x_T with G known in closed form.

    Write x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps as the vector u_t = (sqrt(a_t) s, sqrt(1 - a_t)), |u_t|^2 = v_t,
    at angle theta_t = atan2(sqrt(1 - a_t), sqrt(a_t) s). With the exact eps one eta = 0 step is
    x_prev = g x_t, g = (u_prev . u_t) / |u_t|^2, so g^2 v_t = v_prev cos^2(theta_t - theta_prev): DDIM keeps
    the marginal only up to a cos^2 factor per step. From x_T ~ N(0, 1) the end point (ldm's last step goes to
    a_0 = 0.99915, not 1) has variance G^2 = (v_{a_0} / v_T) * prod_i cos^2(theta_{t_i} - theta_{prev_i}),
    where v_{a_0} = a_0 s^2 + 1 - a_0 is the exact probability-flow answer (0.25064 for s = 0.5, 3.99745 for
    s = 2). G^2 / v_{a_0} is 0.914 (s = 0.5) and 0.943 (s = 2): 50 steps lose that much variance.
    """
    levels = ddim_levels(schedule, 50)
    a_0, a_T = schedule.alphas_cumprod_f64[0].item(), levels[0][0]
    cos2 = math.prod(math.cos(angle(a_t, scale) - angle(a_prev, scale)) ** 2 for a_t, a_prev in levels)
    gain_squared = marginal_variance(a_0, scale) / marginal_variance(a_T, scale) * cos2

    noise = torch.randn(VIDEO_SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sampler = DDIMSampler(schedule, num_steps=50, eta=0.0, progress=False)
    x0 = sampler.sample(gaussian_eps_model(schedule, scale), noise, cond={})

    assert torch.allclose(x0, math.sqrt(gain_squared) * noise, rtol=1e-9, atol=1e-12)
    assert x0.var().item() == pytest.approx(gain_squared, rel=0.02)  # 200k samples: 0.3% standard error
    assert 0.9 * marginal_variance(a_0, scale) < gain_squared < marginal_variance(a_0, scale)


def replay_noise(seed: int, count: int) -> list[Tensor]:
    """The initial noise and the sampler's `count` draws, in the order a seeded sampler makes them."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(VIDEO_SHAPE, generator=generator, dtype=torch.float64) for _ in range(count + 1)]


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_ddim_eta1_matches_variance_propagation(schedule: NoiseSchedule, scale: float):
    """DDIM eta = 1: x_prev = g x_t + sigma_t z with g = sqrt(a_prev / a_t) a_t s^2 / v_t +
    sqrt(1 - a_prev - sigma_t^2) sqrt(1 - a_t) / v_t, so the end variance follows V <- g^2 V + sigma_t^2.

    With plug-in x0 estimates and 50 big steps the result lies below the exact v_{a_0} (0.82 v_{a_0} for
    s = 0.5, 0.92 for s = 2); the check is against the propagated value, per sample and in variance.
    """
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn(VIDEO_SHAPE, generator=generator, dtype=torch.float64)
    sampler = DDIMSampler(schedule, num_steps=50, eta=1.0, progress=False)
    x0 = sampler.sample(gaussian_eps_model(schedule, scale), noise, cond={}, generator=generator)

    draws = replay_noise(3, 50)
    expected, variance = draws[0], 1.0
    for (a_t, a_prev), z in zip(ddim_levels(schedule, 50), draws[1:], strict=True):
        sigma = math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        v_t = marginal_variance(a_t, scale)
        gain = (
            math.sqrt(a_prev / a_t) * a_t * scale**2 / v_t
            + math.sqrt(1 - a_prev - sigma**2) * math.sqrt(1 - a_t) / v_t
        )
        expected = gain * expected + sigma * z
        variance = gain**2 * variance + sigma**2
    assert torch.allclose(x0, expected, rtol=1e-9, atol=1e-12)
    assert x0.var().item() == pytest.approx(variance, rel=0.02)
    assert 0.75 * marginal_variance(schedule.alphas_cumprod_f64[0].item(), scale) < variance < scale**2 + 0.01


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_dpmpp_2s_ancestral_ends_at_the_data_variance(schedule: NoiseSchedule, scale: float):
    """DPM++ 2S ancestral with the exact denoiser D(x, sigma) = s^2 / (s^2 + sigma_q^2) x (sigma_q snapped to
    the grid) is linear in x plus noise sigma_up z per step; its end variance is propagated here exactly.

    Against the data: sgm's last step is an Euler step from sigma_last = sigma(19) = 0.1345 to 0, i.e. x = D(x),
    which from the exact marginal N(0, s^2 + sigma_last^2) gives variance s^4 / (s^2 + sigma_last^2)
    (0.2331 for s = 0.5, 3.982 for s = 2), not s^2. The propagated 50-step variance is 0.987 and 0.996 of
    that (0.920 s^2 and 0.992 s^2); asserted within 4%. Sampling tolerance on 200k samples is 2%.
    """
    sampler = DPMPP2SAncestralSampler(schedule, num_steps=50, eta=1.0, s_noise=1.0, progress=False)
    generator = torch.Generator().manual_seed(5)
    noise = torch.randn(VIDEO_SHAPE, generator=generator, dtype=torch.float64)
    x0 = sampler.sample(gaussian_eps_model(schedule, scale), noise, cond={}, generator=generator)

    grid = schedule.sigmas_f64

    def denoiser_gain(sigma: float) -> float:
        sigma_q = grid[(grid - sigma).abs().argmin()].item()
        return scale**2 / (scale**2 + sigma_q**2)

    sigmas = sampler.sigmas().tolist()
    draws = replay_noise(5, len(sigmas) - 2)
    expected = draws[0] * math.sqrt(1 + sigmas[0] ** 2)
    variance = 1 + sigmas[0] ** 2
    for i, (sigma, sigma_next) in enumerate(itertools.pairwise(sigmas)):
        sigma_up = min(sigma_next, math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        if sigma_down == 0:
            gain = denoiser_gain(sigma)
        else:
            h = math.log(sigma / sigma_down)
            sigma_mid = math.sqrt(sigma * sigma_down)  # e^-s with s = t + h / 2
            mid_gain = sigma_mid / sigma - math.expm1(-h / 2) * denoiser_gain(sigma)
            gain = sigma_down / sigma - math.expm1(-h) * denoiser_gain(sigma_mid) * mid_gain
        expected = gain * expected
        variance = gain**2 * variance
        if sigma_next > 0:
            expected = expected + sigma_up * draws[i + 1]
            variance = variance + sigma_up**2
    assert torch.allclose(x0, expected, rtol=1e-9, atol=1e-11)
    assert x0.var().item() == pytest.approx(variance, rel=0.02)
    sigma_last = sigmas[-2]
    assert x0.var().item() == pytest.approx(scale**4 / (scale**2 + sigma_last**2), rel=0.04)


def flow_gain(scale: float, sigma_from: float, sigma_to: float) -> float:
    """Exact probability flow of N(mu, s^2) data: x - mu -> flow_gain * (x - mu) from sigma_from to sigma_to."""
    # (x - mu) / sqrt(s^2 + sigma^2) is constant along the flow
    return math.sqrt(scale**2 + sigma_to**2) / math.sqrt(scale**2 + sigma_from**2)


def relative_flow_error(
    sampler: DPMPP2MSampler | EulerAncestralSampler, mean: float, scale: float, timestep: int
) -> float:
    """|x - x_exact| / |x_exact - mu| of the state where the sampler reaches grid `timestep`, x_exact the exact flow
    from the same start (the map is affine about mu, so one scalar sample says it all)."""
    states: list[Tensor] = []
    noise = torch.ones(1, 1, dtype=torch.float64)
    model = gaussian_eps_model(sampler.schedule, scale, mean)
    sampler.sample(model, noise, cond={}, callback=lambda step, total, x, x0_pred: states.append(x))
    sigmas, index = sampler.sigmas().tolist(), sampler.timesteps().tolist().index(timestep)
    start = math.sqrt(1 + sigmas[0] ** 2)  # noise * sqrt(1 + sigma_0^2)
    exact = mean + flow_gain(scale, sigmas[0], sigmas[index]) * (start - mean)
    return abs(states[index - 1].item() - exact) / abs(exact - mean)


def end_point_error(sampler: DPMPP2MSampler, mean: float, scale: float) -> float:
    """The same relative error at the end point, whose exact value ends with sgm's last step x = D(x, sigma_last)."""
    sigmas = sampler.sigmas().tolist()
    sigma_0, sigma_last = sigmas[0], sigmas[-2]
    start = math.sqrt(1 + sigma_0**2)
    # exact flow to sigma_last, then D - mu = s^2 / (s^2 + sigma_last^2) (x - mu)
    exact = mean + scale**2 / (scale**2 + sigma_last**2) * flow_gain(scale, sigma_0, sigma_last) * (
        start - mean
    )
    model = gaussian_eps_model(sampler.schedule, scale, mean)
    x0 = sampler.sample(model, torch.ones(1, 1, dtype=torch.float64), cond={})
    return abs(x0.item() - exact) / abs(exact - mean)


@pytest.mark.parametrize(("mean", "scale"), [(0.0, 0.5), (0.7, 2.0)])
def test_dpmpp_2m_follows_the_exact_probability_flow(schedule: NoiseSchedule, mean: float, scale: float):
    """DPM++ 2M with the exact denoiser against the closed-form ODE solution from the same start, per sample.

    sgm's last step (sigma_last = sigma(19) = 0.1345 -> 0) is x = D(x, sigma_last), so the reference is the exact
    flow from sigma_0 to sigma_last followed by that step: mu + s^2 / (s^2 + sigma_last^2) G (x_start - mu), G the
    flow gain and x_start = noise * sqrt(1 + sigma_0^2). The solver's map is affine about mu too (its coefficients
    sigma_next / sigma - expm1(-h) sum to 1), so all samples share one relative error: measured 0.40% (s = 0.5)
    and 0.056% (s = 2) at 50 steps, asserted below 0.6%. The end variance is then the data's s^4 / (s^2 +
    sigma_last^2) up to sgm's start N(0, 1 + sigma_0^2) for the marginal N(mu, s^2 + sigma_0^2) (a factor
    (1 + sigma_0^2) / (s^2 + sigma_0^2): 1.0035 for s = 0.5, 0.986 for s = 2); asserted within 2%.
    """
    sampler = DPMPP2MSampler(schedule, num_steps=50, progress=False)
    noise = torch.randn(VIDEO_SHAPE, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x0 = sampler.sample(gaussian_eps_model(schedule, scale, mean), noise, cond={})

    sigmas = sampler.sigmas().tolist()
    sigma_0, sigma_last = sigmas[0], sigmas[-2]
    gain = scale**2 / (scale**2 + sigma_last**2) * flow_gain(scale, sigma_0, sigma_last)
    expected = mean + gain * (noise * math.sqrt(1 + sigma_0**2) - mean)
    assert ((x0 - expected).norm() / (expected - mean).norm()).item() < 0.006
    assert x0.var().item() == pytest.approx(scale**4 / (scale**2 + sigma_last**2), rel=0.02)


@pytest.mark.parametrize(("mean", "scale"), [(0.0, 0.5), (0.7, 2.0)])
def test_dpmpp_2m_converges_at_second_order(schedule: NoiseSchedule, mean: float, scale: float):
    """Error against the exact flow at a fixed noise level as the steps shrink: DPM++ 2M is second order, Euler
    (Euler ancestral with eta = 0 on the same grid) first order.

    For n in {37, 111, 333} the grid is exactly t = 999 - k * 999 / n (steps of 27, 9 and 3), and every grid visits
    t = 270 (sigma 0.749). A 3x smaller step divides a p-th order error by 3^p: measured 2M 9.1, 9.0 (s = 0.5) and
    9.8, 9.3 (s = 2); Euler 3.0, 3.0. Asserted: 2M > 7, Euler in (2.5, 3.5).

    The full run to sigma = 0 converges too (measured 0.43%, 0.40%, 0.25%, 0.14% for s = 0.5 and 0.11%, 0.056%,
    0.025%, 0.011% for s = 2 at n = 25, 50, 100, 200; asserted decreasing), more slowly for s = 0.5: near t = 0
    sigma(t) grows like sqrt(t), so the last steps (t = 2k -> k) keep a log-sigma length of about log(sqrt(2))
    however large n is.
    """
    errors_2m = [
        relative_flow_error(DPMPP2MSampler(schedule, n, progress=False), mean, scale, 270)
        for n in (37, 111, 333)
    ]
    errors_euler = [
        relative_flow_error(EulerAncestralSampler(schedule, n, eta=0.0, progress=False), mean, scale, 270)
        for n in (37, 111, 333)
    ]
    for coarse, fine in itertools.pairwise(errors_2m):
        assert coarse / fine > 7
    for coarse, fine in itertools.pairwise(errors_euler):
        assert 2.5 < coarse / fine < 3.5
    assert errors_2m[0] < errors_euler[0] / 10

    end_errors = [
        end_point_error(DPMPP2MSampler(schedule, n, progress=False), mean, scale) for n in (25, 50, 100, 200)
    ]
    assert all(coarse > fine for coarse, fine in itertools.pairwise(end_errors))
    assert end_errors[-1] < 0.002


@pytest.mark.parametrize(("mean", "scale"), [(0.0, 0.5), (0.7, 2.0)])
def test_euler_ancestral_mean_and_variance(schedule: NoiseSchedule, mean: float, scale: float):
    """Euler ancestral (eta = 1) with the exact denoiser: per step x - mu -> g (x - mu) + sigma_up z with
    g = 1 + (1 - c)(sigma_down / sigma - 1), c = s^2 / (s^2 + sigma^2) and sigma_down = sigma_next^2 / sigma, i.e.
    g = (s^2 + sigma_next^2) / (s^2 + sigma^2) (c at the last step, x = D(x)).

    Mean: the product of g telescopes, so for any n the mean ends at exactly mu (1 - s^2 / (s^2 + sigma_0^2)): sgm's
    zero-mean start is forgotten but for that fraction (0.0012 for s = 0.5, 0.018 for s = 2). Asserted within 5
    standard errors of the 200k-sample mean.
    Variance: V <- g^2 V + sigma_up^2. From the exact marginal s^2 + sigma^2 one step ends
    s^2 (sigma^2 - sigma_next^2)^2 / (sigma^2 (s^2 + sigma^2)) short of s^2 + sigma_next^2, first order in the
    step: 50 steps end at 0.872 (s = 0.5) / 0.925 (s = 2) of the data's s^4 / (s^2 + sigma_last^2), 100 at 0.915 /
    0.960, 200 at 0.947 / 0.979, 400 at 0.968 / 0.989. Asserted: the propagated value per sample (replayed noise),
    the sample variance within 2% of it, and the shortfall shrinking by > 1.4x per doubling of n, under 4% at 400.
    """
    generator = torch.Generator().manual_seed(13)
    noise = torch.randn(VIDEO_SHAPE, generator=generator, dtype=torch.float64)
    sampler = EulerAncestralSampler(schedule, num_steps=50, progress=False)
    x0 = sampler.sample(gaussian_eps_model(schedule, scale, mean), noise, cond={}, generator=generator)

    def propagate(sigmas: list[float], draws: list[Tensor] | None) -> tuple[Tensor | None, float]:
        """(x per sample from the replayed draws, or None; the end variance) of Euler ancestral on `sigmas`."""
        x = None if draws is None else draws[0] * math.sqrt(1 + sigmas[0] ** 2)
        variance = 1 + sigmas[0] ** 2
        for i, (sigma, sigma_next) in enumerate(itertools.pairwise(sigmas)):
            sigma_up = min(sigma_next, math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
            gain = (scale**2 + sigma_next**2) / (scale**2 + sigma**2)
            variance = gain**2 * variance + sigma_up**2
            if x is not None:
                x = mean + gain * (x - mean)
                if sigma_next > 0:
                    x = x + sigma_up * draws[i + 1]
        return x, variance

    sigmas = sampler.sigmas().tolist()
    expected, variance = propagate(sigmas, replay_noise(13, len(sigmas) - 2))
    assert torch.allclose(x0, expected, rtol=1e-9, atol=1e-11)
    assert x0.var().item() == pytest.approx(variance, rel=0.02)
    expected_mean = mean * (1 - scale**2 / (scale**2 + sigmas[0] ** 2))
    assert abs(x0.mean().item() - expected_mean) < 5 * math.sqrt(variance / x0.numel())

    shortfalls = []
    for num_steps in (50, 100, 200, 400):
        grid = EulerAncestralSampler(schedule, num_steps=num_steps, progress=False).sigmas().tolist()
        shortfalls.append(1 - propagate(grid, None)[1] / (scale**4 / (scale**2 + grid[-2] ** 2)))
    assert all(coarse / fine > 1.4 for coarse, fine in itertools.pairwise(shortfalls))
    assert 0 < shortfalls[-1] < 0.04


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_ddim_invert_then_sample_round_trip(schedule: NoiseSchedule, scale: float):
    """Standard inversion uses eps(x_prev, t) for eps(x_t, t): with the linear model one inverse step is
    x_t = h x_prev, h = sqrt(a_t / a_prev) (1 - sqrt(1 - a_prev) k_t) + sqrt(1 - a_t) k_t, k_t = sqrt(1 - a_t) / v_t,
    and the round trip is x0 * prod(g) * prod(h) = 0.963 x0 (s = 0.5) / 1.020 x0 (s = 2). Ten fixed-point
    refinements per step solve x_t exactly: the round trip then returns x0 to 1e-9 (measured ~1e-13)."""
    model = gaussian_eps_model(schedule, scale)
    sampler = DDIMSampler(schedule, num_steps=50, eta=0.0, progress=False)
    x0 = scale * torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)

    round_trip_gain = 1.0
    for a_t, a_prev in ddim_levels(schedule, 50):
        k_t = math.sqrt(1 - a_t) / marginal_variance(a_t, scale)
        sample_gain = math.sqrt(a_prev / a_t) * (1 - math.sqrt(1 - a_t) * k_t) + math.sqrt(1 - a_prev) * k_t
        invert_gain = math.sqrt(a_t / a_prev) * (1 - math.sqrt(1 - a_prev) * k_t) + math.sqrt(1 - a_t) * k_t
        round_trip_gain *= sample_gain * invert_gain
    back = sampler.sample(model, sampler.invert(model, x0, cond={}), cond={})
    assert torch.allclose(back, round_trip_gain * x0, rtol=1e-9, atol=1e-12)
    assert abs(round_trip_gain - 1) < 0.05

    exact_x_T = sampler.invert(model, x0, cond={}, fixed_point_iterations=10)
    assert torch.allclose(sampler.sample(model, exact_x_T, cond={}), x0, rtol=0, atol=1e-9)


def test_seeded_generator_reproduces_bit_for_bit(schedule: NoiseSchedule):
    model = gaussian_eps_model(schedule, 1.0)
    for sampler in (
        DDIMSampler(schedule, num_steps=10, eta=1.0, progress=False),
        DPMPP2SAncestralSampler(schedule, num_steps=10, progress=False),
        EulerAncestralSampler(schedule, num_steps=10, progress=False),
    ):
        noise = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        runs = [
            sampler.sample(model, noise, cond={}, generator=torch.Generator().manual_seed(seed))
            for seed in (11, 11, 12)
        ]
        assert torch.equal(runs[0], runs[1])
        assert not torch.allclose(runs[0], runs[2])


@pytest.mark.parametrize(
    "sampler_class",
    [EulerAncestralSampler, DPMPP2SAncestralSampler, partial(DDIMSampler, eta=1.0)],
    ids=["euler_ancestral", "dpmpp_2s_ancestral", "ddim_eta1"],
)
def test_per_video_generators_draw_each_videos_fresh_noise_as_alone(schedule: NoiseSchedule, sampler_class):
    """With one generator per video, the noise a sampler injects into video b comes from generator b alone: a batch
    of three gives each video bit for bit as a batch of one with that video's seed."""
    model = gaussian_eps_model(schedule, 1.0)
    sampler = sampler_class(schedule, num_steps=5, progress=False)
    seeds = (3, 4, 5)
    noise = torch.randn(3, 2, 2, 4, 4, generator=torch.Generator().manual_seed(0))

    def generators(chosen: tuple[int, ...]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(seed) for seed in chosen]

    batched = sampler.sample(model, noise, cond={}, generator=generators(seeds))
    for row, seed in enumerate(seeds):
        alone = sampler.sample(model, noise[row : row + 1], cond={}, generator=generators((seed,)))
        assert torch.equal(batched[row : row + 1], alone)
    # one generator for the batch: a video's noise depends on the batch it is drawn in
    one_generator = sampler.sample(model, noise, cond={}, generator=torch.Generator().manual_seed(seeds[0]))
    assert not torch.allclose(one_generator, batched)


def test_ddim_timesteps_and_first_step_by_hand(schedule: NoiseSchedule):
    sampler = DDIMSampler(schedule, num_steps=50, eta=0.0, progress=False)
    assert sampler.timesteps().flip(0).tolist() == list(range(1, 1000, 20))

    seen_t: list[Tensor] = []
    steps: list[tuple[int, int, Tensor, Tensor]] = []

    def model(x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        seen_t.append(t)
        return linear_eps_model(x_t, t, cond)

    noise = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sampler.sample(model, noise, cond={}, callback=lambda *args: steps.append(args))
    assert seen_t[0].dtype == torch.int64 and seen_t[0].tolist() == [981, 981]
    assert [step[:2] for step in steps] == [(i, 50) for i in range(50)]

    a_t, a_prev = schedule.alphas_cumprod_f64[981].item(), schedule.alphas_cumprod_f64[961].item()
    eps = 0.3 * noise + 0.1
    x0_pred = (noise - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    assert torch.allclose(steps[0][3], x0_pred, atol=1e-12)
    assert torch.allclose(steps[0][2], math.sqrt(a_prev) * x0_pred + math.sqrt(1 - a_prev) * eps, atol=1e-12)


def test_ddim_spacing_follows_ldm_when_steps_do_not_divide(schedule: NoiseSchedule, caplog):
    with caplog.at_level(logging.WARNING):
        sampler = DDIMSampler(schedule, num_steps=30, progress=False)
    assert sampler.timesteps().flip(0).tolist() == list(range(1, 1000, 33))
    assert "31 steps, not 30" in caplog.text
    with pytest.raises(ValueError, match="num_steps <= 500"):
        DDIMSampler(schedule, num_steps=600)


def test_dpmpp_sigmas_and_first_step_by_hand(schedule: NoiseSchedule):
    sampler = DPMPP2SAncestralSampler(schedule, num_steps=50, eta=0.0, progress=False)
    sigmas = sampler.sigmas()
    assert len(sigmas) == 51
    assert sampler.timesteps()[[0, 1, -1]].tolist() == [999, 979, 19]
    assert sigmas[0].item() == pytest.approx(14.6146, abs=5e-5)
    assert sigmas[-2].item() == schedule.sigmas_f64[19].item() and sigmas[-1].item() == 0.0

    inputs: list[tuple[Tensor, Tensor]] = []
    steps: list[tuple[int, int, Tensor, Tensor]] = []

    def model(x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        inputs.append((x_t, t))
        return linear_eps_model(x_t, t, cond)

    noise = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sampler.sample(model, noise, cond={}, callback=lambda *args: steps.append(args))
    # x = noise * sqrt(1 + sigma_0^2), scaled back by 1 / sqrt(sigma_0^2 + 1): the model sees the noise at t = 999
    assert torch.allclose(inputs[0][0], noise, atol=1e-12) and inputs[0][1].tolist() == [999, 999]

    sigma, sigma_next = sigmas[0].item(), sigmas[1].item()  # eta = 0: sigma_down = sigma_next, no noise
    x = noise * math.sqrt(1 + sigma**2)
    denoised = x - sigma * linear_eps_model(noise, inputs[0][1], {})
    midpoint = math.sqrt(sigma * sigma_next)
    midpoint_t = int((schedule.sigmas_f64 - midpoint).abs().argmin())
    midpoint_sigma = schedule.sigmas_f64[midpoint_t].item()
    x2 = midpoint / sigma * x - math.expm1(-math.log(sigma / sigma_next) / 2) * denoised
    assert inputs[1][1].tolist() == [midpoint_t] * 2 and 979 < midpoint_t < 999
    assert torch.allclose(inputs[1][0], x2 / math.sqrt(midpoint_sigma**2 + 1), atol=1e-12)
    denoised2 = x2 - midpoint_sigma * linear_eps_model(inputs[1][0], inputs[1][1], {})
    x_next = sigma_next / sigma * x - math.expm1(-math.log(sigma / sigma_next)) * denoised2
    assert torch.allclose(steps[0][2], x_next, atol=1e-10)
    assert torch.allclose(steps[0][3], denoised, atol=1e-12)
    assert [step[:2] for step in steps] == [(i, 50) for i in range(50)]


def test_dpmpp_2m_is_deterministic_whatever_the_generator(schedule: NoiseSchedule):
    sampler = DPMPP2MSampler(schedule, num_steps=10, progress=False)
    model = gaussian_eps_model(schedule, 1.0)
    noise = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    runs = [
        sampler.sample(model, noise, cond={}, generator=generator)
        for generator in (None, torch.Generator().manual_seed(11), torch.Generator().manual_seed(12))
    ]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])


def denoise_by_hand(schedule: NoiseSchedule, x: Tensor, sigma: float) -> tuple[Tensor, Tensor, int]:
    """(D, model input, timestep) of sgm's denoiser with `linear_eps_model`, sigma a grid sigma."""
    timestep = int((schedule.sigmas_f64 - sigma).abs().argmin())
    model_input = x / math.sqrt(sigma**2 + 1)
    return x - sigma * linear_eps_model(model_input, None, {}), model_input, timestep


def test_dpmpp_2m_steps_by_hand(schedule: NoiseSchedule):
    """Three steps (timesteps 999, 666, 333, then sigma 0): a first-order step, a second-order step with
    r = h_last / h, and the last step x = D."""
    sampler = DPMPP2MSampler(schedule, num_steps=3, progress=False)
    assert sampler.timesteps().tolist() == [999, 666, 333]
    sigmas = sampler.sigmas().tolist()
    assert sigmas[-1] == 0.0

    inputs: list[tuple[Tensor, Tensor]] = []
    steps: list[tuple[int, int, Tensor, Tensor]] = []

    def model(x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        inputs.append((x_t, t))
        return linear_eps_model(x_t, t, cond)

    noise = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sampler.sample(model, noise, cond={}, callback=lambda *args: steps.append(args))
    assert len(inputs) == 3  # one network evaluation per step
    assert [step[:2] for step in steps] == [(i, 3) for i in range(3)]

    lambdas = [-math.log(sigma) for sigma in sigmas[:3]]  # t = -log(sigma)
    x = noise * math.sqrt(1 + sigmas[0] ** 2)
    d0, input0, t0 = denoise_by_hand(schedule, x, sigmas[0])
    assert torch.allclose(inputs[0][0], input0, atol=1e-12) and inputs[0][1].tolist() == [t0] * 2 == [999] * 2
    h0 = lambdas[1] - lambdas[0]
    x = sigmas[1] / sigmas[0] * x - math.expm1(-h0) * d0
    assert torch.allclose(steps[0][2], x, atol=1e-12) and torch.allclose(steps[0][3], d0, atol=1e-12)

    d1, input1, t1 = denoise_by_hand(schedule, x, sigmas[1])
    assert torch.allclose(inputs[1][0], input1, atol=1e-12) and inputs[1][1].tolist() == [t1] * 2 == [666] * 2
    h1 = lambdas[2] - lambdas[1]
    r = h0 / h1
    x = sigmas[2] / sigmas[1] * x - math.expm1(-h1) * ((1 + 1 / (2 * r)) * d1 - 1 / (2 * r) * d0)
    assert torch.allclose(steps[1][2], x, atol=1e-12)

    d2, _, t2 = denoise_by_hand(schedule, x, sigmas[2])
    assert inputs[2][1].tolist() == [t2] * 2 == [333] * 2
    assert torch.allclose(out, d2, atol=1e-12) and torch.equal(steps[2][2], out)


def test_euler_ancestral_steps_by_hand(schedule: NoiseSchedule):
    """Two steps (timesteps 999, 499, then sigma 0): an Euler step to sigma_down plus sigma_up z, then x = D."""
    sampler = EulerAncestralSampler(schedule, num_steps=2, eta=1.0, s_noise=0.5, progress=False)
    assert sampler.timesteps().tolist() == [999, 499]
    sigma, sigma_next = sampler.sigmas().tolist()[:2]
    steps: list[tuple[int, int, Tensor, Tensor]] = []
    noise = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sampler.sample(
        linear_eps_model,
        noise,
        cond={},
        generator=torch.Generator().manual_seed(4),
        callback=lambda *args: steps.append(args),
    )

    x = noise * math.sqrt(1 + sigma**2)
    d0, _, _ = denoise_by_hand(schedule, x, sigma)
    sigma_up = math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
    sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
    z = torch.randn(noise.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    # Euler: x + (x - D) / sigma * (sigma_down - sigma), then s_noise * sigma_up * z
    x = x + (x - d0) / sigma * (sigma_down - sigma) + 0.5 * sigma_up * z
    assert torch.allclose(steps[0][2], x, atol=1e-12) and torch.allclose(steps[0][3], d0, atol=1e-12)
    d1, _, _ = denoise_by_hand(schedule, x, sigma_next)
    assert torch.allclose(out, d1, atol=1e-12)

    deterministic = EulerAncestralSampler(schedule, num_steps=2, eta=0.0, progress=False)
    x = noise * math.sqrt(1 + sigma**2)
    x = x + (x - d0) / sigma * (sigma_next - sigma)  # eta = 0: sigma_down = sigma_next, no noise
    expected = denoise_by_hand(schedule, x, sigma_next)[0]
    assert torch.allclose(deterministic.sample(linear_eps_model, noise, cond={}), expected, atol=1e-12)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        EulerAncestralSampler(schedule, num_steps=2, eta=-1.0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ddim", {"num_steps": 50, "eta": 0.0}),
        ("dpmpp_2s_ancestral", {"num_steps": 50, "eta": 1.0, "s_noise": 1.0}),
        ("dpmpp_2m", {"num_steps": 50}),
        ("euler_ancestral", {"num_steps": 50, "eta": 1.0, "s_noise": 1.0}),
    ],
)
def test_sampler_configs_are_partials_taking_the_schedule(schedule: NoiseSchedule, name: str, expected: dict):
    factory = instantiate(OmegaConf.load(CONF / "sampler" / f"{name}.yaml"))
    sampler = factory(schedule=schedule)
    assert sampler.schedule is schedule
    assert {key: getattr(sampler, key) for key in expected} == expected
    with pytest.raises(TypeError, match="schedule must be a NoiseSchedule"):
        factory(schedule=None)


@pytest.mark.parametrize(
    "sampler_class", [DDIMSampler, DPMPP2SAncestralSampler, DPMPP2MSampler, EulerAncestralSampler]
)
def test_x0_range_clips_every_predicted_x0(sampler_class):
    """A model that predicts a far-off x0 (eps = 0 on unit noise means x0 = x / sqrt(a_t), up to ~15) is held to
    `x0_range`, and the result lies in it; without the range the same model leaves that range."""
    schedule = NoiseSchedule()
    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    seen: list[torch.Tensor] = []

    def zero_eps(x, t, cond):
        return torch.zeros_like(x)

    def record(step, total, x, x0_pred):
        seen.append(x0_pred)

    clipped = sampler_class(schedule, num_steps=10, progress=False, x0_range=(-0.5, 0.5))
    out = clipped.sample(
        zero_eps, noise, cond={}, generator=torch.Generator().manual_seed(1), callback=record
    )
    assert all(float(x0.abs().max()) <= 0.5 + 1e-6 for x0 in seen)
    assert float(out.abs().max()) <= 0.6
    free = sampler_class(schedule, num_steps=10, progress=False)
    assert (
        float(free.sample(zero_eps, noise, cond={}, generator=torch.Generator().manual_seed(1)).abs().max())
        > 1.0
    )
    with pytest.raises(ValueError, match="x0_range"):
        sampler_class(schedule, num_steps=10, x0_range=(1.0, -1.0))


@pytest.mark.parametrize("sampler_name", ["dpmpp_2m", "euler_ancestral"])
@pytest.mark.parametrize(("experiment", "num_frames"), [("toy_scvideo", 4), ("toy_artv", 3)])
def test_sampler_drives_a_tiny_model_through_its_config(
    experiment: str, num_frames: int, sampler_name: str, tmp_path: Path
):
    """`sampler=<name>` composed with a toy experiment: the module builds the sampler with its own schedule and
    generates a video (SCVideo jointly, ART-V frame by frame, each frame a full sampler run)."""
    cfg = compose_config(
        "train",
        [
            f"experiment={experiment}",
            f"sampler={sampler_name}",
            "sampler.num_steps=3",
            "sampler.progress=false",
        ],
        tmp_path,
    )
    module = instantiate(cfg.model).eval()
    sampler_class = {"dpmpp_2m": DPMPP2MSampler, "euler_ancestral": EulerAncestralSampler}[sampler_name]
    assert type(module.sampler) is sampler_class and module.sampler.num_steps == 3
    assert module.sampler.schedule is module.schedule
    size = cfg.resolution.height
    video = module.generate(
        GenerationRequest(
            prompts=["a red circle moving left"],
            height=size,
            width=size,
            num_frames=num_frames,
            generators=[torch.Generator().manual_seed(0)],
            progress=False,
        )
    ).video
    assert video.shape == (1, num_frames, 3, size, size)
    assert bool(torch.isfinite(video).all()) and float(video.abs().max()) <= 1.0


@pytest.mark.parametrize(("num_steps", "first", "last"), [(25, 999, 39), (50, 999, 19), (10, 999, 99)])
def test_ddim_trailing_spacing_starts_at_the_last_training_step(
    schedule: NoiseSchedule, num_steps: int, first: int, last: int
):
    """Lin et al. 2024 Table 2, "trailing": round(arange(N, 0, -N / S)) - 1; ldm's "uniform" starts at N - c + 1."""
    trailing = DDIMSampler(schedule, num_steps=num_steps, spacing="trailing", progress=False)
    steps = trailing.timesteps()
    assert len(steps) == num_steps and int(steps[0]) == first and int(steps[-1]) == last
    assert bool((steps.diff() == -(1000 // num_steps)).all())
    assert (
        int(DDIMSampler(schedule, num_steps=num_steps, progress=False).timesteps()[0])
        == 1000 - 1000 // num_steps + 1
    )
    # each step goes to the next visited level, the last one to a_0 as ldm's
    a = schedule.alphas_cumprod_f64
    assert trailing._alphas == pytest.approx(a[steps].tolist(), rel=1e-12)
    assert trailing._alphas_prev == pytest.approx([*a[steps[1:]].tolist(), float(a[0])], rel=1e-12)


def test_ddim_refuses_an_unknown_spacing(schedule: NoiseSchedule):
    with pytest.raises(ValueError, match=r"sampler\.spacing"):
        DDIMSampler(schedule, num_steps=10, spacing="leading")
