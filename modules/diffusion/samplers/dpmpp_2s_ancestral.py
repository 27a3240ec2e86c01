"""DPM-Solver++(2S) ancestral (Lu et al. 2022) on the discrete DDPM sigma grid, as sgm runs it.

ART-V supplementary, Inference: "DPMPP2SAncestral Sampler", 50 steps (sgm `DPMPP2SAncestralSampler` with
`LegacyDDPMDiscretization` and a `DiscreteDenoiser` with `EpsScaling`). Facts matched
(tests/fixtures/reference/ORIGINAL_BEHAVIOUR.md, "DPM++ 2S ancestral"):
- timesteps: linspace(N - 1, 0, n, endpoint=False) cast to int, reversed; sigmas descending from those
  timesteps, with 0 appended; the initial noise is multiplied by sqrt(1 + sigma_0^2).
- denoiser: sigma snapped to the nearest of the N grid sigmas for both the input scaling and the timestep,
  D(x, sigma) = x - sigma * eps(x / sqrt(sigma^2 + 1), t(sigma)).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from modules.diffusion.guidance import Conditions, EpsModel, Guidance
from modules.diffusion.noise_schedule import NoiseSchedule
from modules.diffusion.samplers.base import Sampler, StepCallback


class DPMPP2SAncestralSampler(Sampler):
    """DPM++ 2S ancestral: a second-order midpoint step down to sigma_down, then fresh noise up to sigma_next.

    Args:
        schedule: the model's NoiseSchedule (runtime argument; the config is `_partial_`).
        num_steps: n, number of steps (ART-V supplementary, Inference: 50).
        eta: ancestral noise amount (sgm default 1; 0 gives the deterministic DPM++ 2S).
        s_noise: scale of the added noise (sgm default 1).
        progress: show a tqdm bar.
        x0_range: clip the denoised estimate to this range (pixel-space models); None = sgm.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: int = 50,
        eta: float = 1.0,
        s_noise: float = 1.0,
        progress: bool = True,
        x0_range: tuple[float, float] | None = None,
    ):
        super().__init__(schedule, num_steps, progress, x0_range)
        max_step = schedule.num_timesteps - 1
        if num_steps > schedule.num_timesteps:
            raise ValueError(
                f"DPMPP2SAncestralSampler: num_steps={num_steps} exceeds the {schedule.num_timesteps} "
                "DDPM steps <sampler.num_steps>"
            )
        if eta < 0:
            raise ValueError(f"DPMPP2SAncestralSampler: eta must be >= 0, got {eta} <sampler.eta>")
        self.eta = eta
        self.s_noise = s_noise
        # numpy's linspace(max_step, 0, n, endpoint=False) = arange(n) * ((0 - max_step) / n) + max_step,
        # truncated to int like `.astype(int)`; already in run order (highest timestep first)
        spaced = (
            torch.arange(num_steps, dtype=torch.float64, device="cpu") * ((0 - max_step) / num_steps)
            + max_step
        )
        self._timesteps = spaced.to(torch.int64)
        self._sigmas = torch.cat(
            [schedule.sigmas_f64[self._timesteps], torch.zeros(1, dtype=torch.float64, device="cpu")]
        )

    def timesteps(self) -> Tensor:
        """DDPM steps in the order sampling visits them (n = 50: 999, 979, ..., 19), int64."""
        return self._timesteps.clone()

    def sigmas(self) -> Tensor:
        """Sigma schedule, descending, float64 `[n + 1]`: sigma(t) for `timesteps()`, then 0."""
        return self._sigmas.clone()

    def _denoise(
        self,
        eps_model: EpsModel,
        guidance: Guidance | None,
        x: Tensor,
        sigma: float,
        cond: Conditions,
        null_cond: Conditions | None,
    ) -> Tensor:
        """D(x, sigma) = x - sigma_q * eps(x / sqrt(sigma_q^2 + 1), t_q), sigma_q the nearest grid sigma; clipped to
        `x0_range` when set."""
        timestep = int(self.schedule.sigma_to_t(torch.tensor(sigma, dtype=torch.float64)))
        sigma_q = float(self.schedule.sigmas_f64[timestep])
        eps = self._guided_eps(eps_model, guidance, x / math.sqrt(sigma_q**2 + 1), timestep, cond, null_cond)
        return self.clip_x0(x - sigma_q * eps)

    def _ancestral_split(self, sigma: float, sigma_next: float) -> tuple[float, float]:
        """(sigma_down, sigma_up) with sigma_down^2 + sigma_up^2 = sigma_next^2."""
        # sigma_up = min(sigma_next, eta * sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2))
        sigma_up = min(
            sigma_next, self.eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
        )
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        return sigma_down, sigma_up

    @torch.no_grad()
    def sample(
        self,
        eps_model: EpsModel,
        noise: Tensor,
        *,
        cond: Conditions,
        null_cond: Conditions | None = None,
        guidance: Guidance | None = None,
        generator: torch.Generator | None = None,
        callback: StepCallback | None = None,
    ) -> Tensor:
        """DPM++ 2S ancestral from standard normal noise `[B, ...]`; returns x0 `[B, ...]`."""
        sigmas = self._sigmas.tolist()
        x = noise * math.sqrt(1 + sigmas[0] ** 2)
        total = len(sigmas) - 1
        for i in self._progress(range(total), total):
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            sigma_down, sigma_up = self._ancestral_split(sigma, sigma_next)
            denoised = self._denoise(eps_model, guidance, x, sigma, cond, null_cond)
            if sigma_down == 0:
                # Euler step to sigma_down = 0: x + (x - D) / sigma * (sigma_down - sigma)
                x = x + (x - denoised) / sigma * (sigma_down - sigma)
            else:
                # midpoint in t = -log(sigma): h = t_next - t, s = t + h / 2
                t, t_next = -math.log(sigma), -math.log(sigma_down)
                h = t_next - t
                s = t + 0.5 * h
                # x2 = (sigma(s) / sigma) x - expm1(-h / 2) D(x, sigma)
                x2 = (math.exp(-s) / sigma) * x - math.expm1(-0.5 * h) * denoised
                denoised2 = self._denoise(eps_model, guidance, x2, math.exp(-s), cond, null_cond)
                # x = (sigma_down / sigma) x - expm1(-h) D(x2, sigma(s))
                x = (sigma_down / sigma) * x - math.expm1(-h) * denoised2
            if sigma_next > 0 and sigma_up > 0:
                x = x + self._randn_like(x, generator) * (self.s_noise * sigma_up)
            if callback is not None:
                callback(i, total, x, denoised)
        return x
