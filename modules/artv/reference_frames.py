"""The ART-V conditions built from previous frames: which frames, their noise augmentation, and how the
"reference" condition tensor is laid out.

Our interpretation (not stated by the paper; docs/ARCHITECTURE.md, "ART-V: what the paper does not state"):

- Training example: a target frame k drawn uniformly from 1..T-1 of a clip sampled at 8 fps (supplementary
  Table 4), its two predecessors k-2 and k-1 as reference frames (k-2 clamped at frame 0, so k = 1 sees frame 0
  twice, exactly as the second generated frame does at inference), and the clip's first frame as the global
  anchor (in text+image-to-video, the first frame is the anchor). Frame 0 itself is never a target: at inference
  it is either given or generated with reference and anchor dropped, which condition dropout trains.
- Noise augmentation of the adapter input (to reduce drift when the references are generated frames):
  reference + sigma * N(0, I), sigma ~ U(0, reference_noise_level_train) per sample in training and
  sigma = reference_noise_level_inference at inference and validation. Levels are in latent units.
- The masked composition x0_hat = M * z_ref + (1 - M) * x0_dyn needs the previous frame's *clean* latent,
  while the adapter reads the *noise-augmented* pair. Both travel in the one condition "reference" so that
  dropping the reference (training dropout, the eq. (1) null term, the first frame of text-to-video) removes both
  together: `[B, 3C, h, w]` = [augmented frame k-2, augmented frame k-1, clean frame k-1] (C latent channels;
  the first 2C = 8 channels are the adapter input, Table 1 cin 8). Its null value is zeros, so with the reference
  dropped both adapters see zeros and there is no frame to copy: `ARTVDenoiser` (`mask_requires_reference`) then
  sets M = 0 and x0_hat = x0_dyn. The null terms of eq. (1) and the first frame of text-to-video are such
  predictions; `has_reference` tells them apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor

from modules.diffusion.noise import Generators, standard_normal

NUM_REFERENCE_FRAMES = 2


# the frames of one training example, in the order `draw_training_frame_indices` lists them
ANCHOR, EARLIER_REFERENCE, PREVIOUS_FRAME, TARGET = range(4)


@dataclass
class TrainingFrames:
    """Frames of one training example, each `[B, C, h, w]`."""

    target: Tensor
    earlier_reference: Tensor
    previous_frame: Tensor
    anchor: Tensor

    @classmethod
    def from_latents(cls, latents: Tensor) -> TrainingFrames:
        """Latents of the frames `draw_training_frame_indices` lists, `[B, C, 4, h, w]`."""
        return cls(
            target=latents[:, :, TARGET],
            earlier_reference=latents[:, :, EARLIER_REFERENCE],
            previous_frame=latents[:, :, PREVIOUS_FRAME],
            anchor=latents[:, :, ANCHOR],
        )


def draw_training_frame_indices(
    batch: int,
    num_frames: int,
    generator: torch.Generator | None = None,
    first_step_probability: float | None = None,
) -> Tensor:
    """Pick per clip a target k in 1..T-1, references k-2 (clamped at 0) and k-1, and frame 0 as anchor.

    Returns int64 indices `[B, 4]` in the order (anchor, earlier reference, previous frame, target), on the CPU,
    drawn before any frame is encoded so that only these frames are (`VideoDiffusionModule.clip_latents`).
    generator: CPU generator for k (None: global RNG). first_step_probability: None draws k uniformly from 1..T-1;
    p draws k = 1 with probability p and otherwise uniformly from 2..T-1 (T >= 3). k = 1 is the one step whose
    references (frame 0 twice) show no motion, so its motion comes from the text alone; uniform k gives it
    1 / (T - 1) of the examples.
    """
    if num_frames < 2:
        raise ValueError(
            f"ART-V training_example: clips need at least 2 frames (a reference and a target), got T={num_frames} "
            "<data.num_frames>"
        )
    if first_step_probability is None:
        target_index = torch.randint(1, num_frames, (batch,), generator=generator)
    else:
        if not 0.0 <= first_step_probability <= 1.0 or num_frames < 3:
            raise ValueError(
                f"ART-V training_example: first_step_probability must be in [0, 1] with T >= 3 frames, got "
                f"{first_step_probability} with T={num_frames} <model.net.first_step_probability>"
            )
        first_step = torch.rand(batch, generator=generator) < first_step_probability
        later = torch.randint(2, num_frames, (batch,), generator=generator)
        target_index = torch.where(first_step, torch.ones_like(later), later)
    anchor = torch.zeros_like(target_index)
    return torch.stack([anchor, (target_index - 2).clamp(min=0), target_index - 1, target_index], dim=1)


def gather_frames(clips: Tensor, frame_indices: Tensor) -> Tensor:
    """Per-clip frames: clips `[B, C, T, h, w]`, indices `[B, F]` -> `[B, C, F, h, w]`."""
    samples = torch.arange(clips.shape[0], device=clips.device)[:, None]
    picked = clips[samples, :, frame_indices.to(clips.device)]  # advanced indices first: [B, F, C, h, w]
    return rearrange(picked, "b f c h w -> b c f h w")


def augment_with_noise(frames: Tensor, levels: Tensor, generator: Generators = None) -> Tensor:
    """frames + sigma * N(0, I) with one sigma per sample.

    frames: `[B, ...]`; levels: sigma `[B]` (>= 0). generator: one, one per sample (`modules/diffusion/noise.py`), or
    None (global RNG).
    """
    noise = standard_normal(frames.shape, generator, device=frames.device, dtype=frames.dtype)
    return frames + levels.to(frames).reshape(-1, *([1] * (frames.ndim - 1))) * noise


def build_reference(
    earlier_reference: Tensor,
    previous_frame: Tensor,
    levels: Tensor,
    generator: Generators = None,
) -> Tensor:
    """Noise-augment the pair (k-2, k-1) with per-sample levels `[B]` and pack it with the clean frame k-1.

    earlier_reference, previous_frame: clean `[B, C, h, w]` -> `[B, 3C, h, w]`.
    """
    if earlier_reference.shape != previous_frame.shape:
        raise ValueError(
            "build_reference: both reference frames must be [B, C, h, w] of one shape, got "
            f"{tuple(earlier_reference.shape)} and {tuple(previous_frame.shape)}"
        )
    pair = torch.cat([earlier_reference, previous_frame], dim=1)
    return torch.cat([augment_with_noise(pair, levels, generator), previous_frame], dim=1)


def has_reference(reference: Tensor) -> Tensor:
    """Which samples carry a reference: bool `[B]`, False where the "reference" condition `[B, 3C, h, w]` is its
    null value (all zeros). A real reference is never exactly zero: its clean frame is a latent of an image."""
    return reference.flatten(1).ne(0).any(dim=1)


def unpack_reference(reference: Tensor, latent_channels: int) -> tuple[Tensor, Tensor]:
    """Split the "reference" condition `[B, 3C, h, w]` into the adapter input `[B, 2C, h, w]` and z_ref
    `[B, C, h, w]` (the clean previous frame)."""
    expected = (NUM_REFERENCE_FRAMES + 1) * latent_channels
    if reference.ndim != 4 or reference.shape[1] != expected:
        raise ValueError(
            f"ART-V: cond['reference'] must be [B, {expected}, h, w] (two noise-augmented reference latents and the "
            f"clean previous frame, {latent_channels} channels each), got {tuple(reference.shape)}"
        )
    split = NUM_REFERENCE_FRAMES * latent_channels
    return reference[:, :split], reference[:, split:]
