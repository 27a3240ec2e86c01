"""v-prediction and a near-zero terminal SNR, the from-scratch SCVideo toy's deviation from the paper
(docs/experiments/2026-12-05-scvideo-motion-diagnosis.md): the rescaled schedule (Lin et al. 2024, Algorithm 1),
the v -> eps conversion that keeps samplers, guidance and POS on eps, and the v-MSE objective."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from modules.diffusion.noise_schedule import NoiseSchedule
from modules.scvideo import SCVideoDenoiser
from modules.unet.unet_2d import UNetModel
from tests.conftest import compose_config

TINY_UNET = dict(
    in_channels=4,
    out_channels=4,
    model_channels=32,
    attention_resolutions=[1],
    num_res_blocks=1,
    channel_mult=[1],
    num_head_channels=16,
    context_dim=8,
    use_linear_in_transformer=True,
)
V_TOY = [
    "experiment=toy_scvideo",
    "schedule.terminal_snr=1e-5",
    "model.net.prediction=v",
    "model.objective=v",
    "model.min_snr_gamma=null",
    "model.high_noise_fraction=0.0",  # one uniform step per clip, as the tests draw it by hand
    "model.first_frame_lead_fraction=0.0",
]


def snr(schedule: NoiseSchedule) -> torch.Tensor:
    a = schedule.alphas_cumprod_f64
    return a / (1 - a)


@pytest.mark.parametrize("terminal_snr", [1e-3, 1e-5])
def test_the_rescaled_schedule_keeps_the_first_step_and_ends_at_the_terminal_snr(terminal_snr):
    plain, rescaled = NoiseSchedule(), NoiseSchedule(terminal_snr=terminal_snr)
    assert rescaled.alphas_cumprod_f64[0] == pytest.approx(float(plain.alphas_cumprod_f64[0]), rel=1e-12)
    assert float(snr(rescaled)[-1]) == pytest.approx(terminal_snr, rel=1e-9)
    assert bool((snr(rescaled).diff() < 0).all())  # still a noising schedule
    assert bool(((rescaled.betas > 0) & (rescaled.betas < 1)).all())
    # the betas reproduce the rescaled a_t (what q_sample and the samplers read)
    assert torch.allclose(
        torch.cumprod(1 - rescaled.betas.double(), 0), rescaled.alphas_cumprod_f64, rtol=1e-5
    )
    # every step is noisier than before except the first
    assert bool((snr(rescaled)[1:] < snr(plain)[1:]).all())
    assert NoiseSchedule().terminal_snr is None and torch.equal(NoiseSchedule().betas, plain.betas)


@pytest.mark.parametrize("terminal_snr", [0.0, -1.0, 2000.0])
def test_a_terminal_snr_the_samplers_cannot_use_is_refused(terminal_snr):
    with pytest.raises(ValueError, match="terminal_snr"):
        NoiseSchedule(terminal_snr=terminal_snr)


def test_eps_from_v_inverts_the_definition_of_v():
    schedule = NoiseSchedule(terminal_snr=1e-5)
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 2, 4, 4, generator=generator)
    eps = torch.randn(4, 3, 2, 4, 4, generator=generator)
    t = torch.tensor([0, 400, 990, 999])
    a = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1, 1)
    v = a.sqrt() * eps - (1 - a).sqrt() * x0
    x_t = schedule.q_sample(x0, t, eps)
    torch.testing.assert_close(schedule.eps_from_v(x_t, t, v), eps, atol=1e-5, rtol=0)
    # and x0 comes back through the samplers' eps -> x0 conversion, even at the last step (sqrt(a) ~ 3e-3)
    x0_back = schedule.predict_x0_from_eps(x_t, t, schedule.eps_from_v(x_t, t, v))
    torch.testing.assert_close(x0_back, x0, atol=1e-3, rtol=0)


def test_a_v_predicting_denoiser_returns_eps():
    schedule = NoiseSchedule(terminal_snr=1e-5)
    torch.manual_seed(0)
    v_net = SCVideoDenoiser(functools.partial(UNetModel, **TINY_UNET), prediction="v", schedule=schedule)
    eps_net = SCVideoDenoiser(functools.partial(UNetModel, **TINY_UNET))
    eps_net.load_state_dict(v_net.state_dict())  # same weights, only the reading of the output differs
    generator = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, 4, 3, 8, 8, generator=generator)
    t = torch.tensor([10, 999])
    cond = {"text": torch.randn(2, 5, 8, generator=generator)}
    with torch.no_grad():
        raw = eps_net(x_t, t, cond)
        torch.testing.assert_close(v_net(x_t, t, cond), schedule.eps_from_v(x_t, t, raw))
    assert not torch.allclose(v_net(x_t, t, cond), raw, atol=1e-3)
    assert v_net.state_dict().keys() == eps_net.state_dict().keys()  # the schedule adds no checkpoint keys


def test_v_prediction_needs_its_schedule_and_a_known_name():
    with pytest.raises(ValueError, match=r"model\.net\.schedule"):
        SCVideoDenoiser(functools.partial(UNetModel, **TINY_UNET), prediction="v")
    with pytest.raises(ValueError, match=r"model\.net\.prediction"):
        SCVideoDenoiser(functools.partial(UNetModel, **TINY_UNET), prediction="x0")


def test_the_v_objective_is_the_v_mse(tmp_path: Path):
    """diffusion_loss with objective=v equals the mean squared error of the UNet's v output against v, per sample."""
    cfg = compose_config("train", [*V_TOY, "data.batch_size=2"], tmp_path)
    model = instantiate(cfg.model)
    schedule = model.schedule
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, model.net.unet.in_channels, 2, 4, 4, generator=generator)
    text = torch.randn(2, 77, cfg.backbone.unet.context_dim, generator=generator)
    model.clip_latents = lambda batch, frame_indices: latents  # the loss of given latents, no first stage
    batch = {"video": torch.zeros(2, 2), "text_embedding": text}
    model.train()
    model.condition_dropout = {}
    loss = model.diffusion_loss(batch, generator=torch.Generator().manual_seed(5))
    # the same draws, by hand
    draw = torch.Generator().manual_seed(5)
    t = torch.randint(0, schedule.num_timesteps, (2,), generator=draw)
    noise = torch.randn(latents.shape, generator=draw)
    x_t = schedule.q_sample(latents, t, noise)
    a = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1, 1)
    v_target = a.sqrt() * noise - (1 - a).sqrt() * latents
    with torch.no_grad():
        v_output = _raw_output(model.net, x_t, t, text)
    expected = (v_output - v_target).pow(2).flatten(1).mean(1).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-3, atol=0)


