"""CLIPSIM: how well a generated video matches its prompt, by CLIP (Wu et al. 2021, GODIVA, sec. 4).

    CLIPSIM(video, prompt) = mean over frames t of cos(E_image(frame_t), E_text(prompt))
    CLIPSIM(set)           = mean over videos

reported as a raw cosine in [-1, 1] (Make-A-Video sec. 4.1 reports e.g. 0.3049 on MSR-VTT with ViT-B/32;
the "CLIP score" of Hessel et al. is 100 x max(cos, 0) instead). The model is an open_clip CLIP built
from its bundled architecture config (`open_clip.create_model(arch, pretrained=None)`, nothing is
downloaded) or from a config mapping (tiny test models), with weights from a local file.

Frames are preprocessed as open_clip's eval transform does, on tensors: [-1, 1] -> [0, 1], bicubic
(antialiased) resize of the short side to the model's image size, centre crop, normalisation with the
model's mean/std (OpenAI's CLIP statistics when the config names none). Prompts are tokenized with
open_clip's bundled CLIP BPE tokenizer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from einops import rearrange
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from modules.checkpoints.safe_load import load_state_dict_file
from modules.checkpoints.strict_load import load_strict
from modules.evaluation.video_metric import MissingWeightsError, check_video_batch, resolve_device

log = logging.getLogger(__name__)


def _architecture_config(arch: str | Mapping[str, Any]) -> dict[str, Any]:
    """The open_clip model config of `arch` (a bundled model name or a mapping), checked for downloads."""
    if isinstance(arch, DictConfig):
        arch = OmegaConf.to_container(arch, resolve=True)
    config = open_clip.get_model_config(arch) if isinstance(arch, str) else dict(arch)
    if config is None:
        raise ValueError(
            f"unknown open_clip architecture {arch!r} <metrics.clipsim.arch>; use a name from "
            "open_clip.list_models() (e.g. 'ViT-B-32') or a config mapping with embed_dim, vision_cfg, text_cfg"
        )
    missing = [key for key in ("embed_dim", "vision_cfg", "text_cfg") if key not in config]
    if missing:
        raise ValueError(f"open_clip config {arch!r} lacks {missing} <metrics.clipsim.arch>")
    if any(key in config["text_cfg"] for key in ("hf_model_name", "hf_tokenizer_name")):
        raise ValueError(
            f"open_clip architecture {arch!r} uses a Hugging Face text tower/tokenizer, which would be "
            "downloaded; pick a CLIP-text architecture such as ViT-B-32 or ViT-L-14 <metrics.clipsim.arch>"
        )
    return config


def clip_preprocess_settings(
    model: torch.nn.Module,
) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]]:
    """The image size, mean and std an open_clip model expects (its preprocess config, OpenAI's defaults)."""
    preprocess = open_clip.get_model_preprocess_cfg(model)
    image_size = preprocess.get("size", model.visual.image_size)
    image_size = tuple(image_size) if isinstance(image_size, list | tuple) else (image_size, image_size)
    mean = tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD))
    return image_size, mean, std


def build_open_clip_model(
    arch: str | Mapping[str, Any],
    weights_path: str | Path | None,
    *,
    force_quick_gelu: bool = False,
    random_init_ok: bool = False,
    device: str | torch.device = "cpu",
) -> open_clip.CLIP:
    """An open_clip CLIP in eval mode, weights from a local file, never downloaded.

    Args:
        arch: open_clip model name (`"ViT-B-32"`) or a config mapping (`embed_dim`, `vision_cfg`, `text_cfg`).
        weights_path: open_clip state dict (`open_clip_pytorch_model.bin` / `open_clip_model.safetensors`
            as published with the model, or any `.pt`/`.pth`/`.safetensors` with open_clip's key names,
            optionally under `state_dict` and/or with a DataParallel `module.` prefix).
        force_quick_gelu: QuickGELU activations, required by OpenAI's original CLIP weights.
        random_init_ok: allow `weights_path=None` (random network; tests only).
        device: where the model is built (`meta` for shape checks).

    Raises:
        MissingWeightsError: no weights file and `random_init_ok` is False.
        StateDictMismatchError: the file does not fit the architecture.
    """
    if weights_path is None and not random_init_ok:
        raise MissingWeightsError(
            "CLIPSIM needs CLIP weights: set metrics.clipsim.weights_path=/path/to/open_clip_pytorch_model.bin "
            "<metrics.clipsim>"
        )
    config = _architecture_config(arch)
    if isinstance(arch, str):
        model = open_clip.create_model(
            arch,
            pretrained=None,
            load_weights=False,
            pretrained_image=False,
            pretrained_text=False,
            force_quick_gelu=force_quick_gelu,
            device=device,
        )
    else:
        with torch.device(device):
            model = open_clip.CLIP(
                embed_dim=int(config["embed_dim"]),
                vision_cfg=config["vision_cfg"],
                text_cfg=config["text_cfg"],
                quick_gelu=force_quick_gelu or bool(config.get("quick_gelu", False)),
            )
    if weights_path is None:
        log.warning("CLIP with RANDOM weights: CLIPSIM values are meaningless (plumbing/tests only)")
        return model.eval()
    state_dict = load_state_dict_file(weights_path)
    if all(key.startswith("module.") for key in state_dict):
        state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    load_strict(model, state_dict, what="open_clip CLIP", source=str(weights_path))
    return model.eval()


