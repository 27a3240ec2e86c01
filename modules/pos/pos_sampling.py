"""Text-to-video with the POS modules around a trained `VideoDiffusionModule`, model-agnostic (SCVideo, ART-V).

    python sample.py model=scvideo prompt="a red circle moving left" sampler.init_noise=retrieval \
        pool=pool/index.safetensors rewriter=template

Per batch of prompts:
1. encode each prompt once (`TextEmbeddingCache`): UNet context and pooled retrieval vector;
2. `sampler.init_noise=retrieval`: retrieve a candidate clip per prompt (`OptimalNoiseApproximator`);
3. rewrite the prompts (`rewriter`), with the retrieved captions as references;
4. when a rewrite differs from its prompt, condition on the (original, rewritten) pair through the
   hybrid-semantics hook (`hybrid_semantics.py`) for inversion and sampling alike;
5. invert the clips and mix with fresh noise into the initial noise; run the model's own `generate` with it;
6. decode.
With `sampler.init_noise=gaussian` and `rewriter=none` this is the model's plain generation, bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from modules.pos.caption_embedding import CaptionEmbedder
from modules.pos.hybrid_semantics import HybridSchedule, HybridTextConditioning, pair_text
from modules.pos.optimal_noise import OptimalNoiseApproximator, RetrievedClip
from modules.pos.rewriters import NoRewriter, PromptRewriter
from modules.pos.text_cache import TextEmbeddingCache
from modules.video_denoiser import VideoDenoiser

log = logging.getLogger(__name__)

INIT_NOISE_CHOICES = ("gaussian", "retrieval")


class PosGenerator:
    """Generates videos `[B, T, 3, H, W]` with optional optimal-noise approximation and prompt rewriting.

    Args:
        model: the trained `VideoDiffusionModule` (its net, sampler, guidance, first stage and text encoder).
        approximator: the optimal-noise approximator, or None for Gaussian initial noise.
        rewriter: the prompt rewriter (`NoRewriter` for none).
        hybrid: when the rewritten prompt takes over from the original (`pos.hybrid`).
    """

    def __init__(
        self,
        model: Any,
        *,
        approximator: OptimalNoiseApproximator | None = None,
        rewriter: PromptRewriter | None = None,
        hybrid: HybridSchedule | None = None,
    ) -> None:
        self.model = model
        self.approximator = approximator
        self.rewriter = rewriter or NoRewriter()
        self.hybrid = hybrid or HybridSchedule()
        embedder = CaptionEmbedder(model.text_encoder)
        self.texts = TextEmbeddingCache(embedder, model.device)
        if approximator is not None:
            approximator.check_encoder(embedder)

    @property
    def uses_pos(self) -> bool:
        """Whether either POS module is on (retrieval noise or a rewriter); off, `generate` is plain sampling."""
        return self.approximator is not None or not isinstance(self.rewriter, NoRewriter)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        num_frames: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        progress: bool = True,
        return_masks: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Text to video `[B, T, 3, H, W]` in [-1, 1], one video per prompt (and ART-V's mask video with
        `return_masks`, as `VideoDiffusionModule.generate`)."""
        prompts = list(prompts)
        latent_size = self._latent_size(height, width)
        prepared = self._prepare(prompts, prompts, num_frames, height, width, generator)
        model = self.model
        with prepared.hybrid_hook:
            initial_noise = None
            if prepared.retrieved is not None:
                initial_noise = self.approximator.initial_noise(
                    model,
                    prepared.retrieved,
                    prepared.text,
                    prepared.null_text,
                    **self._models_sampling(generator),
                )
            result = model.net.generate(
                model.sampler,
                model.guidance,
                prepared.text,
                prepared.null_text,
                num_frames=num_frames,
                **self._generation_options(latent_size, generator, initial_noise, progress, return_masks),
            )
        return self._decode(result, return_masks)

    @torch.no_grad()
    def generate_multi_prompt(
        self,
        prompts: Sequence[str],
        *,
        frames_per_prompt: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        progress: bool = True,
        return_masks: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """One multi-prompt ART-V video `[1, len(prompts) * frames_per_prompt, 3, H, W]` in [-1, 1] (and its mask
        video with `return_masks`).

        Each prompt is rewritten and conditions its own frames (hybrid semantics per prompt). Retrieval: frame 0's
        noise from the first prompt's clip; with `pos.approximator.all_frames` every frame's, from its prompt's
        clip, inverted as one long video under the multi-prompt conditions (`PerFrameInversion.invert_segments`).
        """
        prompts = list(prompts)
        if not prompts:
            raise ValueError("multi-prompt generation needs at least one prompt")
        latent_size = self._latent_size(height, width)
        all_frames = self.approximator is not None and self.approximator.all_frames
        retrieve = prompts if all_frames else prompts[:1]
        prepared = self._prepare(prompts, retrieve, frames_per_prompt, height, width, generator)
        texts = list(prepared.text.split(1))  # one [1, L, D] (or [1, 2, L, D] pair) per prompt
        model = self.model
        with prepared.hybrid_hook:
            initial_noise = None
            if prepared.retrieved is not None:
                initial_noise = self.approximator.initial_noise_multi_prompt(
                    model, prepared.retrieved, texts, prepared.null_text, **self._models_sampling(generator)
                )
            result = model.net.generate_multi_prompt(
                model.sampler,
                model.guidance,
                texts,
                prepared.null_text,
                frames_per_prompt=frames_per_prompt,
                **self._generation_options(latent_size, generator, initial_noise, progress, return_masks),
            )
        return self._decode(result, return_masks)

    def _models_sampling(self, generator: torch.Generator | None) -> dict[str, Any]:
        """The model's sampler and guidance and the RNG, as the approximator's inversion takes them."""
        return {"sampler": self.model.sampler, "guidance": self.model.guidance, "generator": generator}

    def _generation_options(
        self,
        latent_size: tuple[int, int],
        generator: torch.Generator | None,
        initial_noise: Tensor | None,
        progress: bool,
        return_masks: bool,
    ) -> dict[str, Any]:
        """Keyword arguments shared by the net's `generate` and `generate_multi_prompt`."""
        return {
            "latent_size": latent_size,
            "generator": generator,
            "initial_noise": initial_noise,
            "progress": progress,
            **self.model.mask_request(return_masks),
        }

    def _latent_size(self, height: int, width: int) -> tuple[int, int]:
        factor = self.model.first_stage.downsample_factor
        if height % factor or width % factor:
            raise ValueError(
                f"resolution {height}x{width} is not divisible by the autoencoder's factor {factor} <resolution>"
            )
        return height // factor, width // factor

    def _prepare(
        self,
        prompts: list[str],
        retrieve: list[str],
        num_frames: int,
        height: int,
        width: int,
        generator: torch.Generator | None,
    ) -> PreparedConditions:
        """Encode `prompts` (once each), retrieve a clip of `num_frames` frames for each of `retrieve` (a prefix
        of `prompts`) when retrieval is on, rewrite the prompts, and pair the texts for hybrid semantics."""
        model = self.model
        if self.texts.device != model.device:
            self.texts = TextEmbeddingCache(self.texts.embedder, model.device)
        original = self.texts.encode(prompts)
        retrieved = None
        if self.approximator is not None:
            retrieved = self.approximator.retrieve(
                retrieve,
                original.pooled[: len(retrieve)],
                num_frames=num_frames,
                height=height,
                width=width,
                generator=generator,
            )
        references = None
        if retrieved is not None:
            captions = [item.match.entry.caption for item in retrieved]
            references = captions + [None] * (len(prompts) - len(captions))
        rewritten = self.rewriter.rewrite_all(prompts, references)
        text, null_text = original.context, model.null_text()
        hybrid_hook: contextlib.AbstractContextManager = contextlib.nullcontext()
        if rewritten != prompts:
            for prompt, new in zip(prompts, rewritten, strict=True):
                if new != prompt:
                    log.info("POS: rewrote %r -> %r <rewriter>", prompt, new)
            text = pair_text(text, self.texts.encode(rewritten).context)
            null_text = pair_text(null_text, null_text)
            hybrid = HybridTextConditioning(model.sampler.timesteps(), self.hybrid)
            hybrid_hook = hybrid_sampling(model.net, hybrid)
        return PreparedConditions(text, null_text, retrieved, hybrid_hook)

    def _decode(
        self, result: Tensor | tuple[Tensor, Tensor], with_masks: bool
    ) -> Tensor | tuple[Tensor, Tensor]:
        if not with_masks:
            return self.model.decode_video(result)
        latents, masks = result
        return self.model.decode_video(latents), self.model.mask_video(masks)


@contextlib.contextmanager
def hybrid_sampling(net: VideoDenoiser, hybrid: HybridTextConditioning) -> Iterator[None]:
    """Within the block every evaluation of `net` gets its step's text from the (original, rewritten) pair. The hook
    rewrites each evaluation's condition dict, so the net evaluates on condition dicts, nothing prepared ahead."""
    with net.conditions_per_evaluation(), hybrid.attached(net):
        yield


@dataclass
class PreparedConditions:
    """What `PosGenerator` samples with: text `[B, L, D]` (or the hybrid pair `[B, 2, L, D]`), the matching null
    text, the retrieved clips (None without retrieval) and the hybrid-semantics hook to sample within."""

    text: Tensor
    null_text: Tensor
    retrieved: list[RetrievedClip] | None
    hybrid_hook: contextlib.AbstractContextManager


def read_init_noise(cfg: DictConfig) -> str:
    """`sampler.init_noise` (gaussian | retrieval), checked. build_model_for_sampling leaves it out of the sampler
    it instantiates: it selects the initial noise, it is no sampler constructor argument."""
    init_noise = str(cfg.get("sampler", {}).get("init_noise", "gaussian"))
    if init_noise not in INIT_NOISE_CHOICES:
        raise ValueError(f"sampler.init_noise must be one of {INIT_NOISE_CHOICES}, got {init_noise!r}")
    return init_noise


def build_pos_generator(cfg: DictConfig, model: Any) -> PosGenerator:
    """The generator sample.py uses, from `sampler.init_noise`, `pool`, `rewriter` and `pos`."""
    init_noise = read_init_noise(cfg)
    pos_cfg = cfg.get("pos")
    approximator = None
    if init_noise == "retrieval":
        if cfg.get("pool") is None:
            raise ValueError(
                "sampler.init_noise=retrieval needs a candidate pool: pass pool=/path/to/index.safetensors"
            )
        approximator = instantiate(pos_cfg.approximator)
        log.info("initial noise: %r <sampler.init_noise=retrieval pool=%s>", approximator, cfg.pool)
    rewriter = instantiate(cfg.rewriter) if cfg.get("rewriter") is not None else NoRewriter()
    hybrid = instantiate(pos_cfg.hybrid) if pos_cfg is not None else HybridSchedule()
    if not isinstance(rewriter, NoRewriter):
        log.info("prompt rewriter %r, hybrid semantics %s <rewriter, pos.hybrid>", rewriter, hybrid)
    return PosGenerator(model, approximator=approximator, rewriter=rewriter, hybrid=hybrid)
