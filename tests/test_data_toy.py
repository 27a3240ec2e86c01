"""Toy "shapes" data: deterministic generation, the scorer's accuracy, and the data configs end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from einops import rearrange
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from datamodules.clip_batches import valid_samples
from datamodules.frame_selection import FrameSelection
from datamodules.toy_scorer import parse_caption, score_batch, score_video
from datamodules.toy_shapes import (
    COLORS,
    DIRECTIONS,
    SHAPES,
    ShapesShardSet,
    render_toy_video,
    toy_sample_factory,
    toy_video_spec,
)
from datamodules.video_datamodule import VideoDataModule
from datamodules.video_decoding import decode_clip
from tests.conftest import compose_config

CONF_DATA = Path(__file__).resolve().parent.parent / "conf" / "data"
NUM_TOY_VIDEOS = 2 * len(COLORS) * len(SHAPES) * len(DIRECTIONS)  # 168: every combination twice


@pytest.fixture(scope="module")
def toy_samples():
    make_sample = toy_sample_factory(seed=1234, split="train", size=64, num_frames=24, fps=8.0)
    return [make_sample(index, f"{index:09d}") for index in range(NUM_TOY_VIDEOS)]


def decoded_videos(samples, selection: FrameSelection) -> torch.Tensor:
    """The samples as the training pipeline sees them: mp4 decoded, 32 x 32, [B, T, C, H, W] in [-1, 1]."""
    rng = np.random.default_rng(0)
    clips = [decode_clip(sample.video, selection, height=32, width=32, rng=rng).frames for sample in samples]
    return rearrange(torch.from_numpy(np.stack(clips)), "b t h w c -> b t c h w").float() / 127.5 - 1.0


@pytest.fixture(scope="module")
def toy_videos_stride_1(toy_samples) -> torch.Tensor:
    return decoded_videos(toy_samples, FrameSelection(8, frame_stride=1))


@pytest.mark.parametrize("stride", [1, 2])
def test_scorer_reads_ground_truth_toy_videos(toy_samples, toy_videos_stride_1, stride: int):
    videos = (
        toy_videos_stride_1 if stride == 1 else decoded_videos(toy_samples, FrameSelection(8, frame_stride=2))
    )
    scores = score_batch(videos, [sample.caption for sample in toy_samples])
    assert scores["color_accuracy"] >= 0.99
    assert scores["direction_accuracy"] >= 0.99


def test_scorer_is_robust_to_noise_and_fails_on_shuffled_captions(toy_samples, toy_videos_stride_1):
    videos = toy_videos_stride_1
    captions = [sample.caption for sample in toy_samples]
    noisy = (videos + 0.3 * torch.randn(videos.shape, generator=torch.Generator().manual_seed(0))).clamp(
        -1, 1
    )
    noisy_scores = score_batch(noisy, captions)
    assert noisy_scores["joint_accuracy"] >= 0.95
    permutation = np.random.default_rng(0).permutation(len(captions))
    shuffled_scores = score_batch(videos, [captions[index] for index in permutation])
    assert shuffled_scores["color_accuracy"] < 0.4
    assert shuffled_scores["direction_accuracy"] < 0.5


def test_motion_is_visible_over_8_frames_at_32px(toy_videos_stride_1):
    # at least 3 px of centroid travel in a 32 px frame
    travel = [
        max(abs(value) for value in score_video(video).displacement) for video in toy_videos_stride_1[:84]
    ]
    assert min(travel) > 3 / 32


def test_scorer_reads_an_mp4_path_and_reports_blank_videos(toy_samples, tmp_path: Path):
    path = tmp_path / "video.mp4"
    path.write_bytes(toy_samples[5].video)
    score = score_video(path)
    color, _, direction = parse_caption(toy_samples[5].caption)
    assert (score.color, score.direction) == (color, direction)
    blank = score_video(torch.full((8, 3, 32, 32), -1.0))
    assert (blank.color, blank.direction, blank.foreground_frames) == (None, None, 0)


def test_toy_captions_cover_every_combination(toy_samples):
    parsed = {parse_caption(sample.caption) for sample in toy_samples[:84]}
    assert len(parsed) == len(COLORS) * len(SHAPES) * len(DIRECTIONS)
    assert toy_samples[0].caption == "a red circle moving left"
    with pytest.raises(ValueError, match="not a toy shapes caption"):
        parse_caption("a panda is playing guitar")


def test_toy_generation_is_deterministic_and_checks_its_settings(tmp_path: Path):
    options = {"train_samples": 5, "val_samples": 3, "samples_per_shard": 4, "num_frames": 12}
    for name in ("first", "second"):
        ShapesShardSet(str(tmp_path / name), **options).generate()
    for relative in ("train/00000.tar", "train/00001.tar", "val/00000.tar"):
        assert (tmp_path / "first" / relative).read_bytes() == (tmp_path / "second" / relative).read_bytes()
    with pytest.raises(ValueError, match="generated with"):
        ShapesShardSet(str(tmp_path / "first"), **{**options, "seed": 7}).generate()


def test_default_toy_geometry_is_unchanged_draw_for_draw():
    # the first training video of every data set made so far; a change here silently changes the toy data
    spec = toy_video_spec(0, np.random.default_rng([1234, 0, 0]), 64)
    assert (spec.color, spec.shape, spec.direction) == ("red", "circle", "left")
    assert spec.radius == pytest.approx(8.915263552060434, abs=1e-12)
    assert (spec.start_x, spec.start_y) == pytest.approx((51.375074291194515, 22.74882488358369), abs=1e-12)
    assert spec.travel == pytest.approx(38.363228515363225, abs=1e-12)


def _start_along(spec) -> float:
    return spec.start_x if spec.direction in ("left", "right") else spec.start_y


def test_path_end_start_tells_the_direction_and_direction_free_does_not():
    size = 64

    def specs(*geometry):
        return [toy_video_spec(i, np.random.default_rng([5, 0, i]), size, *geometry) for i in range(4 * 84)]

    path_end, free = specs(), specs("direction_free", (0.167, 0.207))

    def mean_start(specs, direction):
        return np.mean([_start_along(s) for s in specs if s.direction == direction])

    # path_end: a shape moving left/up starts in the far (right/bottom) part of the frame
    assert mean_start(path_end, "left") - mean_start(path_end, "right") > 0.2 * size
    assert mean_start(path_end, "up") - mean_start(path_end, "down") > 0.2 * size
    # direction_free: one start range for both senses (the path fits either way), so the means agree
    for spec in free:
        low, high = 1.3 * spec.radius + 1.0, size - 1.3 * spec.radius - 1.0
        assert low + spec.travel <= _start_along(spec) <= high - spec.travel
    assert abs(mean_start(free, "left") - mean_start(free, "right")) < 0.05 * size
    assert abs(mean_start(free, "up") - mean_start(free, "down")) < 0.05 * size


def test_direction_free_video_moves_at_the_default_speed_and_stays_in_frame():
    size, frames = 64, 8
    spec = toy_video_spec(3, np.random.default_rng([1, 0, 3]), size, "direction_free", (0.167, 0.207))
    assert spec.direction == "left"
    video = render_toy_video(spec, size, frames).astype(np.float64).max(axis=-1)
    columns = np.arange(size)
    centroid_x = (video.sum(axis=1) * columns).sum(axis=1) / video.sum(axis=(1, 2))
    per_frame = -np.diff(centroid_x)  # moving left
    # the default data's 55-68% of the width over 23 intervals = 1.5-1.9 px per frame
    assert np.all((per_frame > 1.4) & (per_frame < 2.0))
    mass = video.sum(axis=(1, 2))
    assert np.ptp(mass) < 0.01 * mass.mean()  # never clipped by the border


def test_direction_free_config_moves_every_shape_its_whole_travel_within_the_frame(tmp_path: Path):
    # conf/data/shapes_direction_free.yaml's travel is near the longest path that fits both ways: a setting past it
    # would be shortened silently for the larger shapes, so check the drawn paths of every shape size
    cfg = compose_config("train", ["data=shapes_direction_free"], tmp_path).data.toy_shards
    low, high = cfg.travel_fraction
    size = cfg.size
    for index in range(2 * 84):
        spec = toy_video_spec(index, np.random.default_rng([7, 0, index]), size, cfg.start, (low, high))
        assert low * size <= spec.travel <= high * size  # not shortened to fit
        video = render_toy_video(spec, size, cfg.num_frames).max(axis=-1)
        assert video.sum(axis=(1, 2)).min() > 0  # drawn in every frame
        border = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1)
        assert not border.any(), f"sample {index} touches the frame border"  # so never clipped by it
    # 7 steps of 2.4-2.7 px at 64 px: about 1.5x the default data's 1.5-1.9 px a frame
    px_per_frame = np.array([low, high]) * size / (cfg.num_frames - 1)
    assert px_per_frame.min() > 2.3 and px_per_frame.max() < 2.8


def test_toy_geometry_settings_are_checked_and_recorded(tmp_path: Path):
    with pytest.raises(ValueError, match=r"toy_shards\.start"):
        ShapesShardSet(str(tmp_path / "a"), start="middle")
    with pytest.raises(ValueError, match=r"toy_shards\.travel_fraction"):
        ShapesShardSet(str(tmp_path / "a"), travel_fraction=(0.7, 0.5))
    options = {"train_samples": 2, "val_samples": 1, "samples_per_shard": 2, "num_frames": 8}
    root = tmp_path / "shapes"
    ShapesShardSet(str(root), **options).generate()
    # a settings file written before `start` / `travel_fraction` existed holds the defaults implicitly
    settings_path = root / "shapes_settings.json"
    recorded = json.loads(settings_path.read_text())
    settings_path.write_text(
        json.dumps({k: v for k, v in recorded.items() if k not in ("start", "travel_fraction")})
    )
    ShapesShardSet(str(root), **options).generate()
    with pytest.raises(ValueError, match="generated with"):
        ShapesShardSet(str(root), **options, start="direction_free", travel_fraction=(0.2, 0.25)).generate()


def data_config(name: str, tmp_path: Path, **overrides):
    """conf/data/<name>.yaml with the config nodes it interpolates (paths, resolution, seed) filled in."""
    root = OmegaConf.create(
        {
            "paths": {"data_dir": str(tmp_path / "data")},
            "resolution": {"height": 32, "width": 32},
            "seed": 3,
            "data": OmegaConf.load(CONF_DATA / f"{name}.yaml"),
        }
    )
    root.data = OmegaConf.merge(root.data, overrides)
    return root.data


def test_shapes_config_works_from_nothing(tmp_path: Path):
    toy = {"train_samples": 16, "val_samples": 8, "samples_per_shard": 8, "num_frames": 12}
    config = data_config("shapes", tmp_path, samples_per_epoch=8, val_samples=8, batch_size=4, toy_shards=toy)
    datamodule = instantiate(config)
    assert isinstance(datamodule, VideoDataModule)
    datamodule.prepare_data()
    assert len(list((tmp_path / "data" / "shapes" / "train").glob("*.tar"))) == 2
    datamodule.setup("fit")
    train_batches = list(datamodule.train_dataloader())
    assert len(train_batches) == 2
    batch = train_batches[0]
    assert batch["video"].shape == (4, 8, 3, 32, 32)
    assert len(batch["caption"]) == len(batch["key"]) == 4
    val_batches = [valid_samples(val_batch) for val_batch in datamodule.val_dataloader()]
    assert len(val_batches) == 2
    videos = torch.cat([val_batch["video"] for val_batch in val_batches])
    assert len(videos) == 8 and videos.dtype == torch.float32
    captions = [caption for val_batch in val_batches for caption in val_batch["caption"]]
    assert score_batch(videos, captions)["joint_accuracy"] == 1.0
    skip_counts = datamodule.skip_counts()
    assert set(skip_counts) == {"train", "val"}
    assert sum(skip_counts["train"].values()) + sum(skip_counts["val"].values()) == 0


def test_webvid_config_instantiates_with_stride_or_fps(tmp_path: Path):
    datamodule = instantiate(data_config("webvid", tmp_path))
    assert datamodule.selection == FrameSelection(16, frame_stride=8)
    assert (datamodule.height, datamodule.width) == (32, 32)
    artv = instantiate(data_config("webvid", tmp_path, frame_stride=None, target_fps=8))
    assert artv.selection == FrameSelection(16, target_fps=8)
    with pytest.raises(
        InstantiationException, match=r"exactly one of data\.frame_stride and data\.target_fps"
    ):
        instantiate(data_config("webvid", tmp_path, target_fps=8))


def test_make_toy_data_script_passes_the_geometry_options(tmp_path: Path):
    from scripts.make_toy_data import main

    out = tmp_path / "free"
    sizes = ["--train-samples", "2", "--val-samples", "1", "--num-frames", "8"]
    main(["--out", str(out), *sizes, "--start", "direction_free", "--travel-fraction", "0.167", "0.207"])
    settings = json.loads((out / "shapes_settings.json").read_text())
    assert (settings["start"], settings["travel_fraction"], settings["num_frames"]) == (
        "direction_free",
        [0.167, 0.207],
        8,
    )
    assert (out / "train" / "00000.tar").exists() and (out / "val" / "00000.tar").exists()


def test_direction_free_data_config_makes_clips_that_are_whole_videos(tmp_path: Path):
    # a clip starting later than the video's frame 0 shows a shape already moved its way: the cue comes back
    cfg = compose_config(
        "train",
        [
            "data=shapes_direction_free",
            "data.toy_shards.train_samples=8",
            "data.toy_shards.val_samples=4",
            "data.toy_shards.samples_per_shard=4",
            "data.samples_per_epoch=8",
            "data.val_samples=4",
            "data.batch_size=4",
            "resolution=toy32",
        ],
        tmp_path,
    )
    assert cfg.data.toy_shards.start == "direction_free"
    assert cfg.data.num_frames == cfg.data.toy_shards.num_frames == 8
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    root = tmp_path / "data" / "shapes_direction_free"
    assert json.loads((root / "shapes_settings.json").read_text())["start"] == "direction_free"
    assert not (tmp_path / "data" / "shapes").exists()  # the default data stays as it is
    datamodule.setup("fit")
    batch = valid_samples(next(iter(datamodule.train_dataloader())))
    assert batch["video"].shape == (4, 8, 3, 32, 32)
    assert score_batch(batch["video"], batch["caption"])["joint_accuracy"] == 1.0
