"""What the k-diffusion-style samplers share: sgm's discrete DDPM sigma grid, its denoiser, ancestral noise.

sgm runs DPM++ 2S ancestral, DPM++ 2M and Euler ancestral the same way (`LegacyDDPMDiscretization` and a
`DiscreteDenoiser` with `EpsScaling`). Facts matched (tests/fixtures/reference/ORIGINAL_BEHAVIOUR.md,
"DPM++ 2S ancestral"):
- timesteps: linspace(N - 1, 0, n, endpoint=False) cast to int, reversed; sigmas descending from those
  timesteps, with 0 appended; the initial noise is multiplied by sqrt(1 + sigma_0^2).
- denoiser: sigma snapped to the nearest of the N grid sigmas for both the input scaling and the timestep,
  D(x, sigma) = x - sigma * eps(x / sqrt(sigma^2 + 1), t(sigma)).
- ancestral split of a step sigma -> sigma_next into a deterministic move to sigma_down and fresh noise sigma_up:
  sigma_up = min(sigma_next, eta * sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)),
  sigma_down = sqrt(sigma_next^2 - sigma_up^2).

The state x here is the sigma-parametrised (variance-exploding) one, x = x0 + sigma * eps = x_VP / sqrt(a_t).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from modules.diffusion.guidance import Conditions, EpsModel, Guidance
from modules.diffusion.noise import Generators
from modules.diffusion.noise_schedule import NoiseSchedule
from modules.diffusion.samplers.base import Sampler


def euler_step(x: Tensor, denoised: Tensor, sigma: float, sigma_to: float) -> Tensor:
    """One Euler step of the probability-flow ODE dx/dsigma = (x - D) / sigma from sigma to sigma_to; x, denoised
    `[B, ...]`."""
    # x + (x - D) / sigma * (sigma_to - sigma)
    return x + (x - denoised) / sigma * (sigma_to - sigma)


class DiscreteSigmaSampler(Sampler):
    """Base of the samplers on sgm's discrete DDPM sigma grid: the grid, the initial scaling, the denoiser.

    Args:
        schedule: the model's NoiseSchedule (runtime argument; the configs are `_partial_`).
        num_steps: n, number of steps; the grid has n sigmas plus a final 0.
        progress: show a tqdm bar.
        x0_range: clip the denoised estimate to this range (pixel-space models); None = sgm.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: int,
        progress: bool = True,
        x0_range: tuple[float, float] | None = None,
    ):
        super().__init__(schedule, num_steps, progress, x0_range)
        if num_steps > schedule.num_timesteps:
            raise ValueError(
                f"{type(self).__name__}: num_steps={num_steps} exceeds the {schedule.num_timesteps} "
                "DDPM steps <sampler.num_steps>"
            )
        max_step = schedule.num_timesteps - 1
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

    def _initial_state(self, noise: Tensor) -> Tensor:
        """Standard normal noise `[B, ...]` -> the state at sigma_0: noise * sqrt(1 + sigma_0^2), as sgm scales it."""
        return noise * math.sqrt(1 + float(self._sigmas[0]) ** 2)

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


class AncestralSigmaSampler(DiscreteSigmaSampler):
    """Base of the ancestral samplers: each step moves deterministically to sigma_down, then adds fresh noise
    sigma_up, with sigma_down^2 + sigma_up^2 = sigma_next^2 (sgm's `AncestralSampler`).

    Args:
        schedule: the model's NoiseSchedule (runtime argument; the configs are `_partial_`).
        num_steps: n, number of steps.
        eta: ancestral noise amount (sgm default 1; 0 gives the deterministic solver).
        s_noise: scale of the added noise (sgm default 1).
        progress: show a tqdm bar.
        x0_range: clip the denoised estimate to this range (pixel-space models); None = sgm.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        num_steps: int,
        eta: float = 1.0,
        s_noise: float = 1.0,
        progress: bool = True,
        x0_range: tuple[float, float] | None = None,
    ):
        super().__init__(schedule, num_steps, progress, x0_range)
        if eta < 0:
            raise ValueError(f"{type(self).__name__}: eta must be >= 0, got {eta} <sampler.eta>")
        self.eta = eta
        self.s_noise = s_noise

    def _ancestral_split(self, sigma: float, sigma_next: float) -> tuple[float, float]:
        """(sigma_down, sigma_up) with sigma_down^2 + sigma_up^2 = sigma_next^2."""
        # sigma_up = min(sigma_next, eta * sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2))
        sigma_up = min(
            sigma_next, self.eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
        )
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        return sigma_down, sigma_up

    def _add_noise(self, x: Tensor, sigma_next: float, sigma_up: float, generator: Generators) -> Tensor:
        """x + s_noise * sigma_up * z, z ~ N(0, I) from generator; no draw at the last step (sigma_next = 0) or
        when sigma_up = 0 (eta = 0)."""
        if sigma_next > 0 and sigma_up > 0:
            x = x + self._randn_like(x, generator) * (self.s_noise * sigma_up)
        return x
