"""ART-V's POS inversion (`ARTVDenoiser.inversion_strategy`): a retrieved clip inverted frame by frame into the
per-frame initial noise `[B, C, T0, h, w]` that ART-V's generation reads (modules/pos/noise_inversion.py explains the
inversion and the sampler conventions).

Frame 0 is inverted under the conditions of text-to-video's first frame (reference and anchor null). With
`all_frames`, frame k >= 1 is inverted as ART-V would generate it after the retrieved clip's own frames: references
k-2 (clamped) and k-1 noise-augmented at the inference level (a fixed seed, so the inversion is deterministic),
anchor frame 0. At sampling time later frames are conditioned on the *generated* frames instead; their inverted noise
is an approximation. Multi-prompt videos: the retrieved clips of the prompts, one after another, are inverted as one
long video under the multi-prompt rule of generation: the frames of prompt p read prompt p's text and, for p > 0, the
last frame of prompt p - 1 as anchor; the references run on across prompt boundaries.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from modules.artv.autoregressive import text_only_guidance
from modules.artv.reference_frames import build_reference
from modules.diffusion.guidance import Guidance
from modules.diffusion.noise import Generators, standard_normal
from modules.diffusion.samplers.base import Sampler
from modules.pos.noise_inversion import InversionSettings, InversionStrategy, invert_to_sampler_start

# seed of the reference-frame noise augmentation used while inverting ART-V frames k >= 1
REFERENCE_NOISE_SEED = 0


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
        texts: Sequence[Tensor],
        null_text: Tensor,
        *,
        sampler: Sampler,
        guidance: Guidance | None,
        settings: InversionSettings,
    ) -> Tensor:
        """Clean latents `[B, C, S * F, h, w]` (prompt segment s's clip in frames s*F..(s+1)*F-1), texts: S of
        `[B, L, D]` (or hybrid pairs) -> `[B, C, T0, h, w]` with T0 = S * F (`all_frames`) or 1."""
        frames = latents.unbind(dim=2)
        if not texts or len(frames) % len(texts):
            raise ValueError(
                f"POS inversion: {len(frames)} frames cannot be split into {len(texts)} equal prompt segments"
            )
        frames_per_prompt = len(frames) // len(texts)
        count = len(frames) if self.all_frames else 1
        # one fixed-seed stream per clip: a clip's inversion does not depend on the others of its batch
        reference_noise = [
            torch.Generator(device=latents.device).manual_seed(REFERENCE_NOISE_SEED) for _ in latents
        ]
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

    def fresh_noise(self, net: nn.Module, like: Tensor, generators: Generators) -> Tensor:
        # as ART-V's FrameGenerator: one draw per frame on the networks' device and dtype, frame 0 first
        parameter = next(net.parameters())
        frame_shape = (like.shape[0], like.shape[1], *like.shape[3:])
        draws = [
            standard_normal(frame_shape, generators, device=parameter.device, dtype=parameter.dtype)
            for _ in range(like.shape[2])
        ]
        return rearrange(torch.stack(draws), "t b c h w -> b c t h w")
