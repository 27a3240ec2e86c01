"""NoiseSchedule: the SD linear schedule constants, eps <-> x0 round trips and sigma snapping."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from modules.diffusion.noise_schedule import NoiseSchedule

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def schedule() -> NoiseSchedule:
    return NoiseSchedule()


def test_known_constants(schedule: NoiseSchedule):
    """ORIGINAL_BEHAVIOUR.md, Schedule: a[0] = 0.99915, a[999] = 0.0046601, sigma 14.6146 .. 0.02917."""
    assert schedule.alphas_cumprod.shape == (1000,)
    assert schedule.alphas_cumprod.dtype == torch.float32
    assert schedule.alphas_cumprod_f64.dtype == torch.float64
    assert schedule.alphas_cumprod_f64[0].item() == pytest.approx(0.99915, abs=1e-12)
    assert schedule.alphas_cumprod_f64[999].item() == pytest.approx(0.0046601, abs=5e-8)
    assert schedule.sigmas_f64[999].item() == pytest.approx(14.6146, abs=5e-5)
    assert schedule.sigmas_f64[0].item() == pytest.approx(0.02917, abs=5e-6)
    assert torch.equal(schedule.sigmas, schedule.sigmas_f64.float())
    assert bool((schedule.sigmas_f64.diff() > 0).all())


def test_betas_are_squared_linspace_of_roots(schedule: NoiseSchedule):
    betas = schedule.betas.double()
    roots = betas.sqrt()
    assert roots[0].item() == pytest.approx(0.00085**0.5, rel=1e-6)
    assert roots[-1].item() == pytest.approx(0.012**0.5, rel=1e-6)
    assert torch.allclose(
        roots.diff(), torch.full((999,), (0.012**0.5 - 0.00085**0.5) / 999, dtype=torch.float64)
    )


def test_buffers_move_with_module_but_stay_out_of_state_dict(schedule: NoiseSchedule):
    names = {name for name, _ in schedule.named_buffers()}
    assert names == {"betas", "alphas_cumprod", "sigmas"}
    assert schedule.state_dict() == {}
    half = NoiseSchedule().to(torch.float16)
    assert half.alphas_cumprod.dtype == torch.float16
    assert half.alphas_cumprod_f64.dtype == torch.float64


def test_q_sample_matches_formula_on_video_shapes(schedule: NoiseSchedule):
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 2, 5, 6, generator=generator)
    noise = torch.randn(3, 4, 2, 5, 6, generator=generator)
    t = torch.tensor([0, 500, 999])
    x_t = schedule.q_sample(x0, t, noise)
    for i, step in enumerate(t.tolist()):
        a = schedule.alphas_cumprod[step]
        assert torch.allclose(x_t[i], a.sqrt() * x0[i] + (1 - a).sqrt() * noise[i])


def test_eps_x0_round_trips(schedule: NoiseSchedule):
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 3, 8, generator=generator, dtype=torch.float64)
    noise = torch.randn(4, 3, 8, generator=generator, dtype=torch.float64)
    t = torch.tensor([1, 250, 700, 999])
    x_t = schedule.q_sample(x0, t, noise)
    assert torch.allclose(schedule.predict_x0_from_eps(x_t, t, noise), x0, atol=1e-5)
    assert torch.allclose(schedule.predict_eps_from_x0(x_t, t, x0), noise, atol=1e-5)


def test_timesteps_must_be_int64_of_batch_size(schedule: NoiseSchedule):
    x0 = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="int64"):
        schedule.q_sample(x0, torch.tensor([1.0, 2.0]), x0)
    with pytest.raises(ValueError, match=r"\[B\] = \[2\]"):
        schedule.q_sample(x0, torch.tensor([1, 2, 3]), x0)


def test_sigma_snapping(schedule: NoiseSchedule):
    t = torch.tensor([0, 19, 500, 999])
    assert torch.equal(schedule.sigma_to_t(schedule.t_to_sigma(t)), t)
    assert torch.equal(schedule.sigma_to_t(schedule.sigmas_f64[t]), t)
    # a sigma a quarter of the way from grid point 500 to 501 snaps to 500, three quarters to 501
    low, high = schedule.sigmas_f64[500], schedule.sigmas_f64[501]
    between = torch.stack([low + 0.25 * (high - low), low + 0.75 * (high - low)])
    assert schedule.sigma_to_t(between).tolist() == [500, 501]
    assert schedule.sigma_to_t(torch.tensor([100.0, 0.0])).tolist() == [999, 0]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="linear_start"):
        NoiseSchedule(linear_start=0.02, linear_end=0.01)
    with pytest.raises(ValueError, match="num_timesteps"):
        NoiseSchedule(num_timesteps=1)


def test_config_instantiates_sd_linear():
    schedule = instantiate(OmegaConf.load(CONF / "schedule" / "sd_linear.yaml"))
    assert isinstance(schedule, NoiseSchedule)
    assert torch.equal(schedule.alphas_cumprod_f64, NoiseSchedule().alphas_cumprod_f64)
