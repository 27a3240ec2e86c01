"""`model.first_frame_lead_fraction`: SCVideo clips whose first frame is noised less than the rest (one DDPM step per
frame), the toy SCVideo's training deviation (docs/experiments/2026-12-05-scvideo-motion-diagnosis.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import Tensor

from modules.diffusion.noise_schedule import NoiseSchedule
from modules.diffusion.samplers import DDIMSampler
from tests.conftest import compose_config

TOY = ["experiment=toy_scvideo", "model.objective=v", "model.net.prediction=v", "schedule.terminal_snr=1e-5"]


def test_the_first_frame_of_that_share_of_clips_draws_a_lower_step(tmp_path: Path):
    """Frames 2..T keep the clip's step; frame 1 of about a share p of the clips is drawn uniformly from [0, t]."""
    module = instantiate(
        compose_config("train", [*TOY, "model.first_frame_lead_fraction=0.5"], tmp_path).model
    )
    clips = 20_000
    t = torch.randint(0, 1000, (clips,), generator=torch.Generator().manual_seed(0))
    frames = module.lead_first_frame(t, 8, torch.Generator().manual_seed(1))
    assert frames.shape == (clips, 8) and frames.dtype == torch.int64
    assert torch.equal(frames[:, 1:], t[:, None].expand(clips, 7))
    assert bool((frames[:, 0] <= t).all()) and int(frames[:, 0].min()) >= 0
    led = frames[:, 0] < t
    # a led clip draws t itself with chance 1 / (t + 1): the share below t is just under p
    assert float(led.float().mean()) == pytest.approx(0.5, abs=0.02)
    ratio = frames[led, 0].float() / t[led].float()
    assert float(ratio.mean()) == pytest.approx(0.5, abs=0.02)  # uniform in [0, t]


def test_per_frame_steps_that_are_all_equal_give_the_per_clip_result(tmp_path: Path):
    """Schedule and SCVideo take t `[B, T]`; equal steps reproduce t `[B]` exactly, and a frame's own step changes
    the prediction."""
    module = instantiate(compose_config("train", TOY, tmp_path).model).eval()
    schedule: NoiseSchedule = module.schedule
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 12, 4, 16, 16, generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    t = torch.tensor([100, 900])
    per_frame = t[:, None].repeat(1, 4)
    torch.testing.assert_close(schedule.q_sample(x0, per_frame, noise), schedule.q_sample(x0, t, noise))
    led = per_frame.clone()
    led[:, 0] = 0
    x_led = schedule.q_sample(x0, led, noise)
    at_zero = schedule.q_sample(x0, torch.zeros(2, dtype=torch.int64), noise)
    torch.testing.assert_close(x_led[:, :, 0], at_zero[:, :, 0])
    torch.testing.assert_close(x_led[:, :, 1:], schedule.q_sample(x0, t, noise)[:, :, 1:])
    text = module.encode_text(["a red circle moving left", "a blue square moving up"])
    with torch.no_grad():
        x_t = schedule.q_sample(x0, t, noise)
        clip = module.net(x_t, t, {"text": text})
        frames = module.net(x_t, per_frame, {"text": text})
        moved = module.net(x_t, led, {"text": text})
    torch.testing.assert_close(frames, clip)
    assert not torch.allclose(moved[:, :, 0], clip[:, :, 0])
    with pytest.raises(ValueError, match=r"\[B, T\] = \[2, 4\]"):
        module.net(x_t, torch.zeros(2, 3, dtype=torch.int64), {"text": text})


def test_the_led_loss_weighs_each_frame_at_its_own_step(tmp_path: Path):
    """With every clip led, the loss is the mean over clips and frames of each frame's eps error weighted at that
    frame's step."""
    cfg = compose_config(
        "train",
        [
            *TOY,
            "model.min_snr_gamma=1.0",
            "model.first_frame_lead_fraction=1.0",
            "model.high_noise_fraction=0.0",
        ],
        tmp_path,
    )
    module = instantiate(cfg.model)
    seen = {}
    forward = module.net.forward

    def recording_forward(x_t, t, cond):
        eps = forward(x_t, t, cond)
        seen.update(x_t=x_t, t=t, eps=eps)
        return eps

    module.net.forward = recording_forward
    batch = {
        "video": torch.rand(3, 4, 3, cfg.resolution.height, cfg.resolution.width) * 2 - 1,
        "caption": ["a red circle moving left"] * 3,
    }
    loss = module.diffusion_loss(batch, generator=torch.Generator().manual_seed(0))
    t = seen["t"]
    assert t.shape == (3, 4) and bool((t[:, 0] <= t[:, 1]).all()) and bool((t[:, 1:] == t[:, 1:2]).all())
    generator = torch.Generator().manual_seed(0)
    torch.randint(0, 1000, (3,), generator=generator)  # the clip steps
    torch.rand(3, generator=generator)  # which clips lead
    torch.rand(3, generator=generator)  # their first frames' steps
    noise = torch.randn(seen["eps"].shape, generator=generator)
    per_frame = (seen["eps"] - noise).pow(2).mean(dim=(1, 3, 4))
    expected = (module.loss_weights(t) * per_frame).mean()
    torch.testing.assert_close(loss, expected)
    # not the per-clip weighting: the first frames' lower steps weigh differently
    per_clip = (module.loss_weights(t[:, 1]) * per_frame.mean(1)).mean()
    assert not torch.allclose(loss, per_clip)


