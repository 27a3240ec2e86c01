"""sample.py's ART-V modes: text+image-to-video from an image file, and multi-prompt long videos."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from omegaconf import open_dict
from PIL import Image

import sample
from modules.runtime.sampling import load_first_frame
from tests.conftest import compose_config


def _tiny_artv_cfg(tmp_path, extra):
    cfg = compose_config(
        "sample",
        [
            "experiment=toy_artv",
            "ckpt_path=null",
            "sampler.num_steps=2",
            "sampler.progress=false",
            "seeds=[0]",
            *extra,
        ],
        tmp_path,
    )
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "videos")
    return cfg


def _frame_count(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_load_first_frame_covers_and_centre_crops(tmp_path):
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, 15:25] = 255  # scaled x0.8 to 16x32 and cropped at column 8: the band lands on columns 4..11
    Image.fromarray(pixels).save(tmp_path / "frame.png")
    frame = load_first_frame(tmp_path / "frame.png", 16, 16)
    assert frame.shape == (1, 3, 16, 16)
    assert frame.min() >= -1 and frame.max() <= 1
    assert frame[0, :, :, 4:12].mean() > 0.9 and frame[0, :, :, 0].mean() < -0.5


def test_multi_prompt_writes_one_long_video(tmp_path):
    cfg = _tiny_artv_cfg(tmp_path, ["multi_prompt=true", "frames_per_prompt=2", "prompts_file=null"])
    with open_dict(cfg):
        cfg.prompt = ["a red circle moving left", "a blue square moving up", "a green triangle moving down"]
    (path,) = sample.sample(cfg)
    assert path.name.startswith("multi-a-red-circle")
    assert _frame_count(path) == 6


def test_first_frame_image_becomes_frame_zero(tmp_path, monkeypatch):
    image = np.full((32, 32, 3), 30, dtype=np.uint8)
    image[8:16, 8:16] = (255, 0, 0)
    Image.fromarray(image).save(tmp_path / "start.png")
    cfg = _tiny_artv_cfg(tmp_path, [f"first_frame={tmp_path / 'start.png'}", "num_frames=3"])
    captured = {}
    original = sample.write_video

    def keep(path, video, fps, **kwargs):
        captured["video"] = video
        return original(path, video, fps, **kwargs)

    monkeypatch.setattr(sample, "write_video", keep)
    (path,) = sample.sample(cfg)
    assert _frame_count(path) == 3
    expected = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(captured["video"][0], expected, atol=1e-5, rtol=0)


def test_save_mask_writes_a_mask_video_next_to_each_video(tmp_path):
    cfg = _tiny_artv_cfg(tmp_path, ["save_mask=true", "num_frames=2"])
    paths = sample.sample(cfg)
    assert [p.name for p in paths] == [
        "a-red-circle-moving-left_seed0.mp4",
        "a-red-circle-moving-left_seed0_mask.mp4",
    ]
    assert _frame_count(paths[1]) == 2


def test_save_mask_is_refused_for_a_model_without_masks(tmp_path):
    cfg = compose_config("sample", ["ckpt_path=null", "save_mask=true", "sampler.num_steps=2"], tmp_path)
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / "videos")
    with pytest.raises(ValueError, match="save_mask"):
        sample.sample(cfg)
