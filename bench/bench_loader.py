"""Data loader throughput: clips/s and decoded frames/s for 16 x 256 x 256 clips with 0, 1 and 2 workers.

    python -m bench.bench_loader                 # writes the bench_loader section of docs/BENCHMARKS.md
    python -m bench.bench_loader --no-write      # only logs the results

Generates synthetic H.264 videos in a temporary directory (320 x 256 px, 144 frames at 24 fps: a toy
shape over a drifting fine random texture, about 0.6 Mbit/s, so the decoder has real detail to decode),
writes them as shards with the project's shard writer, and reads them through `VideoClipStream` + `DataLoader` as training does
(random clip starts) in two clip layouts:
- SCVideo: 16 frames, every 8th frame (a clip spans 121 source frames; appendix section 1);
- ART-V: 16 frames at 8 fps (every 3rd frame of the 24 fps source; supplementary Table 4).
Each case times one epoch from creating the DataLoader iterator (so worker start-up is included) to its
last batch. "decoded frames" counts every frame the decoder produced, including those between the
key frame a seek lands on and the clip's first frame.
"""

import argparse
import datetime
import logging
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from torch.utils.data import DataLoader

from bench.report import end_load_line, machine_description, write_section
from datamodules.frame_selection import FrameSelection
from datamodules.mp4_encoding import encode_mp4
from datamodules.shard_writer import ShardSample, write_shard_set
from datamodules.tar_samples import expand_shard_urls
from datamodules.toy_shapes import render_toy_video, toy_video_spec
from datamodules.video_clip_stream import VideoClipStream

LOGGER = logging.getLogger("bench.bench_loader")
REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO_ROOT / "docs" / "BENCHMARKS.md"
SECTION = "bench_loader"
SOURCE_HEIGHT, SOURCE_WIDTH, SOURCE_FRAMES, SOURCE_FPS = 256, 320, 144, 24.0
KEYFRAME_INTERVAL = 48  # a key frame every 2 s, common for web video
CLIP_SIZE = 256
LAYOUTS = {
    "stride 8 x 16 (SCVideo)": FrameSelection(16, frame_stride=8),
    "8 fps x 16 (ART-V)": FrameSelection(16, target_fps=8.0),
}


