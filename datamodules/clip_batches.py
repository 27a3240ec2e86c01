"""The batch format of the video datamodule, and what a consumer does with it.

A batch from `VideoDataModule`'s loaders is
- `video`: uint8 `[B, T, C, H, W]` (RGB, 0..255): a quarter of float32's bytes through the worker queues and
  the host-to-device copy; `unit_range_video` makes it float in [-1, 1], on the device
  (`VideoDataModule.on_after_batch_transfer` does so for Lightning's loops);
- `caption`: `list[str]`, `key`: `list[str]` (the sample keys);
- `valid`: bool `[B]`: False marks the padding that fills a validation worker's last batch (zero video, empty
  caption and key), which every consumer leaves out (`valid_samples`, or a masked loss).
"""

from typing import Any

import torch
from torch import Tensor

VALID_KEY = "valid"


def unit_range_video(video: Tensor) -> Tensor:
    """uint8 video `[..., C, H, W]` in 0..255 -> float32 in [-1, 1]; a floating-point video is returned as is."""
    if video.is_floating_point():
        return video
    if video.dtype != torch.uint8:
        raise TypeError(f"a video batch is uint8 or floating point, got {video.dtype}")
    return video.float() / 127.5 - 1.0


def select_samples(batch: dict[str, Any], keep: Tensor) -> dict[str, Any]:
    """The samples of `batch` where the bool mask `keep` `[B]` is True: tensors indexed on their first axis,
    lists filtered, anything else kept as is."""
    keep = keep.to(torch.bool)
    positions = keep.nonzero().flatten().tolist()
    selected: dict[str, Any] = {}
    for name, value in batch.items():
        if isinstance(value, Tensor):
            selected[name] = value[keep.to(value.device)]
        elif isinstance(value, list):
            selected[name] = [value[position] for position in positions]
        else:
            selected[name] = value
    return selected


def valid_samples(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch without its padding (`valid` False) and with its video in [-1, 1] (`unit_range_video`)."""
    if VALID_KEY in batch:
        batch = select_samples(batch, batch[VALID_KEY])
    if "video" in batch:
        batch = {**batch, "video": unit_range_video(batch["video"])}
    return batch
