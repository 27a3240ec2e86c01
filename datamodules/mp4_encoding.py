"""Encode RGB frames as an H.264 mp4 in memory (PyAV, libx264, yuv420p)."""

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch


def encode_mp4(
    frames: np.ndarray,
    fps: float,
    *,
    crf: int = 18,
    preset: str = "veryfast",
    keyframe_interval: int | None = None,
) -> bytes:
    """Encode uint8 RGB frames `[T, H, W, 3]` (H and W even) as an H.264 mp4.

    Args:
        frames: uint8 `[T, H, W, 3]`.
        fps: frame rate written into the stream.
        crf: x264 constant rate factor (lower is better quality; 18 is visually lossless).
        preset: x264 speed preset.
        keyframe_interval: frames between key frames (x264 `g`); `None` keeps x264's default (250).

    Returns:
        The mp4 file as bytes.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    num_frames, height, width, _ = frames.shape
    if num_frames == 0 or height % 2 or width % 2:
        raise ValueError(f"need >= 1 frame and even height/width for yuv420p, got {tuple(frames.shape)}")
    options = {"crf": str(crf), "preset": preset}
    if keyframe_interval is not None:
        options["g"] = str(keyframe_interval)
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=_rate(fps))
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.options = options
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def _rate(fps: float) -> Fraction:
    """The frame rate as a fraction (29.97 -> 30000/1001) so the stream's time base stays exact."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return Fraction(fps).limit_denominator(1001)


def video_tensor_to_uint8(video: torch.Tensor) -> np.ndarray:
    """A video `[T, C, H, W]` with values in [-1, 1] -> uint8 RGB frames `[T, H, W, 3]`."""
    if video.dim() != 4 or video.shape[1] != 3:
        raise ValueError(f"video must be [T, 3, H, W], got {tuple(video.shape)}")
    frames = ((video.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 1).contiguous().numpy()


def write_video(path: str | Path, video: torch.Tensor, fps: float, *, crf: int = 18) -> Path:
    """Write a video `[T, C, H, W]` in [-1, 1] as an H.264 mp4; written to a temporary name then renamed, so a
    crash never leaves a half-written file under the final name."""
    path = Path(path)
    frames = video_tensor_to_uint8(video)
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(
            f"H.264 (yuv420p) needs even height and width, got {frames.shape[1]}x{frames.shape[2]}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(encode_mp4(frames, fps, crf=crf))
    partial.replace(path)
    return path
