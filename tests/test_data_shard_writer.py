"""Shard writer: WebVid CSV + video folder -> shards, read back by the loader; every video probed, bad ones
reported by videoid; resumable, atomic, and reruns complete the shards whose late videos arrived."""

import csv
import json
import os
import tarfile
from pathlib import Path

import pytest

from datamodules.frame_selection import FrameSelection
from datamodules.shard_writer import LeftOut, ShardSample, sample_key, write_shard_set
from datamodules.tar_samples import iter_tar_samples
from datamodules.video_clip_stream import VideoClipStream
from datamodules.write_shards import main, read_webvid_csv
from tests.helpers.data_shards import index_video
from tests.helpers.video_files import (
    write_audio_only_file,
    write_random_file,
    write_truncated_copy,
    write_video_file,
    write_webvid_csv,
)

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


def run_cli(videos: Path, csv_path: Path, out: Path, per_shard: int = 2, *flags: str):
    argv = [
        "--videos",
        str(videos),
        "--csv",
        str(csv_path),
        "--out",
        str(out),
        "--samples-per-shard",
        str(per_shard),
        "--workers",
        "1",
        *flags,
    ]
    return main(argv)


def tar_names(out: Path) -> list[str]:
    return sorted(path.name for path in out.glob("*.tar"))


