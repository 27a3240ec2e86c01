"""Data-test helpers: videos whose frames encode their own index, and raw shard writing."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import torch

from datamodules.clip_batches import unit_range_video
from datamodules.mp4_encoding import encode_mp4

INDEX_BITS = 8


def index_pattern_frames(num_frames: int, height: int = 64, width: int = 64) -> np.ndarray:
    """Frames `[T, H, W, 3]` uint8 whose index is written in binary as 8 full-height vertical stripes.

    Stripe `b` (from the left, `width / 8` px wide) is white when bit `b` of the frame index is set,
    black otherwise: the pattern survives H.264, a resize and a centre crop that keeps the full width.
    """
    if num_frames > 2**INDEX_BITS:
        raise ValueError(f"at most {2**INDEX_BITS} frames can be indexed, got {num_frames}")
    stripe = width // INDEX_BITS
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    for index in range(num_frames):
        for bit in range(INDEX_BITS):
            if (index >> bit) & 1:
                frames[index, :, bit * stripe : (bit + 1) * stripe] = 255
    return frames


def read_frame_index(frame: np.ndarray | torch.Tensor) -> int:
    """Index encoded by `index_pattern_frames` in one frame: uint8 `[H, W, 3]`, or a tensor `[C, H, W]`, uint8 or
    float in [-1, 1]."""
    if isinstance(frame, torch.Tensor):
        gray = ((unit_range_video(frame).mean(dim=0) + 1.0) * 127.5).numpy()
    else:
        gray = frame.astype(np.float64).mean(axis=-1)
    height, width = gray.shape
    stripe = width / INDEX_BITS
    middle_rows = gray[height // 4 : height - height // 4]
    index = 0
    for bit in range(INDEX_BITS):
        center = int((bit + 0.5) * stripe)
        if middle_rows[:, center].mean() > 127.5:
            index |= 1 << bit
    return index


def index_video(
    num_frames: int, fps: float = 24.0, keyframe_interval: int | None = None, **size: int
) -> bytes:
    """An mp4 of `index_pattern_frames`."""
    return encode_mp4(index_pattern_frames(num_frames, **size), fps, keyframe_interval=keyframe_interval)


def write_raw_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar with exactly these `(name, data)` members, in order (for fault injection)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def cut_shard_in_member(path: Path, member: str) -> Path:
    """Cut a shard in the middle of the data of its member `member` (a truncated download)."""
    with tarfile.open(path) as tar:
        info = tar.getmember(member)
    path.write_bytes(path.read_bytes()[: info.offset_data + info.size // 2])
    return path


def sample_members(key: str, video: bytes | None, caption: str | None) -> list[tuple[str, bytes]]:
    """The video2dataset members of one sample; None leaves a member out."""
    members = []
    if video is not None:
        members.append((f"{key}.mp4", video))
    if caption is not None:
        members.append((f"{key}.txt", caption.encode()))
    members.append((f"{key}.json", json.dumps({"key": key}).encode()))
    return members


def write_index_shards(
    directory: Path, num_shards: int, samples_per_shard: int, num_frames: int = 24, fps: float = 24.0
) -> list[str]:
    """Shards of index-pattern videos keyed `SSSSSIIII`, caption "video SSSSSIIII"; returns their paths."""
    video = index_video(num_frames, fps=fps, height=32, width=32)
    paths = []
    for shard in range(num_shards):
        members = []
        for position in range(samples_per_shard):
            key = f"{shard:05d}{position:04d}"
            members += sample_members(key, video, f"video {key}")
        paths.append(str(write_raw_shard(directory / f"{shard:05d}.tar", members)))
    return paths
