"""A small validation corpus like a real-world one: good videos in several containers, codecs and sizes, and one
sample of every fault the loader skips, in shards of unequal size.

Good videos show `index_pattern_frames` (each frame its own index), so a test can check which source frames a
clip holds. Every sample has WebVid-style metadata (`videoid`) except the bad-JSON one.

Shards (in order; 10 good samples, 9 faulty ones):
- `00000.tar`: one good video, a zero-byte video and random bytes;
- `00001.tar`: seven good videos among a too-short, an audio-only, a caption-less, a bad-JSON, a truncated and a
  video-less sample;
- `00002.tar`: two good videos and a third whose video the end of the shard cuts off (a truncated download).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from tests.helpers.data_shards import cut_shard_in_member, index_pattern_frames, write_raw_shard
from tests.helpers.video_files import write_audio_only_file

# container -> (PyAV format, encoder, encoder options); every one keeps the index stripes readable
_CODECS: dict[str, tuple[str, str, dict[str, str]]] = {
    "mp4": ("mp4", "libx264", {"preset": "ultrafast", "crf": "18"}),
    "mkv": ("matroska", "libx264", {"preset": "ultrafast", "crf": "18"}),
    "webm": ("webm", "libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}),
    "avi": ("avi", "mpeg4", {"qscale": "2"}),
}


@dataclass(frozen=True)
class GoodVideo:
    """A usable sample: its container, source frame count, frame rate and frame size (height, width)."""

    container: str
    num_frames: int
    fps: float
    height: int = 32
    width: int = 32


@dataclass
class FaultCorpus:
    """The shards, and what each sample is.

    Attributes:
        urls: the shard paths, in order.
        good: sample key -> the good video it holds.
        bad: sample key -> the reason the loader must skip it for (`stream_counters.SKIP_REASONS`).
        videoids: sample key -> the `videoid` in its metadata (not for the bad-JSON sample).
    """

    urls: list[str]
    good: dict[str, GoodVideo] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)
    videoids: dict[str, str] = field(default_factory=dict)


def encode_index_video(video: GoodVideo) -> bytes:
    """`index_pattern_frames` encoded as `video` says."""
    container_format, codec, options = _CODECS[video.container]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=Fraction(video.fps).limit_denominator(1001))
        stream.height, stream.width = video.height, video.width
        stream.pix_fmt = "yuv420p"
        stream.options = options
        for rgb in index_pattern_frames(video.num_frames, video.height, video.width):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


class _ShardBuilder:
    """Members of one shard and the corpus's record of its samples."""

    def __init__(self, corpus: FaultCorpus, shard: int) -> None:
        self.corpus = corpus
        self.shard = shard
        self.members: list[tuple[str, bytes]] = []

    def add(
        self,
        extension: str | None,
        video: bytes | None,
        *,
        caption: str | None = "a caption",
        metadata: bytes | None = None,
        good: GoodVideo | None = None,
        reason: str | None = None,
    ) -> str:
        key = f"{self.shard:05d}{len(self.members):04d}"
        videoid = str(1000 + len(self.corpus.good) + len(self.corpus.bad))
        if metadata is None:
            metadata = json.dumps({"videoid": videoid, "key": key}).encode()
            self.corpus.videoids[key] = videoid
        if video is not None:
            self.members.append((f"{key}.{extension}", video))
        if caption is not None:
            self.members.append((f"{key}.txt", caption.encode()))
        self.members.append((f"{key}.json", metadata))
        if good is not None:
            self.corpus.good[key] = good
        else:
            self.corpus.bad[key] = reason
        return key

    def add_good(self, video: GoodVideo) -> str:
        return self.add(video.container, encode_index_video(video), caption="video", good=video)


def write_fault_corpus(directory: Path) -> FaultCorpus:
    """Write the corpus's three shards into `directory`; returns what is in them."""
    corpus = FaultCorpus(urls=[])
    short = encode_index_video(GoodVideo("mp4", 5, 24.0))
    full = encode_index_video(GoodVideo("mp4", 24, 24.0))
    audio_only = write_audio_only_file(directory / "audio_only.mp4").read_bytes()

    first = _ShardBuilder(corpus, 0)
    first.add_good(GoodVideo("mp4", 20, 24.0))
    first.add("mp4", b"", reason="empty")
    first.add("mp4", np.random.default_rng(0).bytes(3000), reason="corrupt")

    second = _ShardBuilder(corpus, 1)
    second.add_good(GoodVideo("webm", 18, 30.0))
    second.add("mp4", short, reason="too_short")
    second.add_good(GoodVideo("mkv", 21, 25.0, height=64, width=48))
    second.add("mp4", audio_only, reason="no_video_stream")
    second.add_good(GoodVideo("avi", 19, 24.0))
    second.add("mp4", full, caption=None, reason="missing_caption")
    second.add_good(GoodVideo("mp4", 16, 24.0, height=48, width=32))
    second.add("mp4", full, metadata=b"{'videoid': not json", reason="bad_metadata")
    second.add_good(GoodVideo("mp4", 30, 12.0))
    second.add("mp4", full[: len(full) // 2], reason="corrupt")  # the index at the end is cut off
    second.add_good(GoodVideo("webm", 22, 24.0, height=48, width=32))
    second.add(None, None, reason="missing_video")
    second.add_good(GoodVideo("mp4", 26, 24.0))

    third = _ShardBuilder(corpus, 2)
    third.add_good(GoodVideo("mkv", 17, 24.0))
    third.add_good(GoodVideo("mp4", 23, 30.0))
    cut_off = third.add("mp4", full, reason="unreadable_shard")

    for builder in (first, second, third):
        corpus.urls.append(str(write_raw_shard(directory / f"{builder.shard:05d}.tar", builder.members)))
    cut_shard_in_member(Path(corpus.urls[-1]), f"{cut_off}.mp4")
    return corpus