def _raw_output(net: SCVideoDenoiser, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """What the UNet itself outputs (v), bypassing the conversion to eps."""
    net.prediction = "eps"
    try:
        return net(x_t, t, {"text": text})
    finally:
        net.prediction = "v"


def test_the_v_objective_with_min_snr_caps_low_noise_and_keeps_the_noisiest_steps(tmp_path: Path):
    """x0-MSE weights: 1 + SNR for the v-MSE; min(1 + SNR, 1 + gamma) with min_snr_gamma (eps-MSE weight x SNR)."""
    plain = instantiate(compose_config("train", V_TOY, tmp_path).model)
    capped = instantiate(compose_config("train", [*V_TOY, "model.min_snr_gamma=1.0"], tmp_path).model)
    t = torch.tensor([0, 200, 500, 999])
    a = plain.schedule.alphas_cumprod[t]
    snr = a / (1 - a)
    torch.testing.assert_close(plain.loss_weights(t) * snr, 1 + snr)
    torch.testing.assert_close(capped.loss_weights(t) * snr, torch.minimum(1 + snr, torch.tensor(2.0)))
    # the noisiest step keeps weight 1, where Hang et al.'s v form of Min-SNR would give it 0
    assert float(capped.loss_weights(t)[-1] * snr[-1]) == pytest.approx(1.0, abs=1e-4)


def test_high_noise_fraction_draws_that_share_of_the_steps_from_the_high_noise_range(tmp_path: Path):
    """model.high_noise_fraction p: about a share p + (1 - p) * (N - from) / N of the steps lands in [from, N);
    p = 0 is the papers' uniform draw, with the same random stream as before the option existed."""
    uniform = instantiate(compose_config("train", [*V_TOY, "model.high_noise_fraction=0.0"], tmp_path).model)
    skewed = instantiate(
        compose_config(
            "train", [*V_TOY, "model.high_noise_fraction=0.5", "model.high_noise_from=900"], tmp_path
        ).model
    )
    draws = 20_000
    t_uniform = uniform.draw_timesteps(draws, torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        t_uniform, torch.randint(0, 1000, (draws,), generator=torch.Generator().manual_seed(1))
    )
    t_skewed = skewed.draw_timesteps(draws, torch.Generator().manual_seed(1))
    assert int(t_skewed.min()) >= 0 and int(t_skewed.max()) <= 999
    high_share = float((t_skewed >= 900).float().mean())
    assert high_share == pytest.approx(0.5 + 0.5 * 0.1, abs=0.015)  # 0.55; the uniform draw gives 0.10
    assert float((t_uniform >= 900).float().mean()) == pytest.approx(0.1, abs=0.015)
    # below the range the draw stays uniform: the steps under 900 are spread evenly
    low = t_skewed[t_skewed < 900]
    assert float((low < 450).float().mean()) == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize(("key", "value"), [("high_noise_fraction", 1.5), ("high_noise_from", 1000)])
def test_a_high_noise_setting_out_of_range_is_refused(tmp_path: Path, key: str, value: float):
    with pytest.raises(InstantiationException, match=rf"model\.{key} must be"):
        instantiate(compose_config("train", [*V_TOY, f"model.{key}={value}"], tmp_path).model)
