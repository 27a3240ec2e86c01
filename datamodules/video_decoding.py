"""Decode only the frames a clip needs from an encoded video (PyAV), resized and centre-cropped.

The decoder seeks to the key frame at or before the clip's first frame, decodes forward, converts only
the selected frames to RGB (resizing in libswscale) and stops after the clip's last frame: a 16-frame
clip from a 10-second video never decodes the rest of the file.

Frame indices are positions on the stream's average frame-rate grid: a decoded frame with presentation
time `t` (seconds from the stream start) has index `round(t * fps)`. A selected index that falls into a
gap of a variable-frame-rate stream takes the next decoded frame.

Resize: the frame is scaled so that it covers `height x width` (scale = max(height / h, width / w), so for
a square target the shorter side becomes the target size), with area averaging, then centre-cropped.
"""

import io
import math
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from datamodules.frame_selection import FrameSelection, VideoTooShortError


class CorruptVideoError(ValueError):
    """The bytes are not a decodable video (bad container, no video stream, broken bitstream)."""


class NoVideoStreamError(CorruptVideoError):
    """The container holds no video stream (audio only, subtitles)."""


@dataclass(frozen=True)
class DecodedClip:
    """A decoded clip.

    Attributes:
        frames: uint8 RGB frames `[T, H, W, 3]`.
        indices: source frame index of each clip frame, length `T`.
        frames_decoded: how many frames the decoder produced to get them (the seek's cost included).
    """

    frames: np.ndarray
    indices: list[int]
    frames_decoded: int


@dataclass(frozen=True)
class ResizeGeometry:
    """Scale-to-cover then centre-crop: resize to `scaled_height x scaled_width`, crop at (top, left)."""

    scaled_height: int
    scaled_width: int
    top: int
    left: int
    height: int
    width: int

    @classmethod
    def cover(cls, source_height: int, source_width: int, height: int, width: int) -> "ResizeGeometry":
        """Smallest scaling of a `source_height x source_width` frame that covers `height x width`."""
        scale = max(height / source_height, width / source_width)
        scaled_height = max(height, round(source_height * scale))
        scaled_width = max(width, round(source_width * scale))
        top = (scaled_height - height) // 2
        left = (scaled_width - width) // 2
        return cls(scaled_height, scaled_width, top, left, height, width)

    def apply(self, frame: av.VideoFrame) -> np.ndarray:
        """RGB uint8 `[height, width, 3]` of one decoded frame."""
        rgb = frame.reformat(
            width=self.scaled_width, height=self.scaled_height, format="rgb24", interpolation="AREA"
        ).to_ndarray()
        return rgb[self.top : self.top + self.height, self.left : self.left + self.width]


class _SeekMissedError(RuntimeError):
    """The seek landed after the wanted frame (broken index); decode from the start instead."""


def decode_clip(
    data: bytes,
    selection: FrameSelection,
    *,
    height: int,
    width: int,
    rng: np.random.Generator | None = None,
) -> DecodedClip:
    """Decode the clip `selection` picks from an encoded video.

    Args:
        data: the encoded file (mp4, webm, ...), bytes.
        selection: which frames (stride or target fps, `num_frames`).
        height, width: output frame size.
        rng: random clip start when given (training); centred start when `None` (validation).

    Returns:
        DecodedClip with frames `[T, height, width, 3]` uint8.

    Raises:
        CorruptVideoError: the data cannot be decoded.
        VideoTooShortError: the video has fewer frames than the clip spans.
    """
    try:
        try:
            return _decode(data, selection, height, width, rng, allow_seek=True)
        except _SeekMissedError:
            return _decode(data, selection, height, width, rng, allow_seek=False)
    except av.FFmpegError as error:
        raise CorruptVideoError(f"{type(error).__name__}: {error}") from error


def _decode(
    data: bytes,
    selection: FrameSelection,
    height: int,
    width: int,
    rng: np.random.Generator | None,
    allow_seek: bool,
) -> DecodedClip:
    with av.open(io.BytesIO(data), mode="r") as container:
        if not container.streams.video:
            raise NoVideoStreamError("the file has no video stream")
        stream = container.streams.video[0]
        fps = _frame_rate(stream)
        num_frames = _frame_count(stream, container, fps)
        indices = selection.indices(num_frames, fps, rng)
        source_height, source_width = stream.codec_context.height, stream.codec_context.width
        if source_height <= 0 or source_width <= 0:
            raise CorruptVideoError(f"the video stream has no frame size ({source_width}x{source_height})")
        geometry = ResizeGeometry.cover(source_height, source_width, height, width)
        first_index = indices[0]
        start_time = stream.start_time or 0
        seeked = allow_seek and first_index > 0
        if seeked:
            container.seek(start_time + math.floor(first_index / fps / stream.time_base), stream=stream)
        wanted = sorted(set(indices))
        converted: dict[int, np.ndarray] = {}
        frames_decoded = 0
        frame_index = -1
        for frame in container.decode(stream):
            frames_decoded += 1
            if frame.pts is None:
                frame_index += 1
            else:
                frame_index = round((frame.pts - start_time) * stream.time_base * fps)
            if seeked and frames_decoded == 1 and frame_index > first_index:
                raise _SeekMissedError(f"seek to frame {first_index} landed on frame {frame_index}")
            rgb = None
            while len(converted) < len(wanted) and wanted[len(converted)] <= frame_index:
                rgb = geometry.apply(frame) if rgb is None else rgb
                converted[wanted[len(converted)]] = rgb
            if len(converted) == len(wanted):
                break
        if len(converted) < len(wanted):
            raise VideoTooShortError(
                f"the stream ended at frame {frame_index} although its header announces {num_frames} frames; "
                f"the clip needs frame {wanted[-1]}"
            )
    frames = np.stack([converted[index] for index in indices])
    return DecodedClip(frames=frames, indices=indices, frames_decoded=frames_decoded)


def stream_timing(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> tuple[Fraction, int]:
    """The frame rate and frame count `decode_clip` places a clip's frames by (the header's, not counted).

    Raises:
        CorruptVideoError: the stream has no frame rate, or neither a frame count nor a duration.
    """
    fps = _frame_rate(stream)
    return fps, _frame_count(stream, container, fps)


def _frame_rate(stream: av.video.stream.VideoStream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise CorruptVideoError("the video stream has no frame rate")
    return Fraction(rate)


def _frame_count(
    stream: av.video.stream.VideoStream, container: av.container.InputContainer, fps: Fraction
) -> int:
    """Frames in the stream: the container's count, else estimated from the duration."""
    if stream.frames > 0:
        return int(stream.frames)
    if stream.duration is not None:
        return math.floor(stream.duration * stream.time_base * fps)
    if container.duration is not None:
        return math.floor(Fraction(container.duration, av.time_base) * fps)
    raise CorruptVideoError("the video stream has neither a frame count nor a duration")
