"""Turn a folder of videos plus a WebVid-style CSV into WebDataset shards (video2dataset layout).

    python -m datamodules.write_shards --videos DIR --csv FILE --out DIR --samples-per-shard N \\
        [--min-frames N | --num-frames N (--frame-stride S | --target-fps F)] [--workers W]

The CSV has the WebVid-10M columns `videoid,contentUrl,duration,page_dir,name`; the video of a row is
`DIR/<videoid>.<ext>` for the first extension the loader reads (`mp4, webm, mkv, mov, avi`) and its caption
is `name`. Each sample's json carries the row's fields (plus `key` and `caption`).

Every video is probed before it is written (`video_probe.py`, in `--workers` processes): a row whose video is
missing, unreadable, empty, corrupt, without a video stream, truncated or too short for the clip, or whose
caption is blank, is left out, logged with its videoid and listed in `OUT/write_report.json`. The clip flags
say what "too short" means; give the data config's `num_frames` and `frame_stride` or `target_fps`.

Reruns keep complete shards and rewrite only those that are not: new ones, interrupted ones, and those with
left-out rows that have changed since (a late file arrived, a broken one was replaced, a caption was filled
in); see `shard_writer.py`.
"""

import argparse
import contextlib
import csv
import json
import logging
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datamodules.frame_selection import FrameSelection
from datamodules.shard_writer import (
    LeftOut,
    LeftOutRecord,
    ShardPlan,
    ShardSample,
    ShardSetReport,
    ShardSetSpec,
    plan_shard_set,
    write_planned_shards,
)
from datamodules.video_probe import FileState, ProbeResult, file_state_now, probe_task

log = logging.getLogger(__name__)

WEBVID_COLUMNS = ("videoid", "contentUrl", "duration", "page_dir", "name")
REPORT_NAME = "write_report.json"
# Left-out rows logged one by one before only the summary counts them.
_LEFT_OUT_LOGGED = 10
# Rows a probe worker takes at a time.
_PROBE_CHUNK = 8