def test_a_model_without_per_frame_steps_refuses_the_lead(tmp_path: Path):
    cfg = compose_config("train", ["experiment=toy_artv", "model.first_frame_lead_fraction=0.5"], tmp_path)
    with pytest.raises(InstantiationException, match=r"needs one DDPM step per frame.*ARTVDenoiser"):
        instantiate(cfg.model)
    cfg = compose_config("train", [*TOY, "model.first_frame_lead_fraction=1.5"], tmp_path)
    with pytest.raises(InstantiationException, match=r"first_frame_lead_fraction must be in \[0, 1\]"):
        instantiate(cfg.model)


def frame_recording_model(seen: list[Tensor]):
    """An affine eps model over video latents that records the per-frame steps it is handed."""

    def eps_model(x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        seen.append(t.clone())
        return 0.3 * x_t + 0.01 * t.reshape(t.shape[0], 1, -1, 1, 1).float() / 1000

    return eps_model


@pytest.mark.parametrize("spacing", ["uniform", "trailing"])
def test_ddim_with_the_first_frame_on_the_full_grid_is_plain_ddim(spacing: str):
    """first_frame_steps = S: every frame on the same grid, the per-frame update gives DDIM's result."""
    schedule = NoiseSchedule(terminal_snr=1e-5)
    noise = torch.randn(2, 3, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    plain = DDIMSampler(schedule, num_steps=10, spacing=spacing, progress=False)
    ahead = DDIMSampler(schedule, num_steps=10, spacing=spacing, progress=False, first_frame_steps=10)
    model = frame_recording_model([])
    torch.testing.assert_close(
        ahead.sample(model, noise, cond={}), plain.sample(model, noise, cond={}), rtol=1e-5, atol=1e-6
    )


def test_ddim_runs_the_first_frame_ahead_on_its_own_grid():
    """first_frame_steps = S1 < S: frame 0 visits the S1-step grid, then is read at step 0 and left as it was; the
    other frames visit the S-step grid and end where plain DDIM on them ends."""
    schedule = NoiseSchedule(terminal_snr=1e-5)
    noise = torch.randn(1, 3, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    ahead = DDIMSampler(schedule, num_steps=10, spacing="trailing", progress=False, first_frame_steps=4)
    seen: list[Tensor] = []
    states: list[Tensor] = []
    result = ahead.sample(
        frame_recording_model(seen), noise, cond={}, callback=lambda i, n, x, x0: states.append(x.clone())
    )
    clip_grid = DDIMSampler(schedule, num_steps=10, spacing="trailing", progress=False).timesteps()
    first_grid = DDIMSampler(schedule, num_steps=4, spacing="trailing", progress=False).timesteps()
    assert [int(t[0, 0]) for t in seen] == [*first_grid.tolist(), *[0] * 6]  # 999, 749, 499, 249, then 0
    assert all(torch.equal(t[0, 1:], clip_grid[i].repeat(3)) for i, t in enumerate(seen))
    # frame 0 does not move after its own last step
    assert all(torch.equal(state[:, :, 0], states[3][:, :, 0]) for state in states[4:])
    assert torch.equal(result[:, :, 0], states[3][:, :, 0])
    # frame 0 alone through the 4-step grid: the same end state as the frame run ahead
    alone = DDIMSampler(schedule, num_steps=4, spacing="trailing", progress=False)
    first_alone = alone.sample(
        lambda x, t, c: 0.3 * x + 0.01 * t.reshape(-1, 1, 1, 1, 1).float() / 1000, noise[:, :, :1], cond={}
    )
    torch.testing.assert_close(result[:, :, :1], first_alone, rtol=1e-5, atol=1e-6)


def test_ddim_refuses_a_first_frame_grid_it_cannot_run():
    schedule = NoiseSchedule()
    with pytest.raises(ValueError, match=r"first_frame_steps must be in \[1, num_steps = 10\]"):
        DDIMSampler(schedule, num_steps=10, first_frame_steps=11)
    sampler = DDIMSampler(schedule, num_steps=10, first_frame_steps=5, progress=False)
    with pytest.raises(ValueError, match=r"T >= 2"):
        sampler.sample(frame_recording_model([]), torch.randn(1, 3, 1, 4, 4), cond={})
