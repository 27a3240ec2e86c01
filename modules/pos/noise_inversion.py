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

Per model (a registry of strategies keyed by denoiser class, so the shared code has no model switches):
- SCVideo (`WholeClipInversion`): the clip is generated jointly, so the whole latent clip `[B, C, T, h, w]` is
  inverted under {"text"}.
- ART-V (`PerFrameInversion`): frames are generated one at a time. Frame 0 is inverted under the conditions of
  text-to-video's first frame (reference and anchor null). With `all_frames`, frame k >= 1 is inverted as ART-V
  would generate it after the retrieved clip's own frames: references k-2 (clamped) and k-1 noise-augmented at the
  inference level (a fixed seed, so the inversion is deterministic), anchor frame 0. At sampling time later frames
  are conditioned on the *generated* frames instead; their inverted noise is an approximation. Multi-prompt videos
  (`invert_segments`): the retrieved clips of the prompts, one after another, are inverted as one long video under
  the multi-prompt rule of generation: the frames of prompt p read prompt p's text and, for p > 0, the last frame of
  prompt p - 1 as anchor; the references run on across prompt boundaries.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from modules.artv.artv_denoiser import ARTVDenoiser
from modules.artv.autoregressive import text_only_guidance
from modules.artv.reference_frames import build_reference
from modules.diffusion.guidance import Conditions, EpsModel, Guidance, NoGuidance
from modules.diffusion.noise_schedule import NoiseSchedule
from modules.diffusion.samplers.base import Sampler
from modules.diffusion.samplers.ddim import DDIMSampler
from modules.scvideo.scvideo_denoiser import SCVideoDenoiser

# seed of the reference-frame noise augmentation used while inverting ART-V frames k >= 1
REFERENCE_NOISE_SEED = 0


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
    inverter = DDIMSampler(sampler.schedule, num_steps=sampler.num_steps, eta=0.0, progress=False)
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
        text: Tensor,
        null_text: Tensor,
        *,
        sampler: Sampler,
        guidance: Guidance | None,
        settings: InversionSettings,
    ) -> Tensor:
        """Clean latent clips `[B, C, T, h, w]` -> inverted initial noise in the model's `initial_noise` layout."""

    @abstractmethod
    def fresh_noise(self, net: nn.Module, like: Tensor, generator: torch.Generator | None) -> Tensor:
        """Standard normal of `like`'s shape, drawn exactly as the model's `generate` draws its own noise (same
        generator calls, so lam = 1 reproduces plain sampling bit for bit)."""


class WholeClipInversion(InversionStrategy):
    """SCVideo: the whole latent clip `[B, C, T, h, w]` is the initial noise; conditions {"text"}."""

    def invert(
        self,
        net: nn.Module,
        latents: Tensor,
        text: Tensor,
        null_text: Tensor,
        *,
        sampler: Sampler,
        guidance: Guidance | None,
        settings: InversionSettings,
    ) -> Tensor:
        return invert_to_sampler_start(
            net,
            latents,
            sampler=sampler,
            cond={"text": text},
            null_cond={"text": null_text},
            guidance=guidance,
            settings=settings,
        )

    def fresh_noise(self, net: nn.Module, like: Tensor, generator: torch.Generator | None) -> Tensor:
        # as SCVideoDenoiser.generate: drawn on the generator's device, then moved to the model's
        reference = next(net.parameters())
        device = generator.device if generator is not None else reference.device
        return torch.randn(like.shape, generator=generator, device=device).to(
            reference.device, reference.dtype
        )


class PerFrameInversion(InversionStrategy):
    """ART-V: the initial noise is per frame, `[B, C, T0, h, w]`: T0 = 1 (frame 0 only) or T0 = T (`all_frames`).

    Args:
        all_frames: also invert frames k >= 1 (`pos.approximator.all_frames`).
    """

    def __init__(self, all_frames: bool = False) -> None:
        self.all_frames = all_frames

    def invert(
        self,
        net: nn.Module,
        latents: Tensor,
        text: Tensor,
        null_text: Tensor,
        *,
        sampler: Sampler,
        guidance: Guidance | None,
        settings: InversionSettings,
    ) -> Tensor:
        return self.invert_segments(
            net, latents, [text], null_text, sampler=sampler, guidance=guidance, settings=settings
        )

    def invert_segments(
        self,
        net: nn.Module,
        latents: Tensor,
        texts: list[Tensor],
        null_text: Tensor,
        *,
        sampler: Sampler,
        guidance: Guidance | None,
        settings: InversionSettings,
    ) -> Tensor:
        """A multi-prompt video: clean latents `[B, C, P * F, h, w]` (prompt p's clip in frames p*F..(p+1)*F-1),
        texts: P of `[B, L, D]` (or hybrid pairs) -> `[B, C, T0, h, w]` with T0 = P * F (`all_frames`) or 1."""
        frames = latents.unbind(dim=2)
        if not texts or len(frames) % len(texts):
            raise ValueError(
                f"POS inversion: {len(frames)} frames cannot be split into {len(texts)} equal prompt segments"
            )
        frames_per_prompt = len(frames) // len(texts)
        count = len(frames) if self.all_frames else 1
        reference_noise = torch.Generator(device=latents.device).manual_seed(REFERENCE_NOISE_SEED)
        levels = torch.full((latents.shape[0],), net.reference_noise_level_inference)
        inverted = []
        for index in range(count):
            segment = index // frames_per_prompt
            text = texts[segment]
            if index == 0:
                zeros = torch.zeros_like(frames[0])
                cond = {"text": text, "reference": torch.cat([zeros, zeros, zeros], dim=1), "anchor": zeros}
                frame_guidance = text_only_guidance(guidance)
            else:
                reference = build_reference(
                    frames[max(index - 2, 0)], frames[index - 1], levels, reference_noise
                )
                # the anchor of prompt 0 is frame 0; of prompt p > 0, the last frame of prompt p - 1
                anchor = frames[0] if segment == 0 else frames[segment * frames_per_prompt - 1]
                cond = {"text": text, "reference": reference, "anchor": anchor}
                frame_guidance = guidance
            inverted.append(
                invert_to_sampler_start(
                    net,
                    frames[index],
                    sampler=sampler,
                    cond=cond,
                    null_cond=net.null_condition(cond, null_text),
                    guidance=frame_guidance,
                    settings=settings,
                )
            )
        return torch.stack(inverted, dim=2)

    def fresh_noise(self, net: nn.Module, like: Tensor, generator: torch.Generator | None) -> Tensor:
        # as ART-V's FrameGenerator: one draw per frame on the networks' device and dtype, frame 0 first
        parameter = next(net.parameters())
        frame_shape = (like.shape[0], like.shape[1], *like.shape[3:])
        draws = [
            torch.randn(frame_shape, generator=generator, device=parameter.device, dtype=parameter.dtype)
            for _ in range(like.shape[2])
        ]
        return rearrange(torch.stack(draws), "t b c h w -> b c t h w")


def inversion_strategy(net: nn.Module, *, all_frames: bool = False) -> InversionStrategy:
    """The strategy registered for the denoiser's class (or a base class of it)."""
    strategies = {SCVideoDenoiser: WholeClipInversion, ARTVDenoiser: lambda: PerFrameInversion(all_frames)}
    for cls in type(net).__mro__:
        if cls in strategies:
            return strategies[cls]()
    raise TypeError(
        f"POS has no inversion strategy for {type(net).__name__}; register one in modules/pos/noise_inversion.py "
        f"(known: {[cls.__name__ for cls in strategies]})"
    )