def read_webvid_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a WebVid-style CSV as dicts.

    Raises:
        ValueError: a WebVid column is missing from the header.
    """
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = [column for column in WEBVID_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: missing CSV column(s) {missing}; expected a header with {', '.join(WEBVID_COLUMNS)}"
            )
        return list(reader)


@dataclass(frozen=True)
class ClipRequirement:
    """The clip every written video must hold: a `FrameSelection`, and the flags that set it (for log lines)."""

    selection: FrameSelection
    flags: str

    @classmethod
    def min_frames(cls, frames: int) -> "ClipRequirement":
        """At least `frames` consecutive frames (`--min-frames`)."""
        return cls(FrameSelection(frames, frame_stride=1), f"--min-frames {frames}")

    def settings(self) -> dict[str, Any]:
        """What a shard manifest records of the requirement."""
        selection = self.selection
        return {
            "num_frames": selection.num_frames,
            "frame_stride": selection.frame_stride,
            "target_fps": selection.target_fps,
        }


class _ProbedRows:
    """The sample factory of the CSV rows: takes each row's probe result, in order, from `probes`, and turns it
    into a `ShardSample` (reading the file) or a `LeftOut`."""

    def __init__(
        self,
        rows: Sequence[dict[str, str]],
        videos_dir: Path,
        probes: Iterator[tuple[int, ProbeResult]],
        requirement: ClipRequirement,
    ) -> None:
        self.rows = rows
        self.videos_dir = videos_dir
        self.probes = probes
        self.requirement = requirement
        self.logged = 0

    def __call__(self, index: int, key: str) -> ShardSample | LeftOut:
        probed_index, probe = next(self.probes)
        if probed_index != index:
            raise RuntimeError(f"probe results out of order: expected CSV row {index}, got {probed_index}")
        row = self.rows[index]
        if probe.reason is not None:
            return self._left_out(index, probe.reason, probe.detail, probe.state)
        if not row["name"].strip():
            return self._left_out(index, "no_caption", "the CSV row's name is blank", probe.state)
        assert probe.state.name is not None
        path = self.videos_dir / probe.state.name
        try:
            video = path.read_bytes()
        except OSError as error:
            return self._left_out(index, "unreadable", f"{type(error).__name__}: {error}", probe.state)
        return ShardSample(
            key=key,
            video=video,
            caption=row["name"],
            metadata=dict(row),
            video_extension=path.suffix[1:].lower(),
        )

    def _left_out(self, index: int, reason: str, detail: str, state: FileState) -> LeftOut:
        self.logged += 1
        if self.logged <= _LEFT_OUT_LOGGED:
            flags = f" <{self.requirement.flags}>" if reason == "too_short" else ""
            log.warning(
                "leaving out videoid %s (CSV row %d): %s: %s%s",
                self.rows[index]["videoid"],
                index,
                reason,
                detail,
                flags,
            )
        recorded = state.as_dict()
        if reason == "no_caption":
            recorded["caption"] = self.rows[index]["name"]
        return LeftOut(reason, detail, recorded)


def _source_changed(rows: Sequence[dict[str, str]], videos_dir: Path) -> Callable[[LeftOutRecord], bool]:
    """Whether a left-out row is worth another try: its video file (or caption, for `no_caption`) changed."""

    def changed(record: LeftOutRecord) -> bool:
        now = file_state_now(videos_dir, record.source_id).as_dict()
        if record.reason == "no_caption":
            now["caption"] = rows[record.index]["name"]
        return now != record.state

    return changed


@contextlib.contextmanager
def _probe_map(workers: int) -> Iterator[Callable[[Callable, Iterable], Iterator]]:
    """An ordered, lazy `map` for the probes: in this process for `workers <= 1`, else over a process pool."""
    if workers <= 1:
        yield map
        return
    with multiprocessing.Pool(workers) as pool:
        yield lambda function, tasks: pool.imap(function, tasks, chunksize=_PROBE_CHUNK)


def write_webvid_shards(
    videos_dir: str | Path,
    csv_path: str | Path,
    out_dir: str | Path,
    samples_per_shard: int,
    requirement: ClipRequirement | None = None,
    workers: int = 1,
) -> ShardSetReport:
    """Write the shards of `csv_path`'s rows with videos from `videos_dir` into `out_dir`, probing every video,
    and write `out_dir/write_report.json`."""
    requirement = requirement or ClipRequirement.min_frames(1)
    videos_dir = Path(videos_dir)
    rows = read_webvid_csv(csv_path)
    spec = ShardSetSpec(
        out_dir=Path(out_dir),
        num_samples=len(rows),
        samples_per_shard=samples_per_shard,
        settings={"clip": requirement.settings()},
        source_id=lambda index: rows[index]["videoid"],
        source_changed=_source_changed(rows, videos_dir),
    )
    description = f"shards of {Path(csv_path).name}"
    plan = plan_shard_set(spec, description)
    selection = requirement.selection
    tasks = ((index, str(videos_dir), rows[index]["videoid"], selection) for index in plan.indices())
    with _probe_map(workers) as probe_map:
        make_sample = _ProbedRows(rows, videos_dir, probe_map(probe_task, tasks), requirement)
        report = write_planned_shards(plan, make_sample, description)
    write_report_file(Path(out_dir) / REPORT_NAME, report, plan, rows, requirement)
    return report


def write_report_file(
    path: Path,
    report: ShardSetReport,
    plan: ShardPlan,
    rows: Sequence[dict[str, str]],
    requirement: ClipRequirement,
) -> None:
    """`OUT/write_report.json`: the whole set (all shards, not only this run's) and every left-out row."""
    spec = plan.spec
    document = {
        "rows": len(rows),
        "shards": report.num_shards,
        "samples": report.samples_in_set,
        "samples_per_shard": spec.samples_per_shard,
        "clip": {**requirement.settings(), "flags": requirement.flags},
        "this_run": {
            "shards_written": report.shards_written,
            "shards_kept": report.shards_skipped,
            "samples_written": report.samples_written,
        },
        "skipped_by_reason": dict(sorted(Counter(record.reason for record in report.left_out).items())),
        "skipped": [
            {
                "videoid": record.source_id,
                "row": record.index,
                "reason": record.reason,
                "detail": record.detail,
                "shard": f"{record.shard:05d}.tar",
            }
            for record in report.left_out
        ],
    }
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    os.replace(partial, path)


def default_workers() -> int:
    """Probe processes by default: half the cores, at most 4 (a laptop stays usable)."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def _requirement(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ClipRequirement:
    if args.num_frames is None:
        if args.frame_stride is not None or args.target_fps is not None:
            parser.error("--frame-stride and --target-fps need --num-frames")
        return ClipRequirement.min_frames(args.min_frames if args.min_frames is not None else 1)
    if args.min_frames is not None:
        parser.error("give either --min-frames or --num-frames with --frame-stride/--target-fps, not both")
    if (args.frame_stride is None) == (args.target_fps is None):
        parser.error("--num-frames needs exactly one of --frame-stride and --target-fps")
    if args.frame_stride is not None:
        flags = f"--num-frames {args.num_frames} --frame-stride {args.frame_stride}"
    else:
        flags = f"--num-frames {args.num_frames} --target-fps {args.target_fps}"
    try:
        selection = FrameSelection(
            args.num_frames, frame_stride=args.frame_stride, target_fps=args.target_fps
        )
    except ValueError as error:
        parser.error(f"{flags}: {error}")
    return ClipRequirement(selection, flags)


def main(argv: Sequence[str] | None = None) -> ShardSetReport:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--videos", required=True, help="folder holding <videoid>.<mp4|webm|mkv|mov|avi> files"
    )
    parser.add_argument(
        "--csv", required=True, help="WebVid-style CSV: videoid,contentUrl,duration,page_dir,name"
    )
    parser.add_argument("--out", required=True, help="output folder for 00000.tar, 00001.tar, ...")
    parser.add_argument(
        "--samples-per-shard", type=int, default=1000, help="samples per shard (default 1000)"
    )
    parser.add_argument(
        "--min-frames", type=int, help="leave out videos with fewer frames (default 1: any decodable video)"
    )
    parser.add_argument("--num-frames", type=int, help="clip length the data config reads (data.num_frames)")
    parser.add_argument("--frame-stride", type=int, help="data.frame_stride of the clip")
    parser.add_argument("--target-fps", type=float, help="data.target_fps of the clip")
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help=f"probe processes (default {default_workers()}: half the cores, at most 4; 1: no pool)",
    )
    args = parser.parse_args(argv)
    requirement = _requirement(args, parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = write_webvid_shards(
        args.videos, args.csv, args.out, args.samples_per_shard, requirement, args.workers
    )
    log_summary(report, Path(args.out), requirement)
    return report


def log_summary(report: ShardSetReport, out_dir: Path, requirement: ClipRequirement) -> None:
    """The printed summary: this run, the set, and the left-out rows per reason."""
    log.info(
        "wrote %d shards (%d samples), kept %d complete shards; %s holds %d samples in %d shards",
        report.shards_written,
        report.samples_written,
        report.shards_skipped,
        out_dir,
        report.samples_in_set,
        report.num_shards,
    )
    if report.left_out:
        counts = Counter(record.reason for record in report.left_out)
        by_reason = ", ".join(f"{reason} {count}" for reason, count in sorted(counts.items()))
        log.warning(
            "%d CSV rows left out (%s) <%s>; each with its videoid in %s",
            len(report.left_out),
            by_reason,
            requirement.flags,
            out_dir / REPORT_NAME,
        )


if __name__ == "__main__":
    main()