def test_csv_to_shards_round_trip(webvid_folder, tmp_path: Path):
    videos, csv_path = webvid_folder
    out = tmp_path / "shards"
    report = run_cli(videos, csv_path, out)
    assert tar_names(out) == ["00000.tar", "00001.tar", "00002.tar"]
    assert (report.shards_written, report.samples_written, report.samples_left_out) == (3, 4, 1)
    samples = [sample for path in sorted(out.glob("*.tar")) for sample in iter_tar_samples(str(path))]
    assert [sample.key for sample in samples] == ["000000000", "000000001", "000010001", "000020000"]
    assert [sample.members["txt"].decode() for sample in samples] == ["a cat", "a dog", "a bird", "a fish"]
    assert samples[0].members["mp4"] == (videos / "1001.mp4").read_bytes()
    metadata = json.loads(samples[2].members["json"])
    assert {key: metadata[key] for key in ROWS[3]} == ROWS[3]
    assert metadata["key"] == "000010001"
    stream = VideoClipStream(
        [str(path) for path in sorted(out.glob("*.tar"))],
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


def test_second_run_skips_complete_shards_and_rewrites_unfinished_ones(webvid_folder, tmp_path: Path):
    videos, csv_path = webvid_folder
    out = tmp_path / "shards"
    run_cli(videos, csv_path, out)
    before = {path.name: path.stat().st_mtime_ns for path in out.glob("*.tar")}
    (out / "00001.tar").unlink()
    (out / "00001.tar.partial").write_bytes(b"half a shard from a crashed run")
    (out / "00002_manifest.json").unlink()  # a crash between the tar's rename and its manifest's
    report = run_cli(videos, csv_path, out)
    assert (report.shards_skipped, report.shards_written) == (1, 2)
    after = {path.name: path.stat().st_mtime_ns for path in out.glob("*.tar")}
    assert set(after) == {"00000.tar", "00001.tar", "00002.tar"}
    assert not list(out.glob("*.partial"))
    assert sorted(path.name for path in out.glob("*_manifest.json")) == [
        "00000_manifest.json",
        "00001_manifest.json",
        "00002_manifest.json",
    ]
    assert after["00000.tar"] == before["00000.tar"]
    with tarfile.open(out / "00001.tar") as tar:
        assert tar.getnames() == ["000010001.mp4", "000010001.txt", "000010001.json"]
    assert run_cli(videos, csv_path, out).shards_written == 0


def test_a_failing_writer_leaves_no_shard_under_the_final_name(tmp_path: Path):
    def make_sample(index: int, key: str) -> ShardSample:
        if index == 3:
            raise OSError("disk full")
        return ShardSample(key=key, video=b"v", caption="c")

    with pytest.raises(OSError, match="disk full"):
        write_shard_set(tmp_path, num_samples=4, samples_per_shard=2, make_sample=make_sample)
    assert sorted(os.listdir(tmp_path)) == ["00000.tar", "00000_manifest.json", "00001.tar.partial"]


def test_csv_without_webvid_columns_is_rejected(tmp_path: Path):
    path = tmp_path / "bad.csv"
    path.write_text("videoid,caption\n1,a cat\n")
    with pytest.raises(ValueError, match=r"bad\.csv: missing CSV column\(s\) \['contentUrl'"):
        read_webvid_csv(path)


def test_keys_follow_video2dataset_naming():
    assert sample_key(3, 7, 1000) == "000030007"
    assert sample_key(0, 12345, 20000) == "0000012345"


GOOD = {"good_a": ".mp4", "good_webm": ".webm", "good_mkv": ".mkv", "good_mov": ".mov", "good_avi": ".avi"}
EXPECTED_SKIPS = {
    "zero": "empty",
    "cut": "corrupt",
    "cut_fast": "truncated",
    "noise": "corrupt",
    "song": "no_video_stream",
    "brief": "too_short",
    "late": "missing",
    "nameless": "no_caption",
}
# 13 rows in shards of 3: [good_a zero good_webm] [cut cut_fast noise] [song good_mkv brief]
# [late good_mov nameless] [good_avi]
ORDER = [
    "good_a",
    "zero",
    "good_webm",
    "cut",
    "cut_fast",
    "noise",
    "song",
    "good_mkv",
    "brief",
    "late",
    "good_mov",
    "nameless",
    "good_avi",
]
CLIP_FLAGS = ("--num-frames", "4", "--frame-stride", "2")  # spans 7 frames


@pytest.fixture
def mixed_folder(tmp_path: Path) -> tuple[Path, Path]:
    """Good videos in every container the loader reads, and one of each kind of bad row."""
    videos = tmp_path / "videos"
    for videoid, suffix in GOOD.items():
        write_video_file(videos / f"{videoid}{suffix}", 12)
    (videos / "zero.mp4").write_bytes(b"")
    write_truncated_copy(write_video_file(tmp_path / "whole.mp4", 12), videos / "cut.mp4", 0.5)
    whole_faststart = write_video_file(tmp_path / "whole_faststart.mp4", 48, faststart=True)
    write_truncated_copy(whole_faststart, videos / "cut_fast.mp4", 0.7)
    write_random_file(videos / "noise.mp4")
    write_audio_only_file(videos / "song.mp4")
    write_video_file(videos / "brief.mp4", 5)
    write_video_file(videos / "nameless.mp4", 12)
    captions = {videoid: "" if videoid == "nameless" else f"video {videoid}" for videoid in ORDER}
    return videos, write_webvid_csv(tmp_path / "webvid.csv", captions)


def shard_videoids(out: Path) -> dict[str, list[tuple[str, str]]]:
    """Per shard file: (videoid, video member extension) of each sample."""
    shards = {}
    for path in sorted(out.glob("*.tar")):
        shards[path.name] = [
            (
                json.loads(sample.members["json"])["videoid"],
                next(ext for ext in sample.members if ext in ("mp4", "webm", "mkv", "mov", "avi")),
            )
            for sample in iter_tar_samples(str(path))
        ]
    return shards


def test_bad_videos_are_left_out_and_reported_by_videoid(mixed_folder, tmp_path: Path, caplog):
    videos, csv_path = mixed_folder
    out = tmp_path / "shards"
    with caplog.at_level("INFO"):
        report = run_cli(videos, csv_path, out, 3, *CLIP_FLAGS)
    assert shard_videoids(out) == {
        "00000.tar": [("good_a", "mp4"), ("good_webm", "webm")],
        "00001.tar": [],
        "00002.tar": [("good_mkv", "mkv")],
        "00003.tar": [("good_mov", "mov")],
        "00004.tar": [("good_avi", "avi")],
    }
    assert (report.samples_written, report.samples_left_out, report.num_shards) == (5, 8, 5)
    document = json.loads((out / "write_report.json").read_text())
    assert {entry["videoid"]: entry["reason"] for entry in document["skipped"]} == EXPECTED_SKIPS
    assert len(document["skipped"]) == len(EXPECTED_SKIPS)
    assert [entry["row"] for entry in document["skipped"]] == [
        ORDER.index(videoid) for videoid in ORDER if videoid in EXPECTED_SKIPS
    ]
    by_id = {entry["videoid"]: entry for entry in document["skipped"]}
    assert by_id["brief"]["detail"] == "brief.mp4: 5 frames at 24 fps, the clip needs 7"
    assert by_id["late"]["shard"] == "00003.tar"
    assert document["skipped_by_reason"] == {
        "corrupt": 2,
        "empty": 1,
        "missing": 1,
        "no_caption": 1,
        "no_video_stream": 1,
        "too_short": 1,
        "truncated": 1,
    }
    assert (document["rows"], document["shards"], document["samples"]) == (13, 5, 5)
    assert document["clip"]["flags"] == "--num-frames 4 --frame-stride 2"
    assert "8 CSV rows left out (corrupt 2, empty 1, missing 1" in caplog.text
    assert "leaving out videoid brief (CSV row 8): too_short" in caplog.text
    stream = VideoClipStream(
        [str(path) for path in sorted(out.glob("*.tar"))],
        FrameSelection(4, frame_stride=2),
        height=16,
        width=16,
        num_samples=5,
        batch_size=5,
        training=False,
    )
    assert sorted(item["caption"] for item in stream) == sorted(f"video {videoid}" for videoid in GOOD)
    assert not any(stream.skip_counts().values())


def test_rerun_rewrites_only_the_shard_whose_late_video_arrived(mixed_folder, tmp_path: Path):
    videos, csv_path = mixed_folder
    out = tmp_path / "shards"
    run_cli(videos, csv_path, out, 3, *CLIP_FLAGS)
    before = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in out.glob("*.tar")}
    write_video_file(videos / "late.webm", 12)
    report = run_cli(videos, csv_path, out, 3, *CLIP_FLAGS)
    assert (report.shards_written, report.shards_skipped, report.samples_written) == (1, 4, 2)
    after = {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in out.glob("*.tar")}
    assert {name for name in after if after[name] != before[name]} == {"00003.tar"}
    assert shard_videoids(out)["00003.tar"] == [("late", "webm"), ("good_mov", "mov")]
    document = json.loads((out / "write_report.json").read_text())
    assert {entry["videoid"] for entry in document["skipped"]} == set(EXPECTED_SKIPS) - {"late"}
    assert (document["samples"], document["this_run"]["shards_written"]) == (6, 1)
    assert run_cli(videos, csv_path, out, 3, *CLIP_FLAGS).shards_written == 0


