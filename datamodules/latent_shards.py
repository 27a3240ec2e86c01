"""Latent shards: video shards turned once into the frozen first stage's posterior moments, so that training
neither decodes video nor runs the VAE at every step (what finetrainers, the ModelScope fine-tuner and Open-Sora's
feature extraction offer).

    python -m datamodules.encode_latents experiment=artv_webvid backbone.pretrained=/w/v2-1_512-ema-pruned.ckpt \
        'data.train_urls="/data/webvid/shards/{00000..09999}.tar"' --out /data/webvid/latents/train --workers 2
    python train.py experiment=artv_webvid data=webvid_latents data.train_urls=/data/webvid/latents/train ...

Format (WebDataset tars, one per input shard, same name). Each sample `KEY` holds
- `KEY.moments.npy`: the posterior moments of EVERY frame of the video at the experiment's frame sampling (every
  `data.frame_stride`-th source frame, or resampled to `data.target_fps`), resized and centre-cropped to the
  experiment's resolution as the video loader does: `[N, M, h, w]` (M = 2 x latent channels for the SD VAE: mean and
  log-variance; fp16 by default). The training stream cuts random `data.num_frames`-frame clips from them, so random
  clip starts still work (on the sampling grid).
- `KEY.txt` (caption), `KEY.json` (the source metadata plus `latent_frames`: N).
- with `--text-embeddings`, `KEY.text.npy`: the frozen text encoder's output for the caption `[L, D]` (fp16), used
  instead of running the text encoder (caption dropout then still drops it to the empty prompt's embedding).
Next to the shards, `latents_info.json` records what made them (`LatentSetInfo`): the first stage's config and
pretrained file, resolution, frame sampling, dtype, text encoder; `check_latent_set` refuses an experiment that
differs, naming the key. `encode_report.json` lists every skipped sample once with its reason.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

INFO_FILE = "latents_info.json"
REPORT_FILE = "encode_report.json"
MOMENTS_MEMBER = "moments.npy"
TEXT_MEMBER = "text.npy"


@dataclass(frozen=True)
class LatentSetInfo:
    """What a set of latent shards was made with; `check_latent_set` compares it with an experiment's config."""

    first_stage: dict[str, Any]  # backbone.first_stage, resolved
    pretrained: (
        str | None
    )  # file name of backbone.pretrained (the VAE weights), None for random/parameter-free
    pretrained_bytes: int | None  # its size, which tells two files of one name apart
    height: int
    width: int
    frame_stride: int | None
    target_fps: float | None
    dtype: str  # of the stored moments
    text_encoder: dict[str, Any] | None  # text_encoder config when text embeddings are stored, else None

    def write(self, directory: str | Path) -> None:
        path = Path(directory) / INFO_FILE
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read(cls, directory: str | Path) -> LatentSetInfo | None:
        path = Path(directory) / INFO_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else None


def _pretrained_identity(path: str | None) -> tuple[str | None, int | None]:
    if path is None:
        return None, None
    file = Path(path)
    return file.name, file.stat().st_size if file.is_file() else None


def latent_set_info(cfg: Any, dtype: str, with_text: bool) -> LatentSetInfo:
    """The `LatentSetInfo` an experiment config (a resolved-able DictConfig) implies."""
    from omegaconf import OmegaConf

    name, size = _pretrained_identity(cfg.backbone.get("pretrained"))
    text = OmegaConf.to_container(cfg.text_encoder, resolve=True) if with_text else None
    return LatentSetInfo(
        first_stage=OmegaConf.to_container(cfg.backbone.first_stage, resolve=True),
        pretrained=name,
        pretrained_bytes=size,
        height=int(cfg.resolution.height),
        width=int(cfg.resolution.width),
        frame_stride=cfg.data.frame_stride,
        target_fps=None if cfg.data.target_fps is None else float(cfg.data.target_fps),
        dtype=dtype,
        text_encoder=text,
    )


# LatentSetInfo field -> the config key a user changes to match it
_CONFIG_KEYS = {
    "first_stage": "backbone.first_stage",
    "pretrained": "backbone.pretrained",
    "pretrained_bytes": "backbone.pretrained",
    "height": "resolution.height",
    "width": "resolution.width",
    "frame_stride": "data.frame_stride",
    "target_fps": "data.target_fps",
    "text_encoder": "text_encoder",
}


def mismatches(recorded: LatentSetInfo, expected: LatentSetInfo) -> list[str]:
    """The config keys whose values differ between two infos (dtype and whether text is stored may differ)."""
    found = []
    for field, key in _CONFIG_KEYS.items():
        if field == "text_encoder" and recorded.text_encoder is None:
            continue  # no text stored: the run encodes captions itself
        if getattr(recorded, field) != getattr(expected, field) and key not in found:
            found.append(key)
    return found


def check_latent_set(directory: str | Path, expected: LatentSetInfo, config_key: str) -> LatentSetInfo:
    """The info of the latent shards in `directory`; raises ValueError naming the first config key that differs
    from `expected`, or that the directory holds no `latents_info.json`."""
    recorded = LatentSetInfo.read(directory)
    if recorded is None:
        raise ValueError(
            f"{config_key}: {directory} has no {INFO_FILE}; it is not a latent shard set written by "
            "`python -m datamodules.encode_latents`"
        )
    differing = mismatches(recorded, expected)
    if differing:
        key = differing[0]
        raise ValueError(
            f"{config_key}: the latents in {directory} were made with another {key} "
            f"({_describe(recorded, key)} vs this run's {_describe(expected, key)}); re-encode them with this "
            "experiment or train with the settings they were made with"
        )
    return recorded


def _describe(info: LatentSetInfo, key: str) -> str:
    fields = [field for field, config_key in _CONFIG_KEYS.items() if config_key == key]
    return ", ".join(f"{field}={getattr(info, field)!r}" for field in fields)


def encode_array(array: np.ndarray) -> bytes:
    """An array as `.npy` bytes (no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def decode_array(data: bytes) -> np.ndarray:
    """`.npy` bytes -> array; refuses pickled object arrays."""
    return np.load(io.BytesIO(data), allow_pickle=False)
