"""From a retrieved clip's latents to a model's initial noise, by deterministic DDIM inversion (eta 0).

What the initial noise is. Every sampler takes `noise` that stands for the state at its first timestep
t0 = `sampler.timesteps()[0]` in the variance-preserving (VP) convention x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps,
which a standard normal approximates:
- DDIM starts from x_T = noise (t0 = 981 for 50 steps);
- DPM++ 2S ancestral multiplies noise by sqrt(1 + sigma_0^2) = 1 / sqrt(a_t0) (t0 = 999): x_VP / sqrt(a_t0) =
  x0 + sigma_0 eps, which is its sigma-parametrised state at sigma_0.
So an inverted latent handed to either sampler must be the VP state at that sampler's own t0. DDIM inversion
with the sampler's number of steps S ends at the top of the DDIM grid (981 for S = 50, 951 for S = 20), which is
DPM++'s t0 = 999 only by accident; the missing stretch is bridged by one more deterministic DDIM move from the
grid's top to t0 (`ddim_transfer`), after which the result is correct for DPM++'s sqrt(1 + sigma_0^2) scaling.
DPM++ 2S *ancestral* then adds fresh noise at every step, so unlike DDIM it does not reproduce the retrieved clip
from its inversion; the inverted start still carries the clip's low frequencies (layout, colour).

Conditions and guidance (our interpretation; the POS abstract says only "invert ... with the diffusion model"):
the inversion is conditioned on the prompt, with the conditions the model's generation uses for that latent,
and by default uses the conditional prediction alone (classifier-free guidance > 1 makes DDIM inversion diverge,
as null-text inversion observed); `pos.approximator.inversion_guidance=true` inverts with the sampling guidance.

Per model (each denoiser declares its strategy, `VideoDenoiser.inversion_strategy`, so the shared code has no
model switches):
- SCVideo (`WholeClipInversion`, here): the clip is generated jointly, so the whole latent clip `[B, C, T, h, w]` is
  inverted under {"text"}.
- ART-V (`PerFrameInversion`, modules/artv/frame_inversion.py, which says how): frame by frame, frame 0 under the
  conditions of text-to-video's first frame, later frames (`all_frames`) and multi-prompt videos as ART-V generates
  them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from modules.diffusion.guidance import Conditions, EpsModel, Guidance, NoGuidance
from modules.diffusion.noise import Generators, standard_normal
from modules.diffusion.noise_schedule import NoiseSchedule
from modules.diffusion.samplers.base import Sampler
from modules.diffusion.samplers.ddim import DDIMSampler


@dataclass(frozen=True)
class InversionSettings:
    """How to invert.

    Args:
        fixed_point_iterations: extra eps evaluations per DDIM inversion step that refine x_t towards the exact
            inverse (`DDIMSampler.invert`); 0 is the standard inversion.
        use_guidance: invert with the sampling guidance instead of the conditional prediction alone.
    """

    fixed_point_iterations: int = 0
    use_guidance: bool = False


def sampler_start_timestep(sampler: Sampler) -> int:
    """t0: the first DDPM step the sampler visits (`sampler.timesteps()[0]`)."""
    timesteps = getattr(sampler, "timesteps", None)
    if timesteps is None:
        raise TypeError(
            f"POS needs the sampler's timesteps (`timesteps()`) to express an inverted latent in its convention; "
            f"{type(sampler).__name__} has none"
        )
    return int(timesteps()[0])


def _eps(
    eps_model: EpsModel,
    guidance: Guidance | None,
    x: Tensor,
    timestep: int,
    cond: Conditions,
    null_cond: Conditions | None,
) -> Tensor:
    t = torch.full((x.shape[0],), timestep, dtype=torch.int64, device=x.device)
    return (guidance or NoGuidance())(eps_model, x, t, cond, null_cond)


def ddim_transfer(
    eps_model: EpsModel,
    x: Tensor,
    *,
    schedule: NoiseSchedule,
    t_from: int,
    t_to: int,
    cond: Conditions,
    null_cond: Conditions | None = None,
    guidance: Guidance | None = None,
) -> Tensor:
    """One deterministic DDIM move of the VP state x `[B, ...]` from DDPM step t_from to t_to (either direction).

    eps is evaluated where x is, (x, t_from):
        x0 = (x - sqrt(1 - a_from) eps) / sqrt(a_from);   x_to = sqrt(a_to) x0 + sqrt(1 - a_to) eps
    """
    alphas = schedule.alphas_cumprod_f64
    a_from, a_to = float(alphas[t_from]), float(alphas[t_to])
    eps = _eps(eps_model, guidance, x, t_from, cond, null_cond)
    x0 = (x - math.sqrt(1 - a_from) * eps) / math.sqrt(a_from)
    return math.sqrt(a_to) * x0 + math.sqrt(1 - a_to) * eps


def invert_to_sampler_start(
    eps_model: EpsModel,
    latents: Tensor,
    *,
    sampler: Sampler,
    cond: Conditions,
    null_cond: Conditions | None,
    guidance: Guidance | None,
    settings: InversionSettings,
) -> Tensor:
    """Clean latents `[B, ...]` -> the VP state `[B, ...]` at the sampler's first timestep.

    DDIM inversion with the sampler's number of steps (eta 0), then a bridging DDIM move to t0 when the DDIM grid's
    top timestep differs from it (DPM++: 999).
    """
    inverter = DDIMSampler(
        sampler.schedule,
        num_steps=sampler.num_steps,
        eta=0.0,
        progress=False,
        spacing=getattr(sampler, "spacing", "uniform"),  # a trailing DDIM inverts over its own grid
    )
    used_guidance = guidance if settings.use_guidance else None
    x = inverter.invert(
        eps_model,
        latents,
        cond=cond,
        null_cond=null_cond,
        guidance=used_guidance,
        fixed_point_iterations=settings.fixed_point_iterations,
    )
    grid_top, start = int(inverter.timesteps()[0]), sampler_start_timestep(sampler)
    if grid_top != start:
        x = ddim_transfer(
            eps_model,
            x,
            schedule=sampler.schedule,
            t_from=grid_top,
            t_to=start,
            cond=cond,
            null_cond=null_cond,
            guidance=used_guidance,
        )
    return x


class InversionStrategy(ABC):
    """How one model's `generate` lays out its initial noise, and how a clip is inverted into that layout."""

    @abstractmethod
    def invert(
        self,
        net: nn.Module,
        latents: Tensor,
        texts: Sequence[Tensor],
        null_text: Tensor,
        *,
        sampler: Sampler,
        guidance: Guidance | None,
        settings: InversionSettings,
    ) -> Tensor:
        """Clean latent clips `[B, C, T, h, w]` -> inverted initial noise in the model's `initial_noise` layout.

        texts: per prompt segment `[B, L, D]` (or hybrid pairs), as `LatentRequest.texts`: segment s covers frames
        s * T / S .. (s + 1) * T / S - 1 of the clips."""

    @abstractmethod
    def fresh_noise(self, net: nn.Module, like: Tensor, generators: Generators) -> Tensor:
        """Standard normal of `like`'s shape, drawn exactly as the model's `generate` draws its own noise (same
        generator calls, so lam = 1 reproduces plain sampling bit for bit)."""


class WholeClipInversion(InversionStrategy):
    """SCVideo: the whole latent clip `[B, C, T, h, w]` is the initial noise; conditions {"text"}, one prompt."""

    def invert(
        self,
        net: nn.Module,
        latents: Tensor,
        texts: Sequence[Tensor],
        null_text: Tensor,
        *,
        sampler: Sampler,
        guidance: Guidance | None,
        settings: InversionSettings,
    ) -> Tensor:
        if len(texts) != 1:
            raise ValueError(
                f"POS whole-clip inversion: one prompt per clip, got {len(texts)} prompt segments (multi-prompt "
                "videos are inverted frame by frame)"
            )
        return invert_to_sampler_start(
            net,
            latents,
            sampler=sampler,
            cond={"text": texts[0]},
            null_cond={"text": null_text},
            guidance=guidance,
            settings=settings,
        )

    def fresh_noise(self, net: nn.Module, like: Tensor, generators: Generators) -> Tensor:
        # as SCVideoDenoiser.generate: one draw of the whole clip per video
        reference = next(net.parameters())
        return standard_normal(like.shape, generators, device=reference.device, dtype=reference.dtype)