def synthetic_video(index: int) -> bytes:
    """A toy shape moving over a drifting random texture, `SOURCE_FRAMES` frames, as an mp4 (~0.45 MB)."""
    rng = np.random.default_rng(index)
    # the shape drawn at 64 px and enlarged 4x (drawing at full size with anti-aliasing is slow)
    spec = toy_video_spec(index, rng, SOURCE_HEIGHT // 4)
    shape = render_toy_video(spec, SOURCE_HEIGHT // 4, SOURCE_FRAMES).astype(np.float32)
    shape = np.repeat(np.repeat(shape, 4, axis=1), 4, axis=2)
    shape = np.pad(shape, ((0, 0), (0, 0), (0, SOURCE_WIDTH - SOURCE_HEIGHT), (0, 0)))
    # a 2 x 2 px random texture drifting diagonally: about 0.6 Mbit/s at crf 23, like web video of this size
    texture = rng.uniform(40, 200, size=(SOURCE_HEIGHT // 2, SOURCE_WIDTH // 2, 3)).astype(np.float32)
    texture = np.repeat(np.repeat(texture, 2, axis=0), 2, axis=1)
    frames = np.empty((SOURCE_FRAMES, SOURCE_HEIGHT, SOURCE_WIDTH, 3), dtype=np.uint8)
    for frame_index in range(SOURCE_FRAMES):
        background = np.roll(texture, shift=(frame_index // 2, frame_index), axis=(0, 1))
        coverage = shape[frame_index].max(axis=-1, keepdims=True) / 255.0
        frames[frame_index] = np.rint(coverage * shape[frame_index] + (1 - coverage) * background)
    return encode_mp4(frames, SOURCE_FPS, crf=23, keyframe_interval=KEYFRAME_INTERVAL)


def write_source_shards(out_dir: Path, num_videos: int) -> list[str]:
    """`num_videos` synthetic videos in shards of 4."""

    def make_sample(index: int, key: str) -> ShardSample:
        return ShardSample(key=key, video=synthetic_video(index), caption=f"synthetic video {index}")

    write_shard_set(out_dir, num_videos, 4, make_sample, description="synthetic videos")
    return expand_shard_urls(str(out_dir), "bench shards")


def run_case(urls: list[str], layout: str, num_workers: int, clips: int, batch_size: int) -> dict:
    """Time one epoch of `clips` clips; returns the measurements."""
    stream = VideoClipStream(
        urls,
        LAYOUTS[layout],
        height=CLIP_SIZE,
        width=CLIP_SIZE,
        num_samples=clips,
        batch_size=batch_size,
        num_workers=num_workers,
        training=True,
        seed=0,
    )
    loader = DataLoader(stream, batch_size=batch_size, num_workers=num_workers, drop_last=True)
    start = time.perf_counter()
    loaded = sum(len(batch["key"]) for batch in loader)
    seconds = time.perf_counter() - start
    decoded = stream.counters.decode_counts()["frames_decoded"]
    frames_per_clip = LAYOUTS[layout].num_frames
    return {
        "layout": layout,
        "workers": num_workers,
        "clips": loaded,
        "seconds": seconds,
        "clips_per_s": loaded / seconds,
        "clip_frames_per_s": loaded * frames_per_clip / seconds,
        "decoded_frames_per_s": decoded / seconds,
        "decoded_per_clip": decoded / loaded,
    }


def summary_line(results: list[dict]) -> str:
    cases = [
        f"{result['layout']} / {result['workers']} workers {result['clips_per_s']:.2f} clips/s"
        for result in results
    ]
    return f"bench_loader (16x{CLIP_SIZE}x{CLIP_SIZE} clips): " + "; ".join(cases)


def markdown_section(results: list[dict], args: argparse.Namespace, command: str, machine: str) -> str:
    rows = [
        "| clip layout | workers | clips | seconds | clips/s | clip frames/s | decoded frames/s | decoded frames per clip |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        rows.append(
            f"| {result['layout']} | {result['workers']} | {result['clips']} | {result['seconds']:.1f} | "
            f"{result['clips_per_s']:.2f} | {result['clip_frames_per_s']:.0f} | "
            f"{result['decoded_frames_per_s']:.0f} | {result['decoded_per_clip']:.0f} |"
        )
    return "\n".join(
        [
            "## Video data loader (bench/bench_loader.py)",
            "",
            f"- Date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- Machine: {machine}",
            f"- Command: `{command}`",
            f"- Source: {args.videos} synthetic H.264 videos (crf 23, yuv420p) of {SOURCE_WIDTH}x{SOURCE_HEIGHT} px, "
            f"{SOURCE_FRAMES} frames at {SOURCE_FPS:.0f} fps, a key frame every {KEYFRAME_INTERVAL} frames, "
            "in local tar shards of 4.",
            f"- Workload: `VideoClipStream` + `DataLoader`, batch {args.batch_size}, {args.clips} clips per case, "
            f"random clip starts, resized to cover {CLIP_SIZE}x{CLIP_SIZE} and centre-cropped; "
            "time from creating the iterator (worker start-up included) to the last batch.",
            "- `decoded frames` counts every frame the decoder produced, including those from the key frame a "
            "seek lands on up to the clip's first frame.",
            end_load_line(),
            "",
            *rows,
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=8, help="synthetic source videos")
    parser.add_argument("--clips", type=int, default=32, help="clips read per case")
    parser.add_argument("--batch-size", type=int, default=4, help="DataLoader batch size")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/BENCHMARKS.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    machine = f"{machine_description()}, PyAV {av.__version__}"
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as directory:
        urls = write_source_shards(Path(directory), args.videos)
        for layout in LAYOUTS:
            for num_workers in args.workers:
                result = run_case(urls, layout, num_workers, args.clips, args.batch_size)
                LOGGER.info(
                    "%s, %d workers: %.2f clips/s, %.0f decoded frames/s",
                    layout,
                    num_workers,
                    result["clips_per_s"],
                    result["decoded_frames_per_s"],
                )
                results.append(result)
    LOGGER.info(summary_line(results))
    if not args.no_write:
        command = " ".join(["python -m bench.bench_loader", *sys.argv[1:]]).strip()
        write_section(BENCHMARKS_MD, SECTION, markdown_section(results, args, command, machine))
        LOGGER.info("wrote the %s section of %s", SECTION, BENCHMARKS_MD)
    return results


if __name__ == "__main__":
    main()
