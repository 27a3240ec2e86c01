"""Check a video file before it goes into a shard: there, readable, a video, long enough for the clip.

`probe_video_file` gives each file one verdict; `None` means usable, otherwise one of `PROBE_REASONS`:

- `missing`: no `<videoid>.<ext>` for any extension the loader reads (`VIDEO_EXTENSIONS`);
- `unreadable`: the file exists but cannot be read (permissions, I/O error);
- `empty`: zero bytes;
- `corrupt`: PyAV cannot open it, read its packets or decode its first frame, or the stream has no frame
  size or frame rate;
- `no_video_stream`: a container without video (audio only, subtitles);
- `truncated`: fewer frames in the file than its index announces (a cut-off download of an mp4 whose
  index sits at the front);
- `too_short`: fewer frames than the clip spans at the stream's frame rate (`FrameSelection`).

What the probe reads: the container header, every packet of the video stream (demuxed, not decoded: this
counts the frames really in the file) and the first decoded frame (the codec and the start of the bitstream
work). Damage inside the bitstream after the first frame is not seen; the loader skips such samples when
it meets them. Frame counts are those `video_decoding.decode_clip` places clips by: the header's count, or
fewer when fewer frames are in the file.
"""

from dataclasses import dataclass
from pathlib import Path

import av

from datamodules.frame_selection import FrameSelection
from datamodules.video_clip_stream import VIDEO_EXTENSIONS
from datamodules.video_decoding import CorruptVideoError, stream_timing

PROBE_REASONS = ("missing", "unreadable", "empty", "corrupt", "no_video_stream", "truncated", "too_short")
# Frames a header's duration-based estimate may exceed the frames in the file by before the file counts as
# truncated (the estimate is rounded; an exact count from an mp4 index gets no slack).
_ESTIMATE_SLACK = 1


@dataclass(frozen=True)
class FileState:
    """Which video file, by name within the videos folder, and which version of it (size, mtime): a rerun
    compares states to see that a file arrived or changed. `name=None`: no file."""

    name: str | None
    size: int = 0
    mtime_ns: int = 0

    @classmethod
    def of(cls, path: Path | None) -> "FileState":
        """The state of `path` now (`path=None`: no file)."""
        if path is None:
            return cls(None)
        stat = path.stat()
        return cls(path.name, stat.st_size, stat.st_mtime_ns)

    def as_dict(self) -> dict[str, str | int | None]:
        """JSON form."""
        return {"name": self.name, "size": self.size, "mtime_ns": self.mtime_ns}


@dataclass(frozen=True)
class ProbeResult:
    """One file's verdict: `reason` None (usable) or one of `PROBE_REASONS`, with a one-line `detail`."""

    state: FileState
    reason: str | None
    detail: str


def find_video_file(videos_dir: Path, videoid: str) -> Path | None:
    """`videos_dir/<videoid>.<ext>` for the first extension in `VIDEO_EXTENSIONS` (lower, then upper case)
    that exists; None when there is none."""
    for extension in VIDEO_EXTENSIONS:
        for suffix in (extension, extension.upper()):
            path = videos_dir / f"{videoid}.{suffix}"
            if path.is_file():
                return path
    return None


def probe_video_file(videos_dir: str, videoid: str, selection: FrameSelection) -> ProbeResult:
    """Find the video of `videoid` in `videos_dir` and check that a clip of `selection` can be read from it.

    A module-level function of picklable arguments, so that a process pool can run it.
    """
    directory = Path(videos_dir)
    try:
        path = find_video_file(directory, videoid)
        state = FileState.of(path)
    except OSError as error:
        return ProbeResult(FileState(None), "unreadable", f"{type(error).__name__}: {error}")
    if path is None:
        names = "{" + ",".join(VIDEO_EXTENSIONS) + "}"
        return ProbeResult(state, "missing", f"no {videoid}.{names} in {directory}")
    if state.size == 0:
        return ProbeResult(state, "empty", f"{path.name} is 0 bytes")
    try:
        reason, detail = _probe_container(path, selection)
    except PermissionError as error:
        return ProbeResult(state, "unreadable", f"{type(error).__name__}: {error}")
    except (av.FFmpegError, CorruptVideoError) as error:
        return ProbeResult(state, "corrupt", f"{path.name}: {error}")
    return ProbeResult(state, reason, f"{path.name}: {detail}" if detail else "")


def _probe_container(path: Path, selection: FrameSelection) -> tuple[str | None, str]:
    """`(reason or None, detail)` of one non-empty file."""
    with av.open(str(path), mode="r") as container:
        if not container.streams.video:
            kinds = sorted({stream.type for stream in container.streams}) or ["none"]
            return "no_video_stream", f"streams: {', '.join(kinds)}"
        stream = container.streams.video[0]
        if stream.codec_context.width <= 0 or stream.codec_context.height <= 0:
            return "corrupt", "the video stream has no frame size"
        fps, announced = stream_timing(container, stream)
        present, decoded_first = _count_packets(container, stream)
    if not decoded_first:
        return "corrupt", f"no frame decodes ({present} packets)"
    slack = 0 if stream.frames > 0 else _ESTIMATE_SLACK
    if present + slack < announced:
        return "truncated", f"{present} of the {announced} frames its header announces are in the file"
    usable = min(present, announced)
    span = selection.offsets(fps)[-1] + 1
    if usable < span:
        return "too_short", f"{usable} frames at {float(fps):.3g} fps, the clip needs {span}"
    return None, ""


def _count_packets(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> tuple[int, bool]:
    """Video packets in the file (one a frame), and whether a frame decodes from the first ones."""
    present = 0
    decoded_first = False
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        present += 1
        if not decoded_first:
            decoded_first = bool(stream.codec_context.decode(packet))
    if present and not decoded_first:
        decoded_first = bool(stream.codec_context.decode(None))
    return present, decoded_first


def probe_task(task: tuple[int, str, str, FrameSelection]) -> tuple[int, ProbeResult]:
    """`(row, videos_dir, videoid, selection) -> (row, probe_video_file(...))`, for `Pool.imap`."""
    row, videos_dir, videoid, selection = task
    return row, probe_video_file(videos_dir, videoid, selection)


def file_state_now(videos_dir: str | Path, videoid: str) -> FileState:
    """The state of `videoid`'s video file now (`FileState(None)` when there is none or it cannot be read)."""
    try:
        return FileState.of(find_video_file(Path(videos_dir), videoid))
    except OSError:
        return FileState(None)
