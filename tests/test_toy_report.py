"""The demo's read-back (datamodules/toy_report.py) and the toy data's caption vocabulary (`colors`, `shapes`)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.mp4_encoding import encode_mp4
from datamodules.toy_report import caption_of, format_table, main, score_folder
from datamodules.toy_shapes import ShapesShardSet, render_toy_video, toy_video_spec
from modules.runtime.sampling import video_filename


def write_toy_mp4(folder: Path, index: int, caption: str) -> Path:
    """Toy video `index` (size 32, 8 frames) under the file name sample.py gives `caption` (seed 0)."""
    spec = toy_video_spec(index, np.random.default_rng([3, index]), 32, "direction_free", (0.26, 0.30))
    path = folder / video_filename(caption, 0)
    path.write_bytes(encode_mp4(render_toy_video(spec, 32, 8), 8.0))
    return path


def test_report_reads_captions_from_file_names_and_counts_matches(tmp_path: Path, capsys):
    # video 0 is a red circle moving left; video 22 a green circle moving right (index -> combination by position)
    write_toy_mp4(tmp_path, 0, "a red circle moving left")
    write_toy_mp4(tmp_path, 22, "a green circle moving left")  # the caption asks for the wrong direction
    rows = score_folder(tmp_path)
    assert [row.caption for row in rows] == ["a green circle moving left", "a red circle moving left"]
    assert [row.matches for row in rows] == [False, True]
    assert (rows[0].score.color, rows[0].score.direction) == ("green", "right")
    assert format_table(rows).splitlines()[-1] == "1 of 2 videos show their prompt's colour and direction"

    main([str(tmp_path)])
    printed = capsys.readouterr().out
    assert "1 of 2 videos" in printed
    with Image.open(tmp_path / "contact_sheet.png") as sheet:
        # two rows of 8 enlarged 32-px frames under two caption lines each
        assert sheet.size[1] == 2 * (32 * 3 + 28 + 4) + 4
        assert sheet.size[0] >= 8 * 32 * 3
        pixels = np.asarray(sheet.convert("RGB"))
    # the first frame of the first row (the green circle) is on the sheet
    frame = pixels[4 + 28 : 4 + 28 + 96, 4 : 4 + 96]
    assert (frame[..., 1] > 200).sum() > 100 and (frame[..., 0] > 200).sum() == 0


def test_caption_of_round_trips_sample_file_names():
    assert caption_of(Path(video_filename("a blue square moving up", 7))) == "a blue square moving up"


def test_contact_sheet_needs_videos(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="no mp4 videos in"):
        score_folder(tmp_path)


def test_toy_vocabulary_subset(tmp_path: Path):
    shards = ShapesShardSet(
        str(tmp_path / "toy"),
        train_samples=16,
        val_samples=8,
        samples_per_shard=8,
        num_frames=4,
        size=16,
        colors=["red", "blue"],
        shapes=["square"],
    )
    specs = [
        toy_video_spec(i, np.random.default_rng([0, i]), 16, colors=("red", "blue"), shapes=("square",))
        for i in range(8)
    ]
    assert {spec.color for spec in specs} == {"red", "blue"}
    assert {spec.shape for spec in specs} == {"square"}
    assert {spec.direction for spec in specs} == {"left", "right", "up", "down"}
    assert shards.settings()["colors"] == ["red", "blue"]
    with pytest.raises(ValueError, match=r"toy_shards.colors must be a non-empty list of distinct names"):
        ShapesShardSet(str(tmp_path / "bad"), colors=["red", "mauve"])


def test_shards_made_before_the_vocabulary_option_still_match(tmp_path: Path):
    import json

    shards = ShapesShardSet(
        str(tmp_path / "toy"), train_samples=8, val_samples=8, samples_per_shard=8, num_frames=4, size=16
    )
    shards.generate()
    settings = tmp_path / "toy" / "shapes_settings.json"
    recorded = json.loads(settings.read_text())
    del recorded["colors"], recorded["shapes"]
    settings.write_text(json.dumps(recorded))
    shards.generate()  # no error: a file without the keys was made with all colours and shapes
    with pytest.raises(ValueError, match="holds toy shards generated with"):
        ShapesShardSet(
            str(tmp_path / "toy"),
            train_samples=8,
            val_samples=8,
            samples_per_shard=8,
            num_frames=4,
            size=16,
            shapes=["circle"],
        ).generate()
