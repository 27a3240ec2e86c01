"""DDIM (Song et al. 2021) as ldm's `DDIMSampler` runs it, with "uniform" timestep spacing; plus DDIM inversion.

`spacing="trailing"` (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2)
instead visits N - 1, N - 1 - c, ..., c - 1: sampling starts at the last training step, where a zero-terminal-SNR
schedule (`NoiseSchedule(terminal_snr=...)`) has trained the model on pure noise. ldm's spacing starts at
N - c + 1 (S = 25: 961), a step whose training inputs still show the clip, so pure noise there is read as content.

SCVideo appendix, Sampling: "DDIM sampler ... 50 steps". Facts matched (tests/fixtures/reference/
ORIGINAL_BEHAVIOUR.md, "DDIM"):
- c = N // S; timesteps = range(0, N, c) + 1 (S = 50: 1, 21, ..., 981), run in reverse. When S does not
  divide N this gives len(range(0, N, c)) steps, not S (ldm's behaviour, kept).
- a_prev = [alphas_cumprod[0]] + alphas_cumprod[ts[:-1]]: the last step ends at a_0 = 0.99915, not 1.
- sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from modules.diffusion.guidance import Conditions, EpsModel, Guidance, NoGuidance
from modules.diffusion.noise import Generators
from modules.diffusion.noise_schedule import NoiseSchedule
from modules.diffusion.samplers.base import Sampler, StepCallback

log = logging.getLogger(__name__)


class DDIMSampler(Sampler):
    """DDIM with ldm "uniform" (or "trailing") spacing; eta = 0 is deterministic, eta = 1 matches DDPM's posterior
    variance.

    Args:
        schedule: the model's NoiseSchedule (runtime argument; the config is `_partial_`).
        num_steps: S, number of DDIM steps (SCVideo appendix: 50).
        eta: stochasticity (0 = deterministic DDIM).
        progress: show a tqdm bar.
        x0_range: clip predicted x0 to this range and re-derive eps from it (pixel-space models); None = ldm.
        spacing: "uniform" (ldm, the papers: 1, 1 + c, ..., c = N // S) or "trailing" (Lin et al. 2024: c - 1,
            2c - 1, ..., N - 1, so the first step is the last training step). Both end at a_0.
        first_frame_steps: None (the papers) or S1 <= S: a video's first frame `[:, :, 0]` runs its own S1-step grid
            (same spacing), ahead of the other frames, then stays at a_0 while they finish, so that the later frames
            are drawn around a legible first frame. For models trained on such clips
            (`model.first_frame_lead_fraction`) that take one step per frame (`[B, T]`). `invert` ignores it.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: int = 50,
        eta: float = 0.0,
        progress: bool = True,
        x0_range: tuple[float, float] | None = None,
        spacing: str = "uniform",
        first_frame_steps: int | None = None,
    ):
        super().__init__(schedule, num_steps, progress, x0_range)
        num_timesteps = schedule.num_timesteps
        stride = num_timesteps // num_steps
        if stride < 2:
            raise ValueError(
                f"DDIMSampler: num_steps={num_steps} gives stride {num_timesteps} // {num_steps} = {stride}; "
                f"ldm 'uniform' spacing needs num_steps <= {num_timesteps // 2} <sampler.num_steps>"
            )
        if eta < 0:
            raise ValueError(f"DDIMSampler: eta must be >= 0, got {eta} <sampler.eta>")
        if spacing not in ("uniform", "trailing"):
            raise ValueError(
                f"DDIMSampler: spacing must be uniform or trailing, got {spacing!r} <sampler.spacing>"
            )
        if first_frame_steps is not None and not 1 <= first_frame_steps <= num_steps:
            raise ValueError(
                f"DDIMSampler: first_frame_steps must be in [1, num_steps = {num_steps}] or null, got "
                f"{first_frame_steps} <sampler.first_frame_steps>"
            )
        self.eta = eta
        self.spacing = spacing
        self.first_frame_steps = first_frame_steps
        self._timesteps, self._alphas, self._alphas_prev, self._sigmas = ddim_grid(
            schedule, num_steps, spacing, eta
        )
        self._first_frame_grid = (
            None if first_frame_steps is None else ddim_grid(schedule, first_frame_steps, spacing, eta)
        )

    def timesteps(self) -> Tensor:
        """DDPM steps in the order sampling visits them, int64 (S = 50: 981, 961, ..., 1; trailing: 999, ..., 19)."""
        return self._timesteps.clone()

    @torch.no_grad()
    def sample(
        self,
        eps_model: EpsModel,
        noise: Tensor,
        *,
        cond: Conditions,
        null_cond: Conditions | None = None,
        guidance: Guidance | None = None,
        generator: Generators = None,
        callback: StepCallback | None = None,
    ) -> Tensor:
        """DDIM sampling from x_T = noise `[B, ...]`; returns the state at a_0 `[B, ...]`."""
        if self._first_frame_grid is not None:
            return self._sample_first_frame_ahead(
                eps_model, noise, cond, null_cond, guidance, generator, callback
            )
        x = noise
        total = len(self._timesteps)
        for i in self._progress(range(total), total):
            a_t, a_prev, sigma_t = self._alphas[i], self._alphas_prev[i], self._sigmas[i]
            eps = self._guided_eps(eps_model, guidance, x, int(self._timesteps[i]), cond, null_cond)
            # x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
            x0_pred = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            if self.x0_range is not None:
                x0_pred = self.clip_x0(x0_pred)
                # eps consistent with the clipped x0: eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)
                eps = (x - math.sqrt(a_t) * x0_pred) / math.sqrt(1 - a_t)
            # x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma_t^2) eps + sigma_t z
            x = math.sqrt(a_prev) * x0_pred + math.sqrt(1 - a_prev - sigma_t**2) * eps
            if sigma_t > 0:
                x = x + sigma_t * self._randn_like(x, generator)
            if callback is not None:
                callback(i, total, x, x0_pred)
        return x

    def _sample_first_frame_ahead(
        self,
        eps_model: EpsModel,
        noise: Tensor,
        cond: Conditions,
        null_cond: Conditions | None,
        guidance: Guidance | None,
        generator: Generators,
        callback: StepCallback | None,
    ) -> Tensor:
        """`sample` with `first_frame_steps`: the same DDIM update per frame, with frame 0 on its own grid and one
        DDPM step per frame `[B, T]` handed to the model. noise: `[B, C, T, h, w]`, T >= 2."""
        if noise.ndim != 5 or noise.shape[2] < 2:
            raise ValueError(
                f"DDIMSampler: first_frame_steps needs video latents [B, C, T, h, w] with T >= 2, got "
                f"{list(noise.shape)} <sampler.first_frame_steps>"
            )
        first_steps, first_alphas, first_alphas_prev, first_sigmas = self._first_frame_grid
        num_frames = noise.shape[2]
        x = noise
        total = len(self._timesteps)
        for i in self._progress(range(total), total):
            steps = torch.full((x.shape[0], num_frames), int(self._timesteps[i]), dtype=torch.int64)
            # per frame: a_t, a_prev, sigma_t; frame 0's replaced below
            a_t, a_prev, sigma_t = (
                [values[i]] * num_frames for values in (self._alphas, self._alphas_prev, self._sigmas)
            )
            first_done = i >= len(first_steps)
            if first_done:  # frame 0 stays at a_0, the state its last step reached, and is read at step 0
                steps[:, 0] = 0
                a_t[0] = a_prev[0] = first_alphas_prev[-1]
                sigma_t[0] = 0.0
            else:
                steps[:, 0] = int(first_steps[i])
                a_t[0], a_prev[0], sigma_t[0] = first_alphas[i], first_alphas_prev[i], first_sigmas[i]
            eps = (guidance or NoGuidance())(eps_model, x, steps.to(x.device), cond, null_cond)
            a_t, a_prev, sigma_t = (
                torch.tensor(values, dtype=torch.float64).reshape(1, 1, num_frames, 1, 1).to(x)
                for values in (a_t, a_prev, sigma_t)
            )
            x0_pred = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            if self.x0_range is not None:
                x0_pred = self.clip_x0(x0_pred)
                eps = (x - a_t.sqrt() * x0_pred) / (1 - a_t).sqrt()
            x_prev = a_prev.sqrt() * x0_pred + (1 - a_prev - sigma_t**2).sqrt() * eps
            if bool((sigma_t > 0).any()):
                x_prev = x_prev + sigma_t * self._randn_like(x, generator)
            if first_done:
                x_prev[:, :, 0] = x[:, :, 0]
            x = x_prev
            if callback is not None:
                callback(i, total, x, x0_pred)
        return x

    @torch.no_grad()
    def invert(
        self,
        eps_model: EpsModel,
        x0: Tensor,
        *,
        cond: Conditions,
        null_cond: Conditions | None = None,
        guidance: Guidance | None = None,
        callback: StepCallback | None = None,
        fixed_point_iterations: int = 0,
    ) -> Tensor:
        """Deterministic DDIM inversion: clean x0 `[B, ...]` (taken as the state at a_0) -> x_T `[B, ...]`.

        Runs the sampling timesteps forward (1, 21, ..., 981 for S = 50), inverting each eta = 0 step:
            x_t = sqrt(a_t / a_prev) (x_prev - sqrt(1 - a_prev) eps) + sqrt(1 - a_t) eps.
        The exact inverse needs eps = eps(x_t, t), which is unknown; the standard inversion (as in
        null-text inversion and diffusers' DDIMInverseScheduler) uses eps(x_prev, t), i.e. eps(x_t) ≈
        eps(x_prev). `fixed_point_iterations` > 0 refines x_t by re-evaluating eps(x_t, t) and re-applying the
        update that many times (one extra forward each), converging to the exact inverse for small steps.
        Inversion is always deterministic: self.eta is not used.
        """
        if fixed_point_iterations < 0:
            raise ValueError(f"fixed_point_iterations must be >= 0, got {fixed_point_iterations}")
        x = x0
        total = len(self._timesteps)
        for step, i in enumerate(self._progress(reversed(range(total)), total)):
            a_t, a_prev = self._alphas[i], self._alphas_prev[i]
            timestep = int(self._timesteps[i])
            eps = self._guided_eps(eps_model, guidance, x, timestep, cond, null_cond)
            # x0 = (x_prev - sqrt(1 - a_prev) eps) / sqrt(a_prev)
            x0_pred = (x - math.sqrt(1 - a_prev) * eps) / math.sqrt(a_prev)
            # x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps
            x_next = math.sqrt(a_t) * x0_pred + math.sqrt(1 - a_t) * eps
            for _ in range(fixed_point_iterations):
                eps = self._guided_eps(eps_model, guidance, x_next, timestep, cond, null_cond)
                x0_pred = (x - math.sqrt(1 - a_prev) * eps) / math.sqrt(a_prev)
                x_next = math.sqrt(a_t) * x0_pred + math.sqrt(1 - a_t) * eps
            x = x_next
            if callback is not None:
                callback(step, total, x, x0_pred)
        return x


