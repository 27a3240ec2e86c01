"""Text-to-video with the POS modules around a trained `VideoDiffusionModule`, model-agnostic (SCVideo, ART-V).

    python sample.py model=scvideo prompt="a red circle moving left" sampler.init_noise=retrieval \
        pool=pool/index.safetensors rewriter=template

Per request (`GenerationRequest`, modules/generation.py), for the prompts of every video:
1. encode each prompt once (`TextEmbeddingCache`): UNet context and pooled retrieval vector;
2. `sampler.init_noise=retrieval`: retrieve a candidate clip per prompt (`OptimalNoiseApproximator`);
3. rewrite the prompts (`rewriter`), with the retrieved captions as references;
4. when a rewrite differs from its prompt, condition on the (original, rewritten) pair through the
   hybrid-semantics hook (`hybrid_semantics.py`) for inversion and sampling alike;
5. invert the clips and mix with fresh noise into the initial noise; run the net's own `generate` with it;
6. decode.
With `sampler.init_noise=gaussian` and `rewriter=none` this is the model's plain generation, bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from torch import Tensor

from modules.generation import GenerationRequest, GenerationResult, LatentRequest
from modules.pos.caption_embedding import CaptionEmbedder
from modules.pos.hybrid_semantics import HybridSchedule, HybridTextConditioning, pair_text
from modules.pos.optimal_noise import OptimalNoiseApproximator
from modules.pos.rewriters import NoRewriter, PromptRewriter
from modules.pos.text_cache import TextEmbeddingCache
from modules.video_denoiser import VideoDenoiser

log = logging.getLogger(__name__)

INIT_NOISE_CHOICES = ("gaussian", "retrieval")
FIRST_FRAME_WITH_POS = (
    "first_frame: POS (sampler.init_noise, rewriter) does not combine with a given first frame; drop first_frame, "
    "or use sampler.init_noise=gaussian rewriter=none <first_frame>"
)


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
            approximator.strategy(model.net)  # refuses a model without an inversion strategy, before any work

    @property
    def uses_pos(self) -> bool:
        """Whether either POS module is on (retrieval noise or a rewriter); off, `generate` is plain sampling."""
        return self.approximator is not None or not isinstance(self.rewriter, NoRewriter)

    def check_request(self, request: GenerationRequest) -> None:
        """Refuse, before any work, what the model cannot do (its declared abilities) and what POS does not combine
        with (a given first frame, a given initial noise)."""
        self.model.net.abilities.check_request(request)
        if self.uses_pos and request.first_frame is not None:
            raise ValueError(FIRST_FRAME_WITH_POS)
        if self.approximator is not None and request.initial_noise is not None:
            raise ValueError(
                "initial_noise: POS retrieval makes the initial noise itself; pass none, or use "
                "sampler.init_noise=gaussian <sampler.init_noise>"
            )

    @torch.no_grad()
    def generate(self, request: GenerationRequest) -> GenerationResult:
        """The request's videos (as `VideoDiffusionModule.generate`), with POS's initial noise and rewritten prompts.

        Every prompt of every video is rewritten and conditions its own frames (hybrid semantics per prompt).
        Retrieval: one clip per video (video b's own generator picks it with `choice: seeded`), inverted into the
        model's initial-noise layout; a multi-prompt video retrieves its first prompt's clip, or with
        `pos.approximator.all_frames` one clip per prompt, inverted as one long video under the multi-prompt
        conditions (`PerFrameInversion`).
        """
        self.check_request(request)
        if not self.uses_pos:
            return self.model.generate(request)
        model = self.model
        latent_size = model.latent_size(request.height, request.width)
        prepared = self._prepare(request)
        with prepared.hybrid_hook:
            initial_noise = None
            if prepared.clips is not None:
                initial_noise = self.approximator.initial_noise(
                    model,
                    prepared.clips,
                    prepared.texts[: prepared.retrieved_segments],
                    prepared.null_text,
                    sampler=model.sampler,
                    guidance=model.guidance,
                    generators=request.generators,
                )
            generated = model.net.generate(
                model.sampler,
                model.guidance,
                LatentRequest(
                    texts=prepared.texts,
                    null_text=prepared.null_text,
                    num_frames=request.frames_per_video,
                    latent_size=latent_size,
                    generators=request.generators,
                    initial_noise=initial_noise,
                    progress=request.progress,
                ),
            )
        return model.decode_result(request, generated)

    def _prepare(self, request: GenerationRequest) -> PreparedConditions:
        """Encode the prompts of every video (B rows of S segments, `GenerationRequest.prompt_grid`; each distinct
        prompt once), retrieve each video's clips when retrieval is on, rewrite the prompts, and pair the texts for
        hybrid semantics."""
        model = self.model
        if self.texts.device != model.device:
            self.texts = TextEmbeddingCache(self.texts.embedder, model.device)
        grid = request.prompt_grid()
        batch, segments = len(grid), len(grid[0])
        prompts = [prompt for row in grid for prompt in row]  # row-major: prompt (b, s) at b * S + s
        original = self.texts.encode(prompts)
        references: list[str | None] = [None] * len(prompts)
        clips, retrieved_segments = None, segments
        if self.approximator is not None:
            retrieved_segments = segments if self.approximator.all_frames else 1
            picked = [b * segments + s for b in range(batch) for s in range(retrieved_segments)]
            generators = request.generators
            retrieved = self.approximator.retrieve(
                [prompts[i] for i in picked],
                original.pooled[picked],
                num_frames=request.frames_per_video // segments,
                height=request.height,
                width=request.width,
                generators=None if generators is None else [generators[i // segments] for i in picked],
            )
            for i, item in zip(picked, retrieved, strict=True):
                references[i] = item.match.entry.caption
            # each video's clips one after another along time: [B, used * F, 3, H, W]
            clips = rearrange(
                torch.stack([item.clip for item in retrieved]),
                "(b s) f c h w -> b (s f) c h w",
                b=batch,
            )
        rewritten = self.rewriter.rewrite_all(prompts, references)
        texts = [original.context[s::segments] for s in range(segments)]  # per segment [B, L, D]
        null_text = model.null_text()
        hybrid_hook: contextlib.AbstractContextManager = contextlib.nullcontext()
        if rewritten != prompts:
            for prompt, new in zip(prompts, rewritten, strict=True):
                if new != prompt:
                    log.info("POS: rewrote %r -> %r <rewriter>", prompt, new)
            new_context = self.texts.encode(rewritten).context
            texts = [pair_text(texts[s], new_context[s::segments]) for s in range(segments)]
            null_text = pair_text(null_text, null_text)
            hybrid = HybridTextConditioning(model.sampler.timesteps(), self.hybrid)
            hybrid_hook = hybrid_sampling(model.net, hybrid)
        return PreparedConditions(texts, null_text, clips, retrieved_segments, hybrid_hook)


@contextlib.contextmanager
def hybrid_sampling(net: VideoDenoiser, hybrid: HybridTextConditioning) -> Iterator[None]:
    """Within the block every evaluation of `net` gets its step's text from the (original, rewritten) pair. The hook
    rewrites each evaluation's condition dict, so the net evaluates on condition dicts, nothing prepared ahead."""
    with net.conditions_per_evaluation(), hybrid.attached(net):
        yield


@dataclass
class PreparedConditions:
    """What `PosGenerator` samples with: per prompt segment the texts `[B, L, D]` (or hybrid pairs `[B, 2, L, D]`),
    the matching null text, each video's retrieved clips `[B, retrieved_segments * F, 3, H, W]` in [-1, 1] (None
    without retrieval), and the hybrid-semantics hook to sample within."""

    texts: list[Tensor]
    null_text: Tensor
    clips: Tensor | None
    retrieved_segments: int
    hybrid_hook: contextlib.AbstractContextManager


def read_init_noise(cfg: DictConfig) -> str:
    """`sampler.init_noise` (gaussian | retrieval), checked. build_model_for_sampling leaves it out of the sampler
    it instantiates: it selects the initial noise, it is no sampler constructor argument."""
    init_noise = str(cfg.get("sampler", {}).get("init_noise", "gaussian"))
    if init_noise not in INIT_NOISE_CHOICES:
        raise ValueError(f"sampler.init_noise must be one of {INIT_NOISE_CHOICES}, got {init_noise!r}")
    return init_noise


def pos_requested(cfg: DictConfig) -> bool:
    """Whether the config turns either POS module on (`PosGenerator.uses_pos`), read before anything is built."""
    rewriter = cfg.get("rewriter")
    return read_init_noise(cfg) == "retrieval" or (
        rewriter is not None and not issubclass(get_class(rewriter._target_), NoRewriter)
    )


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
