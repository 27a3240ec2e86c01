"""Shard writer: WebVid CSV + video folder -> shards, read back by the loader; resumable and atomic."""

import csv
import json
import os
import tarfile
from pathlib import Path

import pytest
from data_fixtures import index_video

from datamodules.frame_selection import FrameSelection
from datamodules.shard_writer import ShardSample, sample_key, write_shard_set
from datamodules.tar_samples import iter_tar_samples
from datamodules.video_clip_stream import VideoClipStream
from datamodules.write_shards import main, read_webvid_csv

ROWS = [
    {
        "videoid": "1001",
        "contentUrl": "https://x/1001.mp4",
        "duration": "PT00H00M11S",
        "page_dir": "a",
        "name": "a cat",
    },
    {
        "videoid": "1002",
        "contentUrl": "https://x/1002.mp4",
        "duration": "PT00H00M05S",
        "page_dir": "a",
        "name": "a dog",
    },
    {
        "videoid": "1003",
        "contentUrl": "https://x/1003.mp4",
        "duration": "PT00H00M07S",
        "page_dir": "b",
        "name": "no file",
    },
    {
        "videoid": "1004",
        "contentUrl": "https://x/1004.mp4",
        "duration": "PT00H00M09S",
        "page_dir": "b",
        "name": "a bird",
    },
    {
        "videoid": "1005",
        "contentUrl": "https://x/1005.mp4",
        "duration": "PT00H00M03S",
        "page_dir": "c",
        "name": "a fish",
    },
]


@pytest.fixture
def webvid_folder(tmp_path: Path) -> tuple[Path, Path]:
    videos = tmp_path / "videos"
    videos.mkdir()
    for row in ROWS:
        if row["videoid"] != "1003":
            (videos / f"{row['videoid']}.mp4").write_bytes(index_video(12, height=32, width=32))
    csv_path = tmp_path / "webvid.csv"
    with open(csv_path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(ROWS[0]))
        writer.writeheader()
        writer.writerows(ROWS)
    return videos, csv_path


def run_cli(videos: Path, csv_path: Path, out: Path, per_shard: int = 2):
    argv = [
        "--videos",
        str(videos),
        "--csv",
        str(csv_path),
        "--out",
        str(out),
        "--samples-per-shard",
        str(per_shard),
    ]
    return main(argv)


def test_csv_to_shards_round_trip(webvid_folder, tmp_path: Path):
    videos, csv_path = webvid_folder
    out = tmp_path / "shards"
    report = run_cli(videos, csv_path, out)
    assert sorted(path.name for path in out.iterdir()) == ["00000.tar", "00001.tar", "00002.tar"]
    assert (report.shards_written, report.samples_written, report.samples_missing) == (3, 4, 1)
    samples = [sample for path in sorted(out.iterdir()) for sample in iter_tar_samples(str(path))]
    assert [sample.key for sample in samples] == ["000000000", "000000001", "000010001", "000020000"]
    assert [sample.members["txt"].decode() for sample in samples] == ["a cat", "a dog", "a bird", "a fish"]
    assert samples[0].members["mp4"] == (videos / "1001.mp4").read_bytes()
    metadata = json.loads(samples[2].members["json"])
    assert {key: metadata[key] for key in ROWS[3]} == ROWS[3]
    assert metadata["key"] == "000010001"
    stream = VideoClipStream(
        [str(path) for path in sorted(out.iterdir())],
        FrameSelection(4, frame_stride=1),
        height=16,
        width=16,
        num_samples=4,
        batch_size=4,
        training=False,
    )
    (item, *_) = list(stream)
    assert item["video"].shape == (4, 3, 16, 16)
    assert item["caption"] == "a cat"


def test_second_run_skips_complete_shards_and_rewrites_missing_ones(webvid_folder, tmp_path: Path):
    videos, csv_path = webvid_folder
    out = tmp_path / "shards"
    run_cli(videos, csv_path, out)
    before = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    (out / "00001.tar").unlink()
    (out / "00001.tar.partial").write_bytes(b"half a shard from a crashed run")
    report = run_cli(videos, csv_path, out)
    assert (report.shards_skipped, report.shards_written) == (2, 1)
    after = {path.name: path.stat().st_mtime_ns for path in out.iterdir()}
    assert set(after) == {"00000.tar", "00001.tar", "00002.tar"}
    assert after["00000.tar"] == before["00000.tar"]
    assert after["00002.tar"] == before["00002.tar"]
    with tarfile.open(out / "00001.tar") as tar:
        assert tar.getnames() == ["000010001.mp4", "000010001.txt", "000010001.json"]


def test_a_failing_writer_leaves_no_shard_under_the_final_name(tmp_path: Path):
    def make_sample(index: int, key: str) -> ShardSample:
        if index == 3:
            raise OSError("disk full")
        return ShardSample(key=key, video=b"v", caption="c")

    with pytest.raises(OSError, match="disk full"):
        write_shard_set(tmp_path, num_samples=4, samples_per_shard=2, make_sample=make_sample)
    assert sorted(os.listdir(tmp_path)) == ["00000.tar", "00001.tar.partial"]


def test_csv_without_webvid_columns_is_rejected(tmp_path: Path):
    path = tmp_path / "bad.csv"
    path.write_text("videoid,caption\n1,a cat\n")
    with pytest.raises(ValueError, match=r"bad\.csv: missing CSV column\(s\) \['contentUrl'"):
        read_webvid_csv(path)


def test_keys_follow_video2dataset_naming():
    assert sample_key(3, 7, 1000) == "000030007"
    assert sample_key(0, 12345, 20000) == "0000012345"
