"""Which source frames a clip is made of: by frame stride or by target frame rate.

Two ways to sample `num_frames` frames from a source video of `N` frames at `fps` frames/s:

- by stride (SCVideo appendix, section 1: "every 8th frame", 16 frames): offsets `0, s, 2s, ...`;
- by target frame rate (ART-V supplementary, Table 4: 8 fps training data): frame `k` of the clip is the
  source frame nearest to time `k / target_fps`, i.e. offset `round(k * fps / target_fps)`. A 24 fps
  source read at 8 fps therefore takes every 3rd frame. A source slower than the target repeats frames.

The clip start is drawn uniformly from every start that fits (training) or is the centred start
(validation, deterministic). A video shorter than the clip raises `VideoTooShortError`.
"""

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np


class VideoTooShortError(ValueError):
    """The source video has fewer frames than the clip spans."""


@dataclass(frozen=True)
class FrameSelection:
    """Clip layout: `num_frames` frames, either every `frame_stride`-th frame or resampled to `target_fps`.

    Exactly one of `frame_stride` and `target_fps` must be set.
    """

    num_frames: int
    frame_stride: int | None = None
    target_fps: float | None = None

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"data.num_frames must be >= 1, got {self.num_frames}")
        if (self.frame_stride is None) == (self.target_fps is None):
            raise ValueError(
                "set exactly one of data.frame_stride and data.target_fps "
                f"(got frame_stride={self.frame_stride}, target_fps={self.target_fps}); "
                "set the other one to null"
            )
        if self.frame_stride is not None and self.frame_stride < 1:
            raise ValueError(f"data.frame_stride must be >= 1, got {self.frame_stride}")
        if self.target_fps is not None and self.target_fps <= 0:
            raise ValueError(f"data.target_fps must be > 0, got {self.target_fps}")

    def describe(self) -> str:
        """The config keys this selection comes from, for log lines."""
        if self.frame_stride is not None:
            return f"data.num_frames={self.num_frames}, data.frame_stride={self.frame_stride}"
        return f"data.num_frames={self.num_frames}, data.target_fps={self.target_fps}"

    def offsets(self, source_fps: Fraction | float) -> list[int]:
        """Source-frame offsets of the clip's frames relative to the clip start, length `num_frames`."""
        if self.frame_stride is not None:
            return [k * self.frame_stride for k in range(self.num_frames)]
        frames_per_clip_frame = Fraction(source_fps) / Fraction(self.target_fps).limit_denominator(10_000)
        # nearest source frame to time k / target_fps, halves rounded up
        return [math.floor(k * frames_per_clip_frame + Fraction(1, 2)) for k in range(self.num_frames)]

    def indices(
        self, num_source_frames: int, source_fps: Fraction | float, rng: np.random.Generator | None
    ) -> list[int]:
        """Source frame indices of one clip.

        Args:
            num_source_frames: frames in the source video.
            source_fps: its frame rate.
            rng: draws a random start when given (training); `None` takes the centred start (validation).

        Raises:
            VideoTooShortError: the clip spans more frames than the source has.
        """
        offsets = self.offsets(source_fps)
        span = offsets[-1] + 1
        if span > num_source_frames:
            raise VideoTooShortError(
                f"{num_source_frames} frames at {float(source_fps):.3g} fps, the clip needs {span}"
            )
        last_start = num_source_frames - span
        start = int(rng.integers(0, last_start + 1)) if rng is not None else last_start // 2
        return [start + offset for offset in offsets]
