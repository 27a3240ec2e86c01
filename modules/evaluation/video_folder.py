"""Folders of videos for evaluation: generated videos with their prompts, or real videos.

A generated folder written by `eval.py` holds `videos.csv` (columns `file,prompt,seed`) next to the mp4
files. A folder from elsewhere (`generated_dir=...`) may instead give each video's prompt in a sidecar
`<name>.txt`, or be named like `sample.py` names its output (`a-red-circle-moving-left_seed0.mp4`,
prompt recovered as "a red circle moving left"; punctuation is lost).

Videos are decoded with the data pipeline's decoder (`datamodules.video_decoding.decode_clip`): the
centred `num_frames`-frame clip at the selection's stride/fps, resized to cover `height x width` (area
filter) and centre-cropped, as `[T, C, H, W]` in [-1, 1].
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor

from datamodules.frame_selection import FrameSelection, VideoTooShortError
from datamodules.video_decoding import CorruptVideoError, decode_clip

log = logging.getLogger(__name__)

MANIFEST_NAME = "videos.csv"
MANIFEST_COLUMNS = ("file", "prompt", "seed")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi")
_SAMPLE_PY_NAME = re.compile(r"^(?P<slug>.+)_seed-?\d+$")


@dataclass(frozen=True)
class VideoEntry:
    """One video file and the prompt it was generated from (None for real videos)."""

    path: Path
    prompt: str | None = None


def write_manifest(directory: Path, rows: Sequence[tuple[str, str, int]]) -> Path:
    """Write `directory/videos.csv` with one `(file, prompt, seed)` row per generated video."""
    path = directory / MANIFEST_NAME
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    return path


def video_files(directory: Path, config_key: str) -> list[Path]:
    """Video files under `directory` (recursively), sorted.

    Raises:
        FileNotFoundError: no such directory, or no video in it.
    """
    if not directory.is_dir():
        raise FileNotFoundError(f"video folder not found: {directory} <{config_key}>")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(
            f"no video files ({', '.join(VIDEO_SUFFIXES)}) under {directory} <{config_key}>"
        )
    return files


def _prompt_without_manifest(path: Path) -> str:
    sidecar = path.with_suffix(".txt")
    if sidecar.is_file():
        return sidecar.read_text(encoding="utf-8").strip()
    match = _SAMPLE_PY_NAME.match(path.stem)
    if match is None:
        raise ValueError(
            f"no prompt for {path}: add {MANIFEST_NAME} (file,prompt,seed) to the folder, a sidecar "
            f"{sidecar.name}, or name the file <prompt-slug>_seed<N>.mp4 as sample.py does <generated_dir>"
        )
    return match["slug"].replace("-", " ")


def generated_videos(directory: str | Path) -> list[VideoEntry]:
    """The generated videos of a folder and their prompts (manifest, sidecar or sample.py file name)."""
    folder = Path(directory)
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        entries = [
            VideoEntry(path, _prompt_without_manifest(path)) for path in video_files(folder, "generated_dir")
        ]
        log.info(
            "%s has no %s: prompts from sidecar .txt files or file names <generated_dir>",
            folder,
            MANIFEST_NAME,
        )
        return entries
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not {"file", "prompt"} <= set(reader.fieldnames or []):
            raise ValueError(f"{manifest}: expected columns file,prompt(,seed), got {reader.fieldnames}")
        entries = [VideoEntry(folder / row["file"], row["prompt"]) for row in reader]
    missing = [str(entry.path) for entry in entries if not entry.path.is_file()]
    if missing:
        raise FileNotFoundError(f"{manifest} lists {len(missing)} missing videos (first: {missing[0]})")
    if not entries:
        raise ValueError(f"{manifest} lists no video <generated_dir>")
    return entries


def decode_video_file(path: Path, selection: FrameSelection, height: int, width: int) -> Tensor:
    """The centred clip of a video file: `[T, C, H, W]` float in [-1, 1].

    Raises:
        CorruptVideoError: undecodable file. VideoTooShortError: fewer frames than the clip needs.
    """
    clip = decode_clip(path.read_bytes(), selection, height=height, width=width, rng=None)
    return rearrange(torch.from_numpy(clip.frames), "t h w c -> t c h w").float() / 127.5 - 1.0


def iter_video_batches(
    entries: Sequence[VideoEntry],
    selection: FrameSelection,
    *,
    height: int,
    width: int,
    batch_size: int,
    skip_unreadable: bool,
) -> Iterator[tuple[Tensor, list[str | None]]]:
    """Batches `([B, T, C, H, W], prompts)` of the entries' clips, in order.

    Args:
        skip_unreadable: skip (and log) corrupt or too-short videos (real folders) instead of raising
            (generated folders, where every video must count).
    """
    videos: list[Tensor] = []
    prompts: list[str | None] = []
    skipped = 0
    for entry in entries:
        try:
            videos.append(decode_video_file(entry.path, selection, height, width))
        except (CorruptVideoError, VideoTooShortError) as error:
            if not skip_unreadable:
                raise ValueError(
                    f"cannot use {entry.path} for {selection.num_frames}-frame clips: {error} <eval_protocol.num_frames>"
                ) from error
            skipped += 1
            log.warning("skipping %s: %s <real_dir>", entry.path, error)
            continue
        prompts.append(entry.prompt)
        if len(videos) == batch_size:
            yield torch.stack(videos), prompts
            videos, prompts = [], []
    if videos:
        yield torch.stack(videos), prompts
    if skipped:
        log.warning("skipped %d unreadable or too-short videos of %d <real_dir>", skipped, len(entries))
