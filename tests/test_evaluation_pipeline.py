"""Evaluation plumbing: prompts, video folders, real clips, metric building, reports, and eval.py end to end."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf, open_dict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from datamodules.frame_selection import FrameSelection
from datamodules.mp4_encoding import encode_mp4
from datamodules.toy_shapes import render_toy_video, toy_video_spec
from modules.evaluation.evaluator import build_metrics, run_metrics
from modules.evaluation.prompts import (
    class_name_to_words,
    expand_prompts,
    read_prompt_file,
    toy_prompts,
    ucf101_class_prompts,
)
from modules.evaluation.real_videos import real_clips
from modules.evaluation.report import EvaluationReport, markdown_table, write_report
from modules.evaluation.toy_metrics import ToyShapesAccuracy
from modules.evaluation.video_folder import (
    MANIFEST_NAME,
    generated_videos,
    iter_video_batches,
    write_manifest,
)
from tests.conftest import compose_config

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# frames [N, 3, H, W] in [0, 1] -> [N, 6], built by Hydra from plain torch modules
TINY_FRAME_FEATURES = {
    "_target_": "torch.nn.Sequential",
    "_args_": [
        {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 6, "kernel_size": 3, "stride": 2},
        {"_target_": "torch.nn.Tanh"},
        {"_target_": "torch.nn.AdaptiveAvgPool2d", "output_size": 1},
        {"_target_": "torch.nn.Flatten"},
    ],
}


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def write_toy_videos(
    folder: Path, indices: list[int], *, manifest: bool, size: int = 32, num_frames: int = 8
) -> list[str]:
    """Ground-truth toy mp4s `00000.mp4, ...` (and `videos.csv` if `manifest`); returns their captions."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for position, index in enumerate(indices):
        spec = toy_video_spec(index, np.random.default_rng([3, index]), size)
        name = f"{position:05d}.mp4"
        (folder / name).write_bytes(encode_mp4(render_toy_video(spec, size, num_frames), fps=8))
        rows.append((name, spec.caption, position))
    if manifest:
        write_manifest(folder, rows)
    return [caption for _, caption, _ in rows]


# ---- prompts ----------------------------------------------------------------------------------------------


