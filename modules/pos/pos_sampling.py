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
from collections.abc import Sequence
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from modules.pos.caption_embedding import CaptionEmbedder
from modules.pos.hybrid_semantics import HybridSchedule, HybridTextConditioning, pair_text
from modules.pos.optimal_noise import OptimalNoiseApproximator
from modules.pos.rewriters import NoRewriter, PromptRewriter
from modules.pos.text_cache import TextEmbeddingCache

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
    ) -> Tensor:
        """Text to video `[B, T, 3, H, W]` in [-1, 1]."""
        model = self.model
        prompts = list(prompts)
        factor = model.first_stage.downsample_factor
        if height % factor or width % factor:
            raise ValueError(
                f"resolution {height}x{width} is not divisible by the autoencoder's factor {factor} <resolution>"
            )
        if self.texts.device != model.device:
            self.texts = TextEmbeddingCache(self.texts.embedder, model.device)
        original = self.texts.encode(prompts)
        retrieved = None
        if self.approximator is not None:
            retrieved = self.approximator.retrieve(
                prompts,
                original.pooled,
                num_frames=num_frames,
                height=height,
                width=width,
                generator=generator,
            )
        references = None if retrieved is None else [item.match.entry.caption for item in retrieved]
        rewritten = self.rewriter.rewrite_all(prompts, references)
        text, null_text = original.context, model.null_text()
        hybrid_hook = contextlib.nullcontext()
        if rewritten != prompts:
            for prompt, new in zip(prompts, rewritten, strict=True):
                if new != prompt:
                    log.info("POS: rewrote %r -> %r <rewriter>", prompt, new)
            text = pair_text(text, self.texts.encode(rewritten).context)
            null_text = pair_text(null_text, null_text)
            hybrid = HybridTextConditioning(model.sampler.timesteps(), self.hybrid)
            hybrid_hook = hybrid.attached(model.net)
        with hybrid_hook:
            initial_noise = None
            if retrieved is not None:
                initial_noise = self.approximator.initial_noise(
                    model,
                    retrieved,
                    text,
                    null_text,
                    sampler=model.sampler,
                    guidance=model.guidance,
                    generator=generator,
                )
            latents = model.net.generate(
                model.sampler,
                model.guidance,
                text,
                null_text,
                num_frames=num_frames,
                latent_size=(height // factor, width // factor),
                generator=generator,
                initial_noise=initial_noise,
                progress=progress,
            )
        return model.decode_video(latents)


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