def test_probe_pool_writes_the_same_shards(mixed_folder, tmp_path: Path):
    videos, csv_path = mixed_folder
    run_cli(videos, csv_path, tmp_path / "serial", 3, *CLIP_FLAGS)
    run_cli(videos, csv_path, tmp_path / "pool", 3, *CLIP_FLAGS, "--workers", "2")
    for path in sorted((tmp_path / "serial").glob("*.tar")):
        assert (tmp_path / "pool" / path.name).read_bytes() == path.read_bytes()


def test_rerun_with_another_clip_is_refused(mixed_folder, tmp_path: Path):
    videos, csv_path = mixed_folder
    out = tmp_path / "shards"
    run_cli(videos, csv_path, out, 3, *CLIP_FLAGS)
    with pytest.raises(ValueError, match=r"00000_manifest\.json was written with .*'frame_stride': 2"):
        run_cli(videos, csv_path, out, 3, "--min-frames", "4")


@pytest.mark.parametrize(
    "flags",
    [("--frame-stride", "2"), ("--num-frames", "4"), ("--min-frames", "4", *CLIP_FLAGS)],
)
def test_clip_flags_must_describe_one_clip(mixed_folder, tmp_path: Path, flags):
    videos, csv_path = mixed_folder
    with pytest.raises(SystemExit):
        run_cli(videos, csv_path, tmp_path / "shards", 3, *flags)


def test_a_left_out_sample_has_no_member_but_its_manifest_entry(tmp_path: Path):
    def make_sample(index: int, key: str) -> ShardSample | LeftOut:
        if index == 1:
            return LeftOut("corrupt", "bad bytes", {"size": 3})
        return ShardSample(key=key, video=b"v", caption="c")

    report = write_shard_set(tmp_path, num_samples=3, samples_per_shard=3, make_sample=make_sample)
    with tarfile.open(tmp_path / "00000.tar") as tar:
        assert [name for name in tar.getnames() if name.endswith(".mp4")] == [
            "000000000.mp4",
            "000000002.mp4",
        ]
    manifest = json.loads((tmp_path / "00000_manifest.json").read_text())
    assert manifest["source_ids"] == ["0", "1", "2"]
    assert manifest["left_out"] == [
        {"index": 1, "source_id": "1", "reason": "corrupt", "detail": "bad bytes", "state": {"size": 3}}
    ]
    assert [(record.index, record.reason) for record in report.left_out] == [(1, "corrupt")]
