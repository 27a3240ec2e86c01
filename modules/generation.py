"""The generation API of every model: what a call asks for (`GenerationRequest`), what it returns
(`GenerationResult`), and what a model can do (`GenerationAbilities`, declared on its `VideoDenoiser`), in the
manner of diffusers' pipeline outputs.

`VideoDiffusionModule.generate` (and POS's `PosGenerator.generate`) take prompts and pixels; the denoiser works on
what the text encoder and the first stage make of them, the same request in latents (`LatentRequest`) and result
(`GeneratedLatents`). A request is checked against the denoiser's abilities before any work, so what a model cannot
do fails in one line naming the option and the model.

Batching: video b of a request draws every random number it uses (initial noise, ancestral noise, ART-V's reference
augmentation) from its own generator `generators[b]` (`modules/diffusion/noise.py`), so a video made in a batch
equals the video made alone with the same seed (up to floating-point reassociation).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from modules.diffusion.noise import Generators


@dataclass(frozen=True)
class GenerationAbilities:
    """What a denoiser's generation can do beyond text-to-video, declared on its class (`VideoDenoiser.abilities`).

    Args:
        model_name: how refusals name the model ("SCVideo").
        first_frame: can start from a given first frame (text+image-to-video).
        multi_prompt: can make one long video from several prompts in order (`frames_per_prompt` frames each).
        masks: returns a mask per frame (ART-V's masked-diffusion M) besides the latents.
        instead: what a refusal suggests for the abilities the model lacks ("use model=artv").
    """

    model_name: str
    first_frame: bool = False
    multi_prompt: bool = False
    masks: bool = False
    instead: str = "use a model that declares it"

    def refusal(self, *, first_frame: bool, multi_prompt: bool, masks: bool) -> str | None:
        """The one-line reason this model cannot serve a request asking for these options; None when it can."""
        if first_frame and not self.first_frame:
            return (
                f"first_frame: {self.model_name} cannot start from a given first frame (text-to-video only); "
                f"{self.instead} <first_frame>"
            )
        if multi_prompt and not self.multi_prompt:
            return (
                f"multi_prompt: {self.model_name} cannot make one video from several prompts; {self.instead} "
                "<multi_prompt>"
            )
        if masks and not self.masks:
            return f"save_mask: {self.model_name} has no masks to return; {self.instead} <save_mask>"
        return None

    def check(self, *, first_frame: bool = False, multi_prompt: bool = False, masks: bool = False) -> None:
        """Raise ValueError with `refusal`'s line when the model cannot serve these options."""
        reason = self.refusal(first_frame=first_frame, multi_prompt=multi_prompt, masks=masks)
        if reason is not None:
            raise ValueError(reason)

    def check_request(self, request: GenerationRequest) -> None:
        """Refuse a request asking for what the model cannot do, before any work."""
        self.check(
            first_frame=request.first_frame is not None,
            multi_prompt=request.multi_prompt,
            masks=request.return_masks,
        )


@dataclass(frozen=True)
class GenerationRequest:
    """B videos of `height x width` pixels.

    Args:
        prompts: one per video (B = len(prompts)); with `frames_per_prompt`, the prompts of one multi-prompt video in
            order, which every video of the batch runs through (B = the number of generators, 1 without).
        height, width: pixels; multiples of the first stage's downsampling factor.
        num_frames: frames per video (single-prompt requests).
        frames_per_prompt: frames per prompt of a multi-prompt request (ART-V supplementary section 4: 16).
        generators: one per video: video b draws all its noise from `generators[b]`, so it is the same video in a
            batch as alone; None: the global RNG.
        first_frame: pixels `[B, 3, H, W]` in [-1, 1] that the videos start from (text+image-to-video).
        initial_noise: the sampler's starting noise in the denoiser's layout (`LatentRequest`), instead of a draw.
        return_masks: also return the masks as a video (models whose abilities declare masks).
        return_latents: also return the latents `[B, C, T, h, w]`.
        progress: show progress bars.
    """

    prompts: Sequence[str]
    height: int
    width: int
    num_frames: int | None = None
    frames_per_prompt: int | None = None
    generators: Sequence[torch.Generator] | None = None
    first_frame: Tensor | None = None
    initial_noise: Tensor | None = None
    return_masks: bool = False
    return_latents: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.prompts, str) or not self.prompts:
            raise ValueError(
                f"GenerationRequest: prompts must be a non-empty list of strings, got {self.prompts!r}"
            )
        if (self.num_frames is None) == (self.frames_per_prompt is None):
            raise ValueError(
                "GenerationRequest: give num_frames (one prompt per video) or frames_per_prompt (multi-prompt), "
                f"exactly one; got num_frames={self.num_frames}, frames_per_prompt={self.frames_per_prompt}"
            )
        if self.frames_per_video < 1 or (self.frames_per_prompt is not None and self.frames_per_prompt < 1):
            raise ValueError(f"GenerationRequest: frames must be >= 1, got {self.frames_per_video} per video")
        if (
            self.generators is not None
            and not self.multi_prompt
            and len(self.generators) != len(self.prompts)
        ):
            raise ValueError(
                f"GenerationRequest: {len(self.generators)} generators for {len(self.prompts)} prompts; pass one "
                "generator per video"
            )
        expected = (self.batch_size, 3, self.height, self.width)
        if self.first_frame is not None and tuple(self.first_frame.shape) != expected:
            raise ValueError(
                f"GenerationRequest: first_frame must be [B, 3, H, W] = {list(expected)}, got "
                f"{list(self.first_frame.shape)}"
            )

    @property
    def multi_prompt(self) -> bool:
        return self.frames_per_prompt is not None

    @property
    def batch_size(self) -> int:
        """B, the number of videos."""
        if not self.multi_prompt:
            return len(self.prompts)
        return 1 if self.generators is None else len(self.generators)

    @property
    def frames_per_video(self) -> int:
        """T: `num_frames`, or the prompts times `frames_per_prompt` of a multi-prompt request."""
        if self.frames_per_prompt is not None:
            return len(self.prompts) * self.frames_per_prompt
        return int(self.num_frames)

    def prompt_grid(self) -> list[list[str]]:
        """The prompts of each video, B rows of S segments (S = 1 unless multi-prompt); segment s of every video
        conditions its frames s * T / S .. (s + 1) * T / S - 1."""
        if self.multi_prompt:
            return [list(self.prompts) for _ in range(self.batch_size)]
        return [[prompt] for prompt in self.prompts]


