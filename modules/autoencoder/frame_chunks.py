"""Apply an image autoencoder to a video a few frames at a time."""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch import Tensor


def map_frame_chunks(frame_fn: Callable[[Tensor], Tensor], video: Tensor, chunk_size: int) -> Tensor:
    """Run `frame_fn` on at most `chunk_size` frames at a time.

    video: `[B, C, T, H, W]`; frame_fn: `[n, C, H, W] -> [n, C', H', W']`; returns `[B, C', T, H', W']`.
    Frames of all videos are processed in (b, t) order, so a chunk may span two videos. Peak activation memory
    is that of one chunk, whatever T is; the input and output videos themselves are held whole.
    """
    if video.ndim != 5:
        raise ValueError(f"expected a video [B, C, T, H, W], got shape {tuple(video.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    frames = rearrange(video, "b c t h w -> (b t) c h w")
    outputs = [
        frame_fn(frames[start : start + chunk_size]) for start in range(0, frames.shape[0], chunk_size)
    ]
    return rearrange(torch.cat(outputs), "(b t) c h w -> b c t h w", b=video.shape[0])
