"""The interface every evaluation metric implements, so `eval.py` can stream videos through all of them.

Videos arrive in batches `[B, T, C, H, W]`, RGB in [-1, 1] (the datamodule's convention). Generated
batches come with their prompts; real batches (FVD, frame FID) come without. After both streams,
`compute()` returns named scalars and `settings()` the protocol details written next to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


class MissingWeightsError(ValueError):
    """A metric's feature network has no weights file and random weights were not allowed."""


@runtime_checkable
class VideoMetric(Protocol):
    """A metric fed with generated (and, if `needs_real`, real) video batches."""

    needs_real: bool

    def update_generated(self, videos: Tensor, prompts: Sequence[str]) -> None:
        """Add generated videos `[B, T, C, H, W]` in [-1, 1] and the prompt of each."""

    def update_real(self, videos: Tensor) -> None:
        """Add real videos `[B, T, C, H, W]` in [-1, 1]."""

    def compute(self) -> dict[str, float]:
        """Named results, e.g. `{"fvd": 123.4}`."""

    def settings(self) -> dict[str, Any]:
        """The protocol details that the numbers depend on (written into the report)."""


def check_video_batch(videos: Tensor, what: str) -> None:
    """Raise a clear error unless `videos` is `[B, T, 3, H, W]`."""
    if videos.ndim != 5 or videos.shape[2] != 3:
        raise ValueError(f"{what}: expected RGB videos [B, T, 3, H, W], got shape {tuple(videos.shape)}")


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` -> CUDA when available, else CPU; anything else as `torch.device`."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
