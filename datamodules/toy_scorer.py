"""Read a toy "shapes" video back: which colour and which motion direction does it show?

For end-to-end quality checks of models trained on `data=shapes`: generate from "a red circle moving
left" and score whether the video shows a red thing moving left.

Algorithm, on RGB in [0, 1]:
1. background = per-channel median over all pixels of all frames (the shape covers a few % of a frame);
2. per frame, difference = max over channels of |pixel - background|; foreground = difference above
   max(`MIN_THRESHOLD`, half the frame's 99th-percentile difference) - a per-frame threshold, so a
   noisy or dim generated frame still yields its brightest blob;
3. colour = palette colour (`toy_shapes.COLORS`) nearest to the difference-weighted mean foreground
   colour, both scaled to a maximum channel of 1 (brightness-invariant, so a dim or edge-blurred
   red is still red);
4. direction = axis and sign of the foreground centroid's displacement, estimated as the least-squares
   slope of the centroid over the frames times the clip length (robust to single noisy frames).
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from einops import rearrange

from datamodules.toy_shapes import COLORS, DIRECTIONS, SHAPES

MIN_THRESHOLD = 0.15
_QUANTILE = 0.99
_PALETTE_NAMES = list(COLORS)
_PALETTE = np.asarray([COLORS[name] for name in _PALETTE_NAMES], dtype=np.float64) / 255.0
_CAPTION = re.compile(
    rf"\b(?P<color>{'|'.join(COLORS)})\s+(?P<shape>{'|'.join(SHAPES)})\s+moving\s+(?P<direction>{'|'.join(DIRECTIONS)})\b"
)


@dataclass(frozen=True)
class ToyVideoScore:
    """What a video shows: `color` and `direction` (None when no foreground was found), the centroid
    displacement `(dx, dy)` over the clip in fractions of the frame width/height, and how many frames
    had foreground."""

    color: str | None
    direction: str | None
    displacement: tuple[float, float]
    foreground_frames: int


def score_video(video: torch.Tensor | np.ndarray | str | Path) -> ToyVideoScore:
    """Score one video: a tensor `[T, C, H, W]` in [-1, 1], uint8 frames `[T, H, W, 3]`, or an mp4 path."""
    rgb = _box_blur(read_rgb(video))
    background = np.median(rgb.reshape(-1, 3), axis=0)
    difference = np.abs(rgb - background).max(axis=-1)
    per_frame_quantile = np.quantile(difference.reshape(len(difference), -1), _QUANTILE, axis=1)
    thresholds = np.maximum(MIN_THRESHOLD, 0.5 * per_frame_quantile)
    weights = np.where(difference > thresholds[:, None, None], difference, 0.0)
    frame_weights = weights.sum(axis=(1, 2))
    valid = frame_weights > 0
    if not valid.any():
        return ToyVideoScore(color=None, direction=None, displacement=(0.0, 0.0), foreground_frames=0)
    mean_color = (weights[..., None] * rgb).sum(axis=(0, 1, 2)) / weights.sum()
    color = _nearest_palette_color(mean_color)
    num_frames, height, width = difference.shape
    if valid.sum() < 2:
        return ToyVideoScore(color=color, direction=None, displacement=(0.0, 0.0), foreground_frames=1)
    rows, columns = np.arange(height), np.arange(width)
    centroid_x = (weights[valid].sum(axis=1) * columns).sum(axis=1) / frame_weights[valid]
    centroid_y = (weights[valid].sum(axis=2) * rows).sum(axis=1) / frame_weights[valid]
    times = np.flatnonzero(valid).astype(np.float64)
    dx = np.polyfit(times, centroid_x, 1)[0] * (num_frames - 1) / width
    dy = np.polyfit(times, centroid_y, 1)[0] * (num_frames - 1) / height
    return ToyVideoScore(color, _direction_of(dx, dy), (float(dx), float(dy)), int(valid.sum()))


def parse_caption(caption: str) -> tuple[str, str, str]:
    """`"a red circle moving left"` -> `("red", "circle", "left")`.

    Raises:
        ValueError: the caption is not a toy caption.
    """
    match = _CAPTION.search(caption.lower())
    if match is None:
        raise ValueError(
            f"not a toy shapes caption: {caption!r}; expected 'a <color> <shape> moving <direction>'"
        )
    return match["color"], match["shape"], match["direction"]


def score_batch(videos: torch.Tensor, captions: Sequence[str]) -> dict[str, float]:
    """Accuracy of a batch of videos `[B, T, C, H, W]` in [-1, 1] against their toy captions.

    Returns:
        `color_accuracy`, `direction_accuracy` and `joint_accuracy` (both right), each in [0, 1].
    """
    if len(videos) != len(captions):
        raise ValueError(f"{len(videos)} videos but {len(captions)} captions")
    color_hits = direction_hits = joint_hits = 0
    for video, caption in zip(videos, captions, strict=True):
        color, _, direction = parse_caption(caption)
        score = score_video(video)
        color_hits += score.color == color
        direction_hits += score.direction == direction
        joint_hits += score.color == color and score.direction == direction
    count = max(1, len(captions))
    return {
        "color_accuracy": color_hits / count,
        "direction_accuracy": direction_hits / count,
        "joint_accuracy": joint_hits / count,
    }


def _direction_of(dx: float, dy: float) -> str:
    """The dominant axis of a displacement and its sign, in image coordinates (y grows downwards)."""
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def _nearest_palette_color(color: np.ndarray) -> str:
    scaled = color / max(float(color.max()), 1e-6)
    return _PALETTE_NAMES[int(np.argmin(((_PALETTE - scaled) ** 2).sum(axis=1)))]


def _box_blur(rgb: np.ndarray) -> np.ndarray:
    """3 x 3 spatial mean of `[T, H, W, 3]` frames (edges averaged over the pixels inside): damps pixel noise."""
    frames = torch.from_numpy(rearrange(rgb, "t h w c -> t c h w"))
    blurred = torch.nn.functional.avg_pool2d(frames, 3, stride=1, padding=1, count_include_pad=False)
    return rearrange(blurred.numpy(), "t c h w -> t h w c")


def read_rgb(video: torch.Tensor | np.ndarray | str | Path) -> np.ndarray:
    """RGB float64 `[T, H, W, 3]` in [0, 1]."""
    if isinstance(video, str | Path):
        with av.open(str(video)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        if not frames:
            raise ValueError(f"{video}: no frames could be decoded")
        return np.stack(frames).astype(np.float64) / 255.0
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [T, H, W, 3], got shape {video.shape}")
        return video.astype(np.float64) / 255.0
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"expected a video tensor [T, C, H, W] with C = 3, got shape {tuple(video.shape)}")
    frames = rearrange(video.detach().float().cpu(), "t c h w -> t h w c").numpy().astype(np.float64)
    return np.clip((frames + 1.0) / 2.0, 0.0, 1.0)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m datamodules.toy_scorer VIDEO.mp4 [...]`: print the colour and direction each video shows."""
    import argparse

    parser = argparse.ArgumentParser(
        description="Score toy 'shapes' videos: which colour, which motion direction."
    )
    parser.add_argument("videos", nargs="+", type=Path, help="mp4 files")
    for path in parser.parse_args(argv).videos:
        if not path.is_file():
            raise SystemExit(f"video not found: {path}")
        score = score_video(path)
        print(
            f"{path}: {score.color} shape moving {score.direction} (displacement {score.displacement[0]:+.3f}, "
            f"{score.displacement[1]:+.3f} of the frame)"
        )


if __name__ == "__main__":
    main()
