"""Turn a folder of videos plus a WebVid-style CSV into WebDataset shards (video2dataset layout).

    python -m datamodules.write_shards --videos DIR --csv FILE --out DIR --samples-per-shard N

The CSV has the WebVid-10M columns `videoid,contentUrl,duration,page_dir,name`; the video of a row is
`DIR/<videoid>.mp4` and its caption is `name`. Each sample's json carries the row's fields (plus `key`
and `caption`). Rows whose video file is missing are left out and counted. Re-running the command
skips the shards that are already complete (see `shard_writer.py`).
"""

import argparse
import csv
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from datamodules.shard_writer import ShardSample, ShardSetReport, write_shard_set

log = logging.getLogger(__name__)

WEBVID_COLUMNS = ("videoid", "contentUrl", "duration", "page_dir", "name")
_MISSING_LOGGED = 10


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


def webvid_sample_factory(
    videos_dir: str | Path, rows: Sequence[dict[str, str]]
) -> Callable[[int, str], ShardSample | None]:
    """`(row_index, key) -> ShardSample` reading `videos_dir/<videoid>.mp4`; None when the file is missing."""
    videos_dir = Path(videos_dir)
    missing_count = 0

    def make_sample(index: int, key: str) -> ShardSample | None:
        nonlocal missing_count
        row = rows[index]
        video_path = videos_dir / f"{row['videoid']}.mp4"
        if not video_path.is_file():
            missing_count += 1
            if missing_count <= _MISSING_LOGGED:
                log.warning(
                    "no video file %s for CSV row %d (videoid %s); leaving it out",
                    video_path,
                    index,
                    row["videoid"],
                )
            return None
        return ShardSample(key=key, video=video_path.read_bytes(), caption=row["name"], metadata=dict(row))

    return make_sample


def write_webvid_shards(
    videos_dir: str | Path, csv_path: str | Path, out_dir: str | Path, samples_per_shard: int
) -> ShardSetReport:
    """Write the shards of `csv_path`'s rows with videos from `videos_dir` into `out_dir`."""
    rows = read_webvid_csv(csv_path)
    return write_shard_set(
        out_dir,
        num_samples=len(rows),
        samples_per_shard=samples_per_shard,
        make_sample=webvid_sample_factory(videos_dir, rows),
        description=f"shards of {Path(csv_path).name}",
    )


def main(argv: Sequence[str] | None = None) -> ShardSetReport:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", required=True, help="folder holding <videoid>.mp4 files")
    parser.add_argument(
        "--csv", required=True, help="WebVid-style CSV: videoid,contentUrl,duration,page_dir,name"
    )
    parser.add_argument("--out", required=True, help="output folder for 00000.tar, 00001.tar, ...")
    parser.add_argument(
        "--samples-per-shard", type=int, default=1000, help="samples per shard (default 1000)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = write_webvid_shards(args.videos, args.csv, args.out, args.samples_per_shard)
    log.info(
        "wrote %d shards (%d samples), skipped %d complete shards, %d rows without a video file",
        report.shards_written,
        report.samples_written,
        report.shards_skipped,
        report.samples_missing,
    )
    return report


if __name__ == "__main__":
    main()
