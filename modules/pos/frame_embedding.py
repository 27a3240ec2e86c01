"""Optional frame embeddings for the candidate pool: an open_clip CLIP image tower on each video's middle frame.

Captions of web videos are short and noisy; scoring candidates also by how well a frame matches the prompt in
CLIP space (prompt through CLIP's text tower, frame through its image tower) is our optional addition
(`pos.frame_weight`, 0 = captions only). The POS abstract says only that a video "related to the prompt" is
retrieved. The frame is the middle frame of the video (the centred start of a one-frame clip), resized and
normalised as CLIPSIM does (`modules/evaluation/clipsim.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from einops import rearrange
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from datamodules.frame_selection import FrameSelection
from datamodules.video_decoding import decode_clip
from modules.evaluation.clipsim import build_open_clip_model, clip_image_batch, clip_preprocess_settings
from modules.pos.caption_embedding import PROBE_SENTENCES

MIDDLE_FRAME = FrameSelection(num_frames=1, frame_stride=1)


class FrameEmbedder:
    """CLIP image embeddings of video frames and CLIP text embeddings of prompts, both unit vectors `[N, E]`.

    Args:
        arch: open_clip model name (`"ViT-L-14"`) or config mapping (tiny test models).
        weights_path: local open_clip weights; None builds a random network (tests only, needs random_init_ok).
        force_quick_gelu: QuickGELU activations (OpenAI's CLIP weights).
        random_init_ok: allow `weights_path=None`; the random init is seeded by `init_seed`.
        init_seed: seed of the random init.
        device: where CLIP runs.
    """

    def __init__(
        self,
        arch: str | Mapping[str, Any],
        weights_path: str | Path | None,
        *,
        force_quick_gelu: bool = False,
        random_init_ok: bool = False,
        init_seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if isinstance(arch, DictConfig):
            arch = OmegaConf.to_container(arch, resolve=True)
        self.arch = arch
        self.force_quick_gelu = force_quick_gelu
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.model = build_open_clip_model(
                arch,
                weights_path,
                force_quick_gelu=force_quick_gelu,
                random_init_ok=random_init_ok,
                device=self.device,
            )
        self.image_size, self.mean, self.std = clip_preprocess_settings(self.model)
        self.tokenizer = open_clip.SimpleTokenizer(context_length=self.model.context_length)
        self.embed_dim = int(self.model.visual.output_dim)

    def identity(self) -> dict[str, Any]:
        """Architecture facts stored in the index (the probe embeddings fingerprint the weights)."""
        return {"arch": self.arch, "force_quick_gelu": self.force_quick_gelu, "frame": "middle"}

    def decode_middle_frame(self, video_bytes: bytes) -> Tensor:
        """The middle frame of an encoded video, `[3, H, W]` in [-1, 1] at the CLIP input size."""
        clip = decode_clip(video_bytes, MIDDLE_FRAME, height=self.image_size[0], width=self.image_size[1])
        frame = torch.from_numpy(clip.frames[0]).float() / 127.5 - 1.0
        return rearrange(frame, "h w c -> c h w")

    @torch.no_grad()
    def embed_frames(self, frames: Tensor) -> Tensor:
        """Frames `[N, 3, H, W]` in [-1, 1] -> unit image embeddings `[N, E]` float32 (CPU)."""
        pixels = clip_image_batch(frames.to(self.device), self.image_size, self.mean, self.std)
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1).cpu()

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> Tensor:
        """Prompts -> unit CLIP text embeddings `[N, E]` float32 (CPU)."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()

    def probe_embeddings(self) -> Tensor:
        """CLIP text embeddings `[P, E]` of the probe sentences: the fingerprint of these CLIP weights."""
        return self.embed_texts(PROBE_SENTENCES)
