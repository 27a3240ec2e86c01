"""SCVideo (SCVideo appendix section 1): SD 1.4 inflated to a text-to-video latent diffusion model.

The denoiser is the video UNet of `video_unet.py` run on all frames of a clip at once; a training example is
the whole clip, the only condition is the text, and generation denoises the whole clip jointly from noise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from einops import rearrange, repeat
from torch import Tensor

from modules.diffusion.guidance import Guidance
from modules.diffusion.noise import standard_normal
from modules.diffusion.noise_schedule import NoiseSchedule
from modules.diffusion.samplers.base import Sampler
from modules.generation import GeneratedLatents, GenerationAbilities, LatentRequest
from modules.pos.noise_inversion import InversionStrategy, WholeClipInversion
from modules.scvideo.video_unet import SCVideoBlockFactory, is_paper_trainable
from modules.scvideo.weight_files import load_pretrained_unet, load_temporal_weights
from modules.unet.unet_2d import UNetModel
from modules.video_denoiser import TrainingExample, VideoDenoiser

log = logging.getLogger(__name__)

TRAINABLE_SETS = ("paper", "all")
PREDICTIONS = ("eps", "v")  # what the UNet outputs (`prediction`)


class SCVideoDenoiser(VideoDenoiser):
    """SCVideo's eps model: `forward(x_t [B, C, T, h, w], t [B], {"text": [B, L, D]}) -> eps [B, C, T, h, w]`.

    Args:
        unet: a partial `UNetModel` (a `_partial_: true` config from conf/backbone/*.yaml); it is called with
            `block_factory=SCVideoBlockFactory()`, which inflates it to video with SD's keys kept.
        pretrained: SD 1.x checkpoint (`.ckpt`/`.safetensors`, full or UNet only) loaded strictly into the
            parameters shared with SD; None keeps the random init (toy runs).
        temporal_weights: a file written by `save_temporal_weights` (new and trained parameters), loaded after
            `pretrained`; None for none.
        trainable: "paper" trains the temporal convs and all attention modules and freezes the rest (SCVideo
            appendix, Training; the exact set is documented in `video_unet.py`); "all" trains every parameter.
            Toy runs start from a random tiny UNet with no pretrained image model, and frozen random spatial
            layers would cripple them, so they use "all".
        prediction: what the UNet outputs: "eps" (the paper, as SD 1.4) or "v" (v = sqrt(a_t) eps - sqrt(1 - a_t) x0,
            Salimans & Ho 2022, as SD 2 and Lin et al. 2024 train; used by the from-scratch toy). `forward` returns
            eps either way, so samplers, guidance and POS are unchanged.
        schedule: the noise schedule, needed to turn a v-prediction into eps (`prediction="v"` only).
    """

    condition_keys = ("text",)
    abilities = GenerationAbilities(model_name="SCVideo", instead="use model=artv")
    per_frame_steps = True  # every frame runs through the 2D layers with its own timestep embedding

    def __init__(
        self,
        unet: Callable[..., UNetModel],
        pretrained: str | None = None,
        temporal_weights: str | None = None,
        trainable: str = "paper",
        prediction: str = "eps",
        schedule: NoiseSchedule | None = None,
    ) -> None:
        super().__init__()
        if trainable not in TRAINABLE_SETS:
            raise ValueError(f"model.net.trainable must be one of {TRAINABLE_SETS}, got {trainable!r}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"model.net.prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if prediction == "v" and schedule is None:
            raise ValueError(
                "model.net.prediction=v needs model.net.schedule (the schedule that turns v into eps)"
            )
        if isinstance(unet, torch.nn.Module) or not callable(unet):
            raise TypeError(
                "model.net.unet must be a partial UNetModel config (`_partial_: true`, e.g. backbone.unet) that "
                f"SCVideo calls with its block factory; got {type(unet).__name__}"
            )
        self.trainable = trainable
        self.prediction = prediction
        self.schedule = schedule if prediction == "v" else None
        self.pretrained = pretrained
        self.temporal_weights = temporal_weights
        self.unet = unet(block_factory=SCVideoBlockFactory())
        if pretrained is not None:
            load_pretrained_unet(self.unet, pretrained)
        if temporal_weights is not None:
            load_temporal_weights(self.unet, temporal_weights)

    # ---- trainable set ------------------------------------------------------------------------------
    def _is_trained(self, unet_key: str) -> bool:
        return self.trainable == "all" or is_paper_trainable(unet_key)

    def trained_parameter_names(self) -> list[str]:
        """UNet keys of the parameters in the `trainable` set (what `save_temporal_weights` writes)."""
        return [key for key, _ in self.unet.named_parameters() if self._is_trained(key)]

    def frozen_weight_files(self) -> tuple[str, ...]:
        """`pretrained` (and `temporal_weights`, which may overwrite some): the strict SD load fills every parameter
        outside the trainable set, as every new layer is in it."""
        if self.pretrained is None:
            return ()
        return tuple(str(path) for path in (self.pretrained, self.temporal_weights) if path is not None)

    def configure_trainable(self) -> None:
        """requires_grad on the `trainable` set only; everything else frozen (excluded from optimizer and EMA)."""
        for key, parameter in self.unet.named_parameters():
            parameter.requires_grad_(self._is_trained(key))
        trained = sum(p.numel() for p in self.unet.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.unet.parameters())
        log.info(
            "SCVideo trains %s of %s UNet parameters <model.net.trainable=%s>",
            f"{trained:,}",
            f"{total:,}",
            self.trainable,
        )

    # ---- eps model ----------------------------------------------------------------------------------
    def forward(self, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        """eps for noisy latents x_t `[B, C, T, h, w]` at DDPM steps t `[B]` (int64), or one step per frame `[B, T]`
        (each frame's timestep embedding its own; `per_frame_steps`), with cond["text"] `[B, L, D]`."""
        text = self._check_inputs(x_t, t, cond)
        num_frames = x_t.shape[2]
        frames = rearrange(x_t, "b c t h w -> (b t) c h w")
        frame_steps = t.reshape(-1) if t.ndim == 2 else repeat(t, "b -> (b t)", t=num_frames)
        frame_text = repeat(text, "b l d -> (b t) l d", t=num_frames)
        output = rearrange(
            self.unet(frames, frame_steps, frame_text, num_frames=num_frames),
            "(b t) c h w -> b c t h w",
            t=num_frames,
        )
        return self.schedule.eps_from_v(x_t, t, output) if self.prediction == "v" else output

    def _check_inputs(self, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        if x_t.ndim != 5 or x_t.shape[1] != self.unet.in_channels:
            raise ValueError(
                f"SCVideoDenoiser: x_t must be [B, {self.unet.in_channels}, T, h, w], got {list(x_t.shape)}"
            )
        if t.shape not in ((x_t.shape[0],), (x_t.shape[0], x_t.shape[2])):
            raise ValueError(
                f"SCVideoDenoiser: t must have shape [B] = [{x_t.shape[0]}] or [B, T] = "
                f"[{x_t.shape[0]}, {x_t.shape[2]}], got {list(t.shape)}"
            )
        text = cond.get("text")
        if text is None or text.ndim != 3 or text.shape[0] != x_t.shape[0]:
            shape = None if text is None else list(text.shape)
            raise ValueError(f"SCVideoDenoiser: cond['text'] must be [B = {x_t.shape[0]}, L, D], got {shape}")
        unknown = sorted(set(cond) - set(self.condition_keys))
        if unknown:
            raise ValueError(
                f"SCVideoDenoiser: unknown conditions {unknown}; SCVideo is conditioned on text only"
            )
        return text

    # ---- training and generation --------------------------------------------------------------------
    def training_example(self, latents: Tensor, frame_indices: Tensor | None = None) -> TrainingExample:
        """The whole clip `[B, C, T, h, w]` is the target (every frame: `training_frame_indices` is None); text is
        the only condition."""
        if latents.ndim != 5:
            raise ValueError(f"SCVideoDenoiser: latents must be [B, C, T, h, w], got {list(latents.shape)}")
        return TrainingExample(x0=latents, cond={})

    @torch.no_grad()
    def generate(self, sampler: Sampler, guidance: Guidance, request: LatentRequest) -> GeneratedLatents:
        """Denoise each whole clip jointly: noise `[B, C, T, h, w]` -> latents `[B, C, T, h, w]`.

        request.texts: one `[B, L, D]`; null_text: the empty-prompt embedding `[1, L, D]` (CFG's unconditional
        branch). Video b's noise is drawn from its generator on the generator's device (so a CPU generator gives the
        same video on any device) and moved to the model's device; `initial_noise` `[B, C, T, h, w]` replaces it.
        """
        reference = next(self.unet.parameters())
        (text,) = request.texts
        shape = (request.batch_size, self.unet.in_channels, request.num_frames, *request.latent_size)
        if request.initial_noise is not None:
            if tuple(request.initial_noise.shape) != shape:
                raise ValueError(
                    f"SCVideoDenoiser.generate: initial_noise must be [B, C, T, h, w] = {list(shape)}, got "
                    f"{list(request.initial_noise.shape)}"
                )
            noise = request.initial_noise.to(reference.device, reference.dtype)
        else:
            noise = standard_normal(shape, request.generators, device=reference.device, dtype=reference.dtype)
        # the progress bar is off for this call when the caller asks; the sampler's setting is restored below
        show_progress = sampler.progress
        sampler.progress = show_progress and request.progress
        try:
            latents = sampler.sample(
                self,
                noise,
                cond={"text": text.to(reference.device)},
                null_cond={"text": request.null_text.to(reference.device)},
                guidance=guidance,
                generator=request.generators,
            )
        finally:
            sampler.progress = show_progress
        return GeneratedLatents(latents)

    def inversion_strategy(self, *, all_frames: bool) -> InversionStrategy:
        """POS inverts the whole clip, as SCVideo generates it (`all_frames` changes nothing)."""
        return WholeClipInversion()
