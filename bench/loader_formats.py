"""Video loader output format and worker lifetime: clips/s with uint8 or float32 clips leaving the workers, and with
persistent or restarted workers, over several epochs.

    python -m bench.loader_formats                # writes the loader_formats section of docs/BENCHMARKS.md
    python -m bench.loader_formats --no-write     # only logs the results
    python -m bench.loader_formats --quick        # tiny sizes, into a temporary document (a smoke run)

The source is bench/bench_loader.py's: synthetic H.264 videos (320 x 256 px, 144 frames at 24 fps) in tar shards
of 4, read through `VideoClipStream` + `DataLoader` as training reads them (random clip starts), 16 frames at 8 fps
(ART-V supplementary Table 4), `--size` px square. Four cases:
- uint8: the stream's own items; the consumer turns each batch into float [-1, 1] (`clip_batches.unit_range_video`,
  what `VideoDataModule.on_after_batch_transfer` does on the GPU; timed on the CPU here);
- float32: the same clips turned into float [-1, 1] inside the workers (the loader's former output), so four times
  the bytes cross the worker queues;
- each with `persistent_workers=True` (workers start once) and False (new workers every epoch).
Each case reads `--epochs` epochs of `--clips` clips; an epoch's time runs from creating the iterator (worker
start-up included) to its last batch. The first epoch starts workers in every case.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import torch
from torch.utils.data import DataLoader, IterableDataset

from bench.bench_loader import LAYOUTS, write_source_shards
from bench.report import default_doc_path, machine_description, markdown_table, utc_now, write_section
from datamodules.clip_batches import unit_range_video
from datamodules.video_clip_stream import VideoClipStream

LOGGER = logging.getLogger("bench.loader_formats")
SECTION = "loader_formats"
LAYOUT = "8 fps x 16 (ART-V)"
FORMATS = ("uint8", "float32")


class FloatClips(IterableDataset):
    """A stream's items with the video turned into float32 in [-1, 1] inside the worker (the former format)."""

    def __init__(self, stream: VideoClipStream) -> None:
        super().__init__()
        self.stream = stream

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for item in self.stream:
            yield {**item, "video": unit_range_video(item["video"])}


def run_case(urls: list[str], args: argparse.Namespace, clip_format: str, persistent: bool) -> dict[str, Any]:
    """Read `args.epochs` epochs in one format and worker lifetime; returns the per-epoch times and rates."""
    stream = VideoClipStream(
        urls,
        LAYOUTS[LAYOUT],
        height=args.size,
        width=args.size,
        num_samples=args.clips,
        batch_size=args.batch_size,
        num_workers=args.workers,
        training=True,
        seed=0,
    )
    dataset = stream if clip_format == "uint8" else FloatClips(stream)
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        num_workers=args.workers,
        drop_last=True,
        persistent_workers=persistent and args.workers > 0,
    )
    seconds = []
    clips = 0
    batch_bytes = 0
    for _ in range(args.epochs):
        start = time.perf_counter()
        for batch in loader:
            batch_bytes = batch["video"].numel() * batch["video"].element_size()
            video = unit_range_video(batch["video"])  # what training needs, whichever format arrived
            clips += len(video)
        seconds.append(time.perf_counter() - start)
    later = seconds[1:] or seconds
    return {
        "format": clip_format,
        "persistent": persistent,
        "epoch_seconds": seconds,
        "clips": clips,
        "clips_per_s": clips / sum(seconds),
        "later_clips_per_s": args.clips * len(later) / sum(later),
        "batch_mib": batch_bytes / 2**20,
    }


def markdown_section(
    results: list[dict[str, Any]], args: argparse.Namespace, command: str, machine: str
) -> str:
    header = [
        "clips leave the workers as",
        "workers",
        "MiB a batch",
        "epoch times (s)",
        "clips/s",
        "clips/s after epoch 1",
    ]
    rows = [
        [
            result["format"],
            "persistent" if result["persistent"] else "restarted every epoch",
            f"{result['batch_mib']:.1f}",
            ", ".join(f"{value:.1f}" for value in result["epoch_seconds"]),
            f"{result['clips_per_s']:.2f}",
            f"{result['later_clips_per_s']:.2f}",
        ]
        for result in results
    ]
    return "\n".join(
        [
            "## Video loader output format and worker lifetime (bench/loader_formats.py)",
            "",
            f"- Date: {utc_now()}",
            f"- Machine: {machine}",
            f"- Command: `{command}`",
            f"- Source: {args.videos} synthetic H.264 videos of bench/bench_loader.py (320x256 px, 144 frames at 24 fps) "
            "in local tar shards of 4.",
            f"- Workload: `VideoClipStream` + `DataLoader`, {LAYOUT}, {args.size}x{args.size} px, batch "
            f"{args.batch_size}, {args.workers} workers, {args.epochs} epochs of {args.clips} clips per case, random "
            "clip starts; each batch is turned into float [-1, 1] by the consumer (uint8) or arrives so (float32).",
            "- An epoch's time runs from creating the iterator (worker start-up included) to its last batch.",
            "",
            *markdown_table(header, rows),
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=int, default=8, help="synthetic source videos")
    parser.add_argument("--clips", type=int, default=16, help="clips per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per case")
    parser.add_argument("--batch-size", type=int, default=4, help="DataLoader batch size")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--size", type=int, default=256, help="clip frame size, px")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, written to a temporary document")
    parser.add_argument(
        "--doc", type=Path, default=None, help="document to update (default: docs/BENCHMARKS.md)"
    )
    parser.add_argument("--no-write", action="store_true", help="only log the results")
    args = parser.parse_args(argv)
    if args.quick:
        args.videos, args.clips, args.epochs, args.batch_size, args.size = 2, 4, 2, 2, 32
    return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    machine = f"{machine_description()}, PyAV {av.__version__}"
    results = []
    with tempfile.TemporaryDirectory(prefix="loader_formats_") as directory:
        urls = write_source_shards(Path(directory), args.videos)
        for clip_format in FORMATS:
            for persistent in (True, False):
                result = run_case(urls, args, clip_format, persistent)
                LOGGER.info(
                    "%s, %s workers: %.2f clips/s (%.2f after epoch 1), epochs %s s, %.1f MiB a batch",
                    clip_format,
                    "persistent" if persistent else "restarted",
                    result["clips_per_s"],
                    result["later_clips_per_s"],
                    ", ".join(f"{value:.1f}" for value in result["epoch_seconds"]),
                    result["batch_mib"],
                )
                results.append(result)
    if not args.no_write:
        doc = args.doc or default_doc_path(args.quick)
        command = " ".join(["python -m bench.loader_formats", *sys.argv[1:]]).strip()
        write_section(doc, SECTION, markdown_section(results, args, command, machine))
        LOGGER.info("wrote the %s section of %s", SECTION, doc)
    return results


if __name__ == "__main__":
    main()
