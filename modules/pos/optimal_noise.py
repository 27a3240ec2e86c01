"""The POS optimal-noise approximator (arXiv 2311.00949): start sampling from the inverted noise of a real video
related to the prompt instead of from pure Gaussian noise.

Steps (the abstract names retrieval and inversion; the details are our interpretation):
1. embed the prompt with the model's text encoder (EOT pooling) and rank the pool by cosine similarity
   (`CandidateIndex.search`, top-k); the best candidate whose video decodes is used (`choice: best`), or one of the
   top k picked by the seed (`choice: seeded`, more variety across seeds);
2. read its centred clip in the model's frame layout at the sampling resolution and encode it with the first stage
   (posterior mean, so the result is deterministic);
3. invert the latents with deterministic DDIM (eta 0, the sampler's number of steps, conditioned on the prompt) to
   the VP state at the sampler's first timestep (`noise_inversion.py`, which also explains the DPM++ convention);
4. mix with fresh noise so that different seeds still give different videos:
        x_T' = sqrt(1 - lam) * x_inv + sqrt(lam) * eps
   (the abstract's later version "keeps diversity with a Gaussian mixture"; a variance-preserving mix is ours).
   lam = 1 is plain sampling: eps is drawn exactly as the model's `generate` would draw its noise, so the video is
   bit-for-bit the plain one.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

from datamodules.frame_selection import FrameSelection
from modules.diffusion.guidance import Guidance
from modules.diffusion.noise import Generators
from modules.diffusion.samplers.base import Sampler
from modules.pos.candidate_index import CandidateIndex, Match
from modules.pos.candidate_video import CandidateVideoError, read_candidate_clip
from modules.pos.caption_embedding import CaptionEmbedder, EncoderMismatchError, check_same_encoder
from modules.pos.frame_embedding import FrameEmbedder
from modules.pos.noise_inversion import InversionSettings, InversionStrategy
from modules.video_denoiser import VideoDenoiser

log = logging.getLogger(__name__)

CHOICES = ("best", "seeded")


@dataclass(frozen=True)
class RetrievedClip:
    """The candidate used for one prompt: its index match and its clip `[T, 3, H, W]` in [-1, 1]."""

    match: Match
    clip: Tensor


class OptimalNoiseApproximator:
    """Retrieval + DDIM inversion + noise mixing (see the module docstring).

    Args:
        index_path: the candidate pool index (`pool=`), or a loaded `CandidateIndex`.
        lam: weight of fresh noise in x_T' = sqrt(1 - lam) x_inv + sqrt(lam) eps, in [0, 1]; 1 = plain sampling.
        top_k: candidates ranked per prompt (fallbacks when a video cannot be read, and the `seeded` choice).
        choice: "best" (the highest-ranked readable candidate) or "seeded" (ranking rotated by the seed).
        frame_stride, target_fps: the clip layout read from the candidate video (exactly one set; use the layout the
            model was trained on: SCVideo every 8th frame, ART-V 8 fps, the toy runs stride 1).
        fixed_point_iterations: refinement of each inversion step (`DDIMSampler.invert`).
        inversion_guidance: invert with the sampling guidance instead of the conditional prediction.
        all_frames: ART-V: invert every frame of the clip, not only the first.
        frame_weight: weight of the CLIP frame score in the ranking (0: captions only; needs frame embeddings).
        frame_encoder: `{arch, weights_path, force_quick_gelu}` of the CLIP used for frame embeddings.
    """

    def __init__(
        self,
        index_path: str | Path | CandidateIndex,
        lam: float = 0.5,
        top_k: int = 1,
        choice: str = "best",
        frame_stride: int | None = 1,
        target_fps: float | None = None,
        fixed_point_iterations: int = 0,
        inversion_guidance: bool = False,
        all_frames: bool = False,
        frame_weight: float = 0.0,
        frame_encoder: Mapping[str, Any] | None = None,
    ) -> None:
        if index_path is None:
            raise ValueError(
                "sampler.init_noise=retrieval needs a candidate pool: pass pool=/path/to/index.safetensors"
            )
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"pos.approximator.lam must be in [0, 1], got {lam}")
        if choice not in CHOICES:
            raise ValueError(f"pos.approximator.choice must be one of {CHOICES}, got {choice!r}")
        if top_k < 1:
            raise ValueError(f"pos.approximator.top_k must be >= 1, got {top_k}")
        if isinstance(index_path, CandidateIndex):
            self.index, self.index_path = index_path, "<in-memory index>"
        else:
            self.index, self.index_path = CandidateIndex.load(index_path), str(index_path)
        self.lam = float(lam)
        self.top_k = top_k
        self.choice = choice
        self.frame_stride = frame_stride
        self.target_fps = target_fps
        self.settings = InversionSettings(fixed_point_iterations, inversion_guidance)
        self.all_frames = all_frames
        self.frame_weight = frame_weight
        self.frame_embedder = self._frame_embedder(frame_encoder) if frame_weight > 0 else None

    def _frame_embedder(self, config: Mapping[str, Any] | None) -> FrameEmbedder:
        if self.index.frame_embeddings is None:
            raise ValueError(
                f"pos.approximator.frame_weight > 0 but {self.index_path} has no frame embeddings; rebuild it with "
                "--frame-arch, or set frame_weight=0"
            )
        if not config or config.get("arch") is None:
            raise ValueError(
                "pos.approximator.frame_weight > 0 needs pos.approximator.frame_encoder.arch (and weights_path)"
            )
        embedder = FrameEmbedder(
            config["arch"],
            config.get("weights_path"),
            force_quick_gelu=bool(config.get("force_quick_gelu", False)),
            random_init_ok=bool(config.get("random_init_ok", False)),
        )
        stored = self.index.frame_probe_embeddings
        if stored is None or not torch.allclose(stored, embedder.probe_embeddings(), atol=1e-3):
            raise EncoderMismatchError(
                f"{self.index_path}: its frame embeddings come from another CLIP than "
                "pos.approximator.frame_encoder; use the same arch and weights as build_index --frame-arch"
            )
        return embedder

    def check_encoder(self, embedder: CaptionEmbedder) -> None:
        """Raise EncoderMismatchError unless the index was built with this text encoder."""
        check_same_encoder(self.index.encoder, self.index.probe_embeddings, embedder, self.index_path)

    # ---- retrieval ----------------------------------------------------------------------------------
    def retrieve(
        self,
        prompts: Sequence[str],
        pooled: Tensor,
        *,
        num_frames: int,
        height: int,
        width: int,
        generators: Sequence[torch.Generator] | None = None,
    ) -> list[RetrievedClip]:
        """One readable candidate clip per prompt. pooled: the prompts' unit embeddings `[B, D]`; generators: the
        generator of each prompt's video (its seed rotates the ranking with `choice: seeded`), or None."""
        frame_queries = self.frame_embedder.embed_texts(prompts) if self.frame_embedder is not None else None
        ranked = self.index.search(
            pooled, self.top_k, frame_queries=frame_queries, frame_weight=self.frame_weight
        )
        selection = FrameSelection(num_frames, frame_stride=self.frame_stride, target_fps=self.target_fps)
        retrieved = []
        for index, (prompt, matches) in enumerate(zip(prompts, ranked, strict=True)):
            generator = None if generators is None else generators[index]
            retrieved.append(
                self._first_readable(prompt, self._ordered(matches, generator), selection, height, width)
            )
        return retrieved

    def _ordered(self, matches: list[Match], generator: torch.Generator | None) -> list[Match]:
        if self.choice == "best" or len(matches) == 1:
            return matches
        # the seed picks where to start without drawing from the generator (lam = 1 stays bit-exact)
        seed = generator.initial_seed() if generator is not None else 0
        start = random.Random(seed).randrange(len(matches))
        return matches[start:] + matches[:start]

    def _first_readable(
        self, prompt: str, matches: list[Match], selection: FrameSelection, height: int, width: int
    ) -> RetrievedClip:
        failures = []
        for match in matches:
            try:
                clip = read_candidate_clip(match.entry, selection, height=height, width=width)
            except CandidateVideoError as error:
                log.warning("skipping candidate %s: %s <pool>", match.entry.key, error)
                failures.append(str(error))
                continue
            log.info(
                "POS: %r -> candidate %s %r (cosine %.3f) <pool>",
                prompt,
                match.entry.key,
                match.entry.caption,
                match.score,
            )
            return RetrievedClip(match=match, clip=clip)
        raise CandidateVideoError(
            f"none of the {len(matches)} best candidates for {prompt!r} could be read ({failures}); raise "
            "pos.approximator.top_k or rebuild the pool <pool>"
        )

    # ---- initial noise ------------------------------------------------------------------------------
    def strategy(self, net: VideoDenoiser) -> InversionStrategy:
        """The inversion the denoiser declares (`VideoDenoiser.inversion_strategy`); a model without one is refused."""
        strategy = net.inversion_strategy(all_frames=self.all_frames)
        if strategy is None:
            raise ValueError(
                f"sampler.init_noise=retrieval: {net.abilities.model_name} declares no POS inversion strategy; use "
                "sampler.init_noise=gaussian <sampler.init_noise>"
            )
        return strategy

    @torch.no_grad()
    def initial_noise(
        self,
        model: Any,
        clips: Tensor,
        texts: Sequence[Tensor],
        null_text: Tensor,
        *,
        sampler: Sampler,
        guidance: Guidance | None,
        generators: Generators = None,
    ) -> Tensor:
        """x_T' for `LatentRequest.initial_noise`, in the layout of the net's inversion strategy.

        model: the `VideoDiffusionModule` (first stage, net, VAE chunking); clips: each video's retrieved clips one
        after another along time `[B, S * F, 3, H, W]` in [-1, 1]; texts: the S prompt segments they stand for, each
        `[B, L, D]` or the hybrid pair `[B, 2, L, D]` (the hybrid hook must then be attached to model.net); null_text:
        the matching null text; generators: each video's own, for the fresh noise.
        """
        strategy = self.strategy(model.net)
        latents = self._encode(model, clips)
        inverted = strategy.invert(
            model.net, latents, texts, null_text, sampler=sampler, guidance=guidance, settings=self.settings
        )
        return self._mix(strategy.fresh_noise(model.net, inverted, generators), inverted)

    @staticmethod
    def _encode(model: Any, videos: Tensor) -> Tensor:
        """Clips `[B, T, 3, H, W]` in [-1, 1] -> latents `[B, C, T, h, w]` (posterior mean), on the net's device."""
        latents = model.first_stage.encode_video(
            rearrange(videos.to(model.device), "b t c h w -> b c t h w"),
            chunk_size=model.vae_chunk_frames,
            sample=False,
        )
        reference = next(model.net.parameters())
        # contiguous: the first stage's frame reshapes leave a permuted layout, and a layout other than a fresh
        # draw's changes the network's float rounding (lam = 1 must reproduce plain sampling bit for bit)
        return latents.to(reference.device, reference.dtype).contiguous()

    def _mix(self, fresh: Tensor, inverted: Tensor) -> Tensor:
        # x_T' = sqrt(1 - lam) x_inv + sqrt(lam) eps
        return (math.sqrt(1.0 - self.lam) * inverted + math.sqrt(self.lam) * fresh).contiguous()

    def __repr__(self) -> str:
        return (
            f"OptimalNoiseApproximator(index={self.index_path!r}, {len(self.index)} candidates, lam={self.lam}, "
            f"top_k={self.top_k}, choice={self.choice!r})"
        )