def test_prompt_files_txt_and_csv(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("# comment\na cat\n\n  a dog  \n")
    assert read_prompt_file(text) == ["a cat", "a dog"]
    table = tmp_path / "captions.csv"
    table.write_text('video_id,caption\nvideo7,"a man, cooking"\nvideo8,a car\n')
    assert read_prompt_file(table, column="caption") == ["a man, cooking", "a car"]
    with pytest.raises(ValueError, match=r"eval_protocol\.prompts\.column"):
        read_prompt_file(table, column="sentence")
    with pytest.raises(FileNotFoundError, match=r"eval_protocol\.prompts\.path"):
        read_prompt_file(tmp_path / "missing.txt")


def test_ucf101_class_names_become_prompts(tmp_path):
    assert class_name_to_words("ApplyEyeMakeup") == "apply eye makeup"
    assert class_name_to_words("YoYo") == "yo yo"
    assert class_name_to_words("HandstandPushups") == "handstand pushups"
    assert class_name_to_words("PlayingDaf") == "playing daf"
    class_index = tmp_path / "classInd.txt"
    class_index.write_text("1 ApplyEyeMakeup\n2 ApplyLipstick\n101 YoYo\n")
    assert ucf101_class_prompts(class_index, template="a person doing {}") == [
        "a person doing apply eye makeup",
        "a person doing apply lipstick",
        "a person doing yo yo",
    ]
    with pytest.raises(ValueError, match="template"):
        ucf101_class_prompts(class_index, template="no slot")


def test_toy_prompts_cover_every_combination_once():
    prompts = toy_prompts()
    assert len(prompts) == len(set(prompts)) == 84
    assert prompts[0] == "a red circle moving left"


def test_expand_prompts_one_each_subset_and_balanced_cycle():
    prompts = [f"class {i}" for i in range(5)]
    assert [job.prompt for job in expand_prompts(prompts, None, seed=10)] == prompts
    subset = expand_prompts(prompts, 3, seed=10)
    assert len({job.prompt for job in subset}) == 3
    assert [job.prompt for job in subset] == [job.prompt for job in expand_prompts(prompts, 3, seed=10)]
    cycled = expand_prompts(prompts, 12, seed=10)
    counts = {prompt: sum(job.prompt == prompt for job in cycled) for prompt in prompts}
    assert sorted(counts.values()) == [2, 2, 2, 3, 3]
    assert [job.seed for job in cycled] == list(range(10, 22))
    with pytest.raises(ValueError, match="num_videos"):
        expand_prompts(prompts, 0, seed=0)


# ---- video folders and real clips -------------------------------------------------------------------------


def test_generated_folder_prompts_from_manifest_sidecar_or_file_name(tmp_path, caplog):
    captions = write_toy_videos(tmp_path / "with_manifest", [0, 30], manifest=True)
    assert [e.prompt for e in generated_videos(tmp_path / "with_manifest")] == captions

    loose = tmp_path / "loose"
    write_toy_videos(loose, [0, 30], manifest=False)
    (loose / "00000.txt").write_text("a red circle moving left\n")
    (loose / "00001.mp4").rename(loose / "a-blue-square-moving-up_seed3.mp4")
    with caplog.at_level(logging.INFO):
        entries = generated_videos(loose)
    assert [e.prompt for e in entries] == ["a red circle moving left", "a blue square moving up"]
    assert MANIFEST_NAME in caplog.text

    (loose / "clip.mp4").write_bytes((loose / "00000.mp4").read_bytes())
    with pytest.raises(ValueError, match="no prompt for"):
        generated_videos(loose)


def test_folder_batches_decode_clips_and_refuse_short_generated_videos(tmp_path):
    write_toy_videos(tmp_path, [0, 1, 2], manifest=True, size=32, num_frames=8)
    entries = generated_videos(tmp_path)
    batches = list(
        iter_video_batches(
            entries,
            FrameSelection(8, frame_stride=1),
            height=16,
            width=16,
            batch_size=2,
            skip_unreadable=False,
        )
    )
    assert [tuple(videos.shape) for videos, _ in batches] == [(2, 8, 3, 16, 16), (1, 8, 3, 16, 16)]
    assert batches[0][0].min() >= -1 and batches[0][0].max() <= 1
    too_long = FrameSelection(9, frame_stride=1)
    with pytest.raises(ValueError, match="cannot use"):
        list(iter_video_batches(entries, too_long, height=16, width=16, batch_size=2, skip_unreadable=False))
    assert (
        list(iter_video_batches(entries, too_long, height=16, width=16, batch_size=2, skip_unreadable=True))
        == []
    )


def test_real_clips_from_toy_shards_are_distinct_and_capped(tmp_path, caplog):
    real_data = OmegaConf.create(
        {
            "_target_": "datamodules.video_datamodule.VideoDataModule",
            "train_urls": str(tmp_path / "shapes/train"),
            "val_urls": str(tmp_path / "shapes/val"),
            "batch_size": 4,
            "num_workers": 0,
            "num_frames": 8,
            "frame_stride": 1,
            "target_fps": None,
            "height": 16,
            "width": 16,
            "samples_per_epoch": 4,
            "val_samples": 12,
            "shuffle_buffer": 0,
            "seed": 0,
            "pin_memory": False,
            "toy_shards": {
                "_target_": "datamodules.toy_shapes.ShapesShardSet",
                "root": str(tmp_path / "shapes"),
                "train_samples": 2,
                "val_samples": 6,
                "samples_per_shard": 4,
                "num_frames": 12,
                "size": 32,
            },
        }
    )
    with caplog.at_level(logging.WARNING):
        clips = torch.cat(list(real_clips(real_data, None, max_videos=12)))
    assert clips.shape == (6, 8, 3, 16, 16)  # the 6 validation videos once, not cycled to 12
    assert "only 6 distinct real clips" in caplog.text
    assert torch.cat(list(real_clips(real_data, None, max_videos=5))).shape[0] == 5


# ---- metrics, reports -------------------------------------------------------------------------------------


def test_build_metrics_skips_or_fails_on_missing_weights(tmp_path):
    cfg = compose_config("eval", [], tmp_path)
    metrics, skipped = build_metrics(cfg.metrics, ["toy_accuracy", "fvd"], missing_weights="skip")
    assert list(metrics) == ["toy_accuracy"] and "metrics.fvd.weights_path" in skipped["fvd"]
    with pytest.raises(InstantiationException, match=r"metrics\.clipsim\.weights_path"):
        build_metrics(cfg.metrics, ["clipsim"], missing_weights="error")
    with pytest.raises(ValueError, match="no entry under metrics"):
        build_metrics(cfg.metrics, ["inception_score"], missing_weights="skip")


def test_run_metrics_needs_a_real_source_only_for_real_metrics():
    videos = torch.zeros(1, 2, 3, 8, 8)
    results = run_metrics(
        {"toy_accuracy": ToyShapesAccuracy()}, [(videos, ["a red circle moving left"])], None
    )
    assert set(results["toy_accuracy"]) == {
        "toy/color_accuracy",
        "toy/direction_accuracy",
        "toy/joint_accuracy",
    }


def test_report_files(tmp_path):
    report = EvaluationReport(
        protocol="toy",
        results={"fvd": {"fvd": 123.456}, "toy_accuracy": {"toy/color_accuracy": 0.5}},
        settings={"fvd": {"resize": "bilinear", "real_clips": 64}},
        skipped={"clipsim": "no weights"},
        sources={"generated_dir": "/videos"},
    )
    table = markdown_table(report)
    assert "| fvd | 123.46 | resize=bilinear; real_clips=64 |" in table
    assert "| toy/color_accuracy | 0.5000 |" in table
    assert "- clipsim: no weights" in table
    written = write_report(report, tmp_path, global_step=7)
    assert json.loads(written["json"].read_text())["results"]["fvd"]["fvd"] == 123.456
    events = EventAccumulator(str(written["tensorboard"]))
    events.Reload()
    scalars = events.Scalars("eval/fvd")
    assert [(s.step, round(s.value, 3)) for s in scalars] == [(7, 123.456)]


# ---- eval.py end to end -----------------------------------------------------------------------------------


def _tiny_metric_networks(cfg) -> None:
    with open_dict(cfg):
        cfg.metrics.fvd.random_init_ok = True
        cfg.metrics.fvd.size = 16
        cfg.metrics.clipsim.arch = TINY_CLIP
        cfg.metrics.clipsim.random_init_ok = True
        cfg.metrics.frame_fid.feature_extractor = TINY_FRAME_FEATURES
        cfg.metrics.frame_fid.input_img_size = [3, 16, 16]


def test_eval_scores_a_generated_folder_against_a_real_folder(tmp_path):
    generated, real = tmp_path / "generated", tmp_path / "real"
    write_toy_videos(generated, list(range(0, 84, 7)), manifest=True)
    write_toy_videos(real, list(range(1, 84, 7)), manifest=False)
    cfg = compose_config(
        "eval",
        [f"generated_dir={generated}", f"real_dir={real}", "eval_protocol.num_real_videos=10", "device=cpu"],
        tmp_path,
    )
    _tiny_metric_networks(cfg)
    results = importlib.import_module("eval").evaluate(cfg)

    assert results["toy/color_accuracy"] == 1.0 and results["toy/direction_accuracy"] == 1.0
    assert results["fvd"] > 0 and np.isfinite(results["fvd"])
    assert results["frame_fid"] > 0
    assert -1.0 <= results["clipsim"] <= 1.0
    output = Path(cfg.paths.output_dir)
    saved = json.loads((output / "eval_results.json").read_text())
    assert saved["settings"]["fvd"]["real_clips"] == 10 and saved["settings"]["fvd"]["generated_clips"] == 12
    assert saved["skipped"] == {}
    assert "| fvd |" in (output / "eval_results.md").read_text()
    assert list((output / "tensorboard").glob("events.out.tfevents.*"))


def test_eval_without_weights_reports_toy_accuracy_and_lists_skipped_metrics(tmp_path):
    generated = tmp_path / "generated"
    write_toy_videos(generated, [0, 10, 20, 30], manifest=True)
    cfg = compose_config("eval", [f"generated_dir={generated}", "device=cpu"], tmp_path)
    results = importlib.import_module("eval").evaluate(cfg)
    assert set(results) == {"toy/color_accuracy", "toy/direction_accuracy", "toy/joint_accuracy"}
    saved = json.loads((Path(cfg.paths.output_dir) / "eval_results.json").read_text())
    assert set(saved["skipped"]) == {"fvd", "frame_fid", "clipsim"}


def test_eval_generates_with_a_random_tiny_model(tmp_path):
    cfg = compose_config(
        "eval",
        [
            "ckpt_path=null",
            "device=cpu",
            "eval_protocol.num_videos=3",
            "eval_protocol.num_frames=4",
            "eval_protocol.metrics=[toy_accuracy]",
            "batch_size=2",
            "sampler.num_steps=2",
        ],
        tmp_path,
    )
    results = importlib.import_module("eval").evaluate(cfg)
    assert 0.0 <= results["toy/joint_accuracy"] <= 1.0
    folder = Path(cfg.paths.output_dir) / "generated"
    entries = generated_videos(folder)
    assert [entry.prompt for entry in entries] == [
        job.prompt for job in expand_prompts(toy_prompts(), 3, seed=0)
    ]
    assert [entry.path.name for entry in entries] == ["00000.mp4", "00001.mp4", "00002.mp4"]