def clip_image_batch(
    frames: Tensor, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    """Frames `[N, 3, H, W]` in [-1, 1] -> CLIP input `[N, 3, size]`: short-side bicubic resize, centre crop,
    normalisation."""
    images = (frames.float() + 1.0) / 2.0
    height, width = images.shape[-2:]
    scale = max(size[0] / height, size[1] / width)
    target = (max(size[0], round(height * scale)), max(size[1], round(width * scale)))
    if (height, width) != target:
        images = F.interpolate(images, size=target, mode="bicubic", align_corners=False, antialias=True)
    top = (images.shape[-2] - size[0]) // 2
    left = (images.shape[-1] - size[1]) // 2
    images = images[..., top : top + size[0], left : left + size[1]].clamp(0.0, 1.0)
    mean_tensor = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_tensor = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images - mean_tensor) / std_tensor


class CLIPSimilarity:
    """Mean frame-prompt CLIP cosine similarity of generated videos (implements `VideoMetric`).

    Args:
        arch: open_clip model name or config mapping (see `build_open_clip_model`).
        weights_path: local CLIP weights.
        force_quick_gelu: QuickGELU (OpenAI weights).
        frames_per_forward: frames per image-encoder call (memory bound; does not change the result).
        random_init_ok: allow a random network (tests only).
        device: where CLIP runs.
    """

    needs_real = False

    def __init__(
        self,
        arch: str | Mapping[str, Any],
        weights_path: str | None,
        *,
        force_quick_gelu: bool = False,
        frames_per_forward: int = 64,
        random_init_ok: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        self.arch_name = arch if isinstance(arch, str) else "custom config"
        self.weights_path = weights_path
        self.frames_per_forward = frames_per_forward
        self.device = resolve_device(device)
        self.model = build_open_clip_model(
            arch,
            weights_path,
            force_quick_gelu=force_quick_gelu,
            random_init_ok=random_init_ok,
            device=self.device,
        )
        self.image_size, self.mean, self.std = clip_preprocess_settings(self.model)
        self.tokenizer = open_clip.SimpleTokenizer(context_length=self.model.context_length)
        self.similarity_sum = 0.0
        self.count = 0

    @torch.inference_mode()
    def video_scores(self, videos: Tensor, prompts: Sequence[str]) -> Tensor:
        """Per-video CLIPSIM `[B]` of videos `[B, T, C, H, W]` in [-1, 1] and their prompts."""
        check_video_batch(videos, "CLIPSIM")
        if len(prompts) != videos.shape[0]:
            raise ValueError(f"CLIPSIM got {videos.shape[0]} videos but {len(prompts)} prompts")
        text = self.model.encode_text(self.tokenizer(list(prompts)).to(self.device), normalize=True)
        frames = rearrange(videos, "b t c h w -> (b t) c h w")
        image_chunks = []
        for chunk in frames.split(self.frames_per_forward):
            pixels = clip_image_batch(chunk.to(self.device), self.image_size, self.mean, self.std)
            image_chunks.append(self.model.encode_image(pixels, normalize=True))
        image = rearrange(torch.cat(image_chunks), "(b t) d -> b t d", b=videos.shape[0])
        cosine = torch.einsum("btd,bd->bt", image.float(), text.float())
        return cosine.mean(dim=1).cpu()

    def update_generated(self, videos: Tensor, prompts: Sequence[str]) -> None:
        scores = self.video_scores(videos, prompts)
        self.similarity_sum += float(scores.sum())
        self.count += len(scores)

    def update_real(self, videos: Tensor) -> None:
        raise RuntimeError("CLIPSIM scores generated videos only; it has no real-video statistics")

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            raise ValueError("CLIPSIM saw no generated videos")
        return {"clipsim": self.similarity_sum / self.count}

    def settings(self) -> dict[str, Any]:
        return {
            "network": f"open_clip {self.arch_name}",
            "weights": str(Path(self.weights_path).name) if self.weights_path else "RANDOM (meaningless)",
            "image_size": list(self.image_size),
            "similarity": "cosine, mean over frames then videos (not x100)",
            "videos": self.count,
        }
