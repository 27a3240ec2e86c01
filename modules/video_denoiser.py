"""The interface between a model-specific denoising network and the shared training/sampling code.

SCVideo and ART-V differ in what a training example is (a whole clip vs. one frame with references), in
which conditions exist (text only vs. text + reference frames + anchor frame) and in how a video is
generated (one joint denoising vs. frame by frame). Everything else (frozen first stage and text encoder,
noise schedule, eps-MSE loss, condition dropout, EMA, optimisation, logging) is shared by
`modules.training.video_diffusion_module.VideoDiffusionModule`, which only talks to a `VideoDenoiser`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from modules.diffusion.guidance import Guidance
from modules.diffusion.samplers.base import Sampler
from modules.generation import GeneratedLatents, GenerationAbilities, LatentRequest

if TYPE_CHECKING:
    from modules.pos.noise_inversion import InversionStrategy

EpsModel = Callable[[Tensor, Tensor, dict[str, Tensor]], Tensor]


@dataclass
class TrainingExample:
    """What the denoiser is trained to produce from one batch.

    x0: clean latent target, `[B, C, T, h, w]` (SCVideo) or `[B, C, h, w]` (ART-V, one frame).
    cond: named conditions other than text (e.g. `reference`, `anchor`), batch first.
    """

    x0: Tensor
    cond: dict[str, Tensor]


class VideoDenoiser(nn.Module, ABC):
    """A denoising network plus the model-specific rules for training examples and generation.

    Subclasses set `condition_keys` (the names in `cond`, always including "text") and `abilities` (what their
    generation can do beyond text-to-video; shared code reads it, never the class), and implement the abstract
    methods. `forward(x_t, t, cond) -> eps` is the eps model the samplers drive.
    """

    condition_keys: tuple[str, ...] = ("text",)
    abilities: ClassVar[GenerationAbilities] = GenerationAbilities(model_name="this model")
    # whether `forward` also takes one DDPM step per frame, t `[B, T]` (the training option
    # `model.first_frame_lead_fraction` needs it)
    per_frame_steps: ClassVar[bool] = False

    @abstractmethod
    def forward(self, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """Predict the noise. x_t: latent of the training-example shape; t: int64 `[B]` (or `[B, T]`, one step per
        frame of x_t `[B, C, T, h, w]`, where `per_frame_steps`)."""

    def training_frame_indices(self, batch: int, num_frames: int) -> Tensor | None:
        """Which frames of each clip a training example reads, int64 `[B, F]`, drawn (with the current RNG) before
        any frame is encoded, so that only those are; None (the default) = all T frames."""
        return None

    @abstractmethod
    def training_example(self, latents: Tensor, frame_indices: Tensor | None = None) -> TrainingExample:
        """Turn clean latents into a target and its non-text conditions: the frames `frame_indices` (from
        `training_frame_indices`) lists, `[B, C, F, h, w]`, or whole clips `[B, C, T, h, w]` when it is None."""

    @abstractmethod
    def generate(self, sampler: Sampler, guidance: Guidance, request: LatentRequest) -> GeneratedLatents:
        """Generate the latent videos `[B, C, T, h, w]` of a request (text embeddings, size, per-video generators,
        optional first frame and initial noise; `modules/generation.py`) with the sampler and guidance. The request
        has been checked against `abilities`: it asks only for what the model declares."""

    def inversion_strategy(self, *, all_frames: bool) -> InversionStrategy | None:
        """How POS inverts a retrieved clip into this model's initial-noise layout (modules/pos/noise_inversion.py);
        None (the default): the model has no inversion, and POS retrieval (`sampler.init_noise=retrieval`) is
        refused. all_frames: invert every frame, not only the first (frame-by-frame models; `pos.approximator`)."""
        return None

    def null_condition(self, cond: dict[str, Tensor], null_text: Tensor) -> dict[str, Tensor]:
        """The value each condition takes when dropped: the empty-prompt embedding for text, zeros otherwise."""
        null = {key: torch.zeros_like(value[:1]) for key, value in cond.items() if key != "text"}
        null["text"] = null_text
        return null

    def configure_trainable(self) -> None:
        """Set `requires_grad` on the paper's trainable set; the default trains everything."""
        self.requires_grad_(True)

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The parameters the optimizer and the EMA see, after `configure_trainable`."""
        return [(name, p) for name, p in self.named_parameters() if p.requires_grad]

    def frozen_weight_files(self) -> tuple[str, ...]:
        """The files every frozen parameter (`requires_grad` False) was loaded from when this net was built; () when
        some keep a random init. Checkpoints leave frozen parameters out only when they come from such files
        (modules/checkpoints/frozen_weights.py); the default, nothing frozen from files, keeps them in."""
        return ()

    @contextmanager
    def conditions_per_evaluation(self) -> Iterator[None]:
        """Within the block, generation hands every network evaluation the condition dict itself, nothing prepared
        ahead from it: for callers that rewrite the conditions of each evaluation (a forward pre-hook such as POS's
        hybrid semantics, modules/pos/hybrid_semantics.py). Models that prepare nothing ahead have nothing to
        change (the default); ART-V turns its condition caching off."""
        yield
