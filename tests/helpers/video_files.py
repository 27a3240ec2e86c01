"""Small real video files, good and broken, for tests that read a folder of videos (shard writer, probe).

The container and codec follow the file name: `.mp4` and `.mov` H.264, `.mkv` H.264 in Matroska, `.webm`
VP9, `.avi` MPEG-4 part 2. Files are written through a path, not a buffer, because an mp4 with its index at
the front (`faststart`) is rewritten in place by the muxer.
"""

import csv
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# suffix -> (PyAV container format, encoder, encoder options)
_ENCODINGS: dict[str, tuple[str, str, dict[str, str]]] = {
    ".mp4": ("mp4", "libx264", {"preset": "ultrafast"}),
    ".mov": ("mov", "libx264", {"preset": "ultrafast"}),
    ".mkv": ("matroska", "libx264", {"preset": "ultrafast"}),
    ".webm": ("webm", "libvpx-vp9", {"deadline": "realtime", "cpu-used": "8"}),
    ".avi": ("avi", "mpeg4", {}),
}


def gradient_frames(num_frames: int, size: int = 32) -> np.ndarray:
    """uint8 RGB frames `[T, size, size, 3]`: a horizontal gradient that brightens frame by frame."""
    ramp = np.linspace(0, 160, size, dtype=np.float32)[None, :, None]
    frames = [
        np.broadcast_to(ramp + 90 * index / max(1, num_frames - 1), (size, size, 3))
        for index in range(num_frames)
    ]
    return np.stack(frames).round().astype(np.uint8)


def write_video_file(
    path: Path, num_frames: int, *, fps: float = 24.0, size: int = 32, faststart: bool = False
) -> Path:
    """Encode `gradient_frames` as the container and codec `path`'s suffix names; `faststart` puts an mp4's
    index before the frames (a cut-off download of such a file still opens)."""
    if path.suffix.lower() not in _ENCODINGS:
        raise ValueError(f"no test encoding for {path.suffix!r}; use one of {sorted(_ENCODINGS)}")
    container_format, codec, codec_options = _ENCODINGS[path.suffix.lower()]
    container_options = {"movflags": "faststart"} if faststart else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", format=container_format, options=container_options) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width = size
        stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = codec_options
        for rgb in gradient_frames(num_frames, size):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return path


def write_audio_only_file(path: Path, seconds: float = 0.5, sample_rate: int = 8000) -> Path:
    """An mp4 (whatever `path`'s suffix) holding one AAC audio stream of silence and no video."""
    path.parent.mkdir(parents=True, exist_ok=True)
    frame_samples = 1024
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=sample_rate)
        stream.layout = "mono"
        for index in range(max(1, round(seconds * sample_rate / frame_samples))):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, frame_samples), dtype=np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate = sample_rate
            frame.pts = index * frame_samples
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_truncated_copy(source: Path, path: Path, keep_fraction: float = 0.5) -> Path:
    """The first `keep_fraction` of `source`'s bytes (a download cut off part way)."""
    data = source.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def write_random_file(path: Path, num_bytes: int = 4096, seed: int = 0) -> Path:
    """`num_bytes` random bytes (not a video, whatever the name says)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).bytes(num_bytes))
    return path


WEBVID_HEADER = ("videoid", "contentUrl", "duration", "page_dir", "name")


def write_webvid_csv(path: Path, captions: dict[str, str]) -> Path:
    """A WebVid-style CSV with one row per `videoid -> caption`, in the given order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(WEBVID_HEADER)
        for videoid, caption in captions.items():
            writer.writerow([videoid, f"https://example.org/{videoid}.mp4", "PT00H00M01S", "dir", caption])
    return path