def ddim_grid(
    schedule: NoiseSchedule, num_steps: int, spacing: str, eta: float
) -> tuple[Tensor, list[float], list[float], list[float]]:
    """The steps of S = `num_steps` DDIM steps in run order (int64 `[S]`) and, per step, a_t, a_prev and sigma_t."""
    num_timesteps = schedule.num_timesteps
    stride = num_timesteps // num_steps
    if spacing == "uniform":
        ascending = torch.arange(0, num_timesteps, stride, device="cpu") + 1
    else:
        # Lin et al. 2024 Table 2: round(arange(N, 0, -N / S)) - 1, ascending
        ascending = (
            torch.arange(num_timesteps, 0, -num_timesteps / num_steps, dtype=torch.float64).round().long() - 1
        ).flip(0)
    if spacing == "uniform" and len(ascending) != num_steps:
        log.warning(
            "ldm 'uniform' DDIM spacing with stride %d gives %d steps, not %d <sampler.num_steps=%d>",
            stride,
            len(ascending),
            num_steps,
            num_steps,
        )
    alphas_cumprod = schedule.alphas_cumprod_f64
    alphas = alphas_cumprod[ascending]
    # a_prev = [a_0] + a[ts[:-1]]: the last step (t = 1) goes to a_0, not to 1
    alphas_prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[ascending[:-1]]])
    # sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    sigmas = eta * ((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev)).sqrt()
    if bool((1 - alphas_prev - sigmas**2 < 0).any()):
        raise ValueError(f"DDIMSampler: eta={eta} makes 1 - a_prev - sigma_t^2 negative <sampler.eta>")
    # run order: highest timestep first
    return ascending.flip(0), alphas.flip(0).tolist(), alphas_prev.flip(0).tolist(), sigmas.flip(0).tolist()