@dataclass(frozen=True)
class LatentRequest:
    """A `GenerationRequest` in the denoiser's terms.

    Args:
        texts: per prompt segment, the text embedding of every video `[B, L, D]` (POS's hybrid pair: `[B, 2, L, D]`);
            one entry unless multi-prompt. Segment s conditions frames s * T / S .. (s + 1) * T / S - 1.
        null_text: the empty-prompt embedding `[1, L, D]` (hybrid pair `[1, 2, L, D]`).
        num_frames: T, frames per video (a multiple of the number of segments).
        latent_size: (h, w) of the latents.
        generators: one per video (or one, or None), as in `GenerationRequest`.
        first_frame: clean latent `[B, C, h, w]` that the videos start from.
        initial_noise: the sampler's starting noise instead of a draw, in the VP convention of a standard normal
            (each sampler scales it itself), in the denoiser's layout (SCVideo: the whole clip `[B, C, T, h, w]`;
            ART-V: per frame `[B, C, T0, h, w]`, T0 <= T).
        progress: show progress bars.
    """

    texts: Sequence[Tensor]
    null_text: Tensor
    num_frames: int
    latent_size: tuple[int, int]
    generators: Generators = None
    first_frame: Tensor | None = None
    initial_noise: Tensor | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.texts or any(text.shape != self.texts[0].shape for text in self.texts):
            shapes = [list(text.shape) for text in self.texts]
            raise ValueError(
                f"LatentRequest: texts must be one or more embeddings of one shape, got {shapes}"
            )
        if self.num_frames < 1 or self.num_frames % len(self.texts):
            raise ValueError(
                f"LatentRequest: num_frames must be a positive multiple of the {len(self.texts)} prompt segments, "
                f"got {self.num_frames}"
            )

    @property
    def batch_size(self) -> int:
        return self.texts[0].shape[0]

    @property
    def frames_per_prompt(self) -> int:
        return self.num_frames // len(self.texts)


@dataclass(frozen=True)
class GeneratedLatents:
    """What a denoiser generates: latents `[B, C, T, h, w]`, and masks `[B, 1, T, h, w]` in [0, 1] from models whose
    abilities declare masks (None otherwise)."""

    latents: Tensor
    masks: Tensor | None = None


@dataclass(frozen=True)
class GenerationResult:
    """What a generation call returns: the videos `[B, T, 3, H, W]` in [-1, 1]; with `return_masks` the masks as a
    grey video `[B, T, 3, H, W]` in [-1, 1] (white = copied from the reference frame); with `return_latents` the
    latents `[B, C, T, h, w]`. The others are None."""

    video: Tensor
    masks: Tensor | None = None
    latents: Tensor | None = None


def seeded_generators(seeds: Sequence[int], device: torch.device | str) -> list[torch.Generator]:
    """One generator per video, on `device`, seeded with that video's seed."""
    return [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]


def batches(items: Sequence, batch_size: int) -> Iterator[Sequence]:
    """`items` in consecutive batches of `batch_size` (the last may be smaller)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size} <batch_size>")
    for start in range(0, len(items), batch_size):
        yield items[start : start + batch_size]
