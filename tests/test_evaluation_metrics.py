"""CLIPSIM (tiny open_clip), frame FID (torchmetrics with custom feature networks) and the toy accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from datamodules.toy_shapes import render_toy_video, toy_video_spec
from modules.evaluation.clipsim import CLIPSimilarity, build_open_clip_model, clip_image_batch
from modules.evaluation.frame_fid import FrameFID, InceptionV3Features, select_frames
from modules.evaluation.frechet_distance import FeatureStatistics, frechet_distance_of_fits
from modules.evaluation.toy_metrics import ToyShapesAccuracy
from modules.evaluation.video_metric import MissingWeightsError

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_feature_net() -> nn.Module:
    """Frames [N, 3, H, W] in [0, 1] -> [N, 6]."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, stride=2), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def toy_videos(indices: list[int], size: int = 32, num_frames: int = 8) -> tuple[torch.Tensor, list[str]]:
    """Ground-truth toy videos `[B, T, 3, H, W]` in [-1, 1] and their captions."""
    videos, captions = [], []
    for index in indices:
        spec = toy_video_spec(index, np.random.default_rng([7, index]), size)
        frames = torch.from_numpy(render_toy_video(spec, size, num_frames)).permute(0, 3, 1, 2)
        videos.append(frames.float() / 127.5 - 1.0)
        captions.append(spec.caption)
    return torch.stack(videos), captions


# ---- CLIPSIM ----------------------------------------------------------------------------------------------


def test_clipsim_is_the_mean_frame_text_cosine():
    metric = CLIPSimilarity(TINY_CLIP, None, random_init_ok=True, frames_per_forward=5)
    videos = torch.rand(2, 4, 3, 40, 48) * 2 - 1
    prompts = ["a red circle moving left", "a panda playing guitar"]
    scores = metric.video_scores(videos, prompts)
    model = metric.model
    with torch.no_grad():
        for video, prompt, score in zip(videos, prompts, scores, strict=True):
            text = model.encode_text(metric.tokenizer([prompt]), normalize=True)
            images = model.encode_image(
                clip_image_batch(video, (32, 32), metric.mean, metric.std), normalize=True
            )
            assert score.item() == pytest.approx((images @ text.T).mean().item(), abs=1e-5)
    metric.update_generated(videos, prompts)
    assert metric.compute()["clipsim"] == pytest.approx(scores.mean().item(), abs=1e-6)
    assert -1.0 <= metric.compute()["clipsim"] <= 1.0


def test_clipsim_of_a_still_video_equals_its_frame_score():
    metric = CLIPSimilarity(TINY_CLIP, None, random_init_ok=True)
    frame = torch.rand(1, 1, 3, 32, 32) * 2 - 1
    still = frame.expand(1, 5, 3, 32, 32)
    assert metric.video_scores(still, ["x"]).item() == pytest.approx(
        metric.video_scores(frame, ["x"]).item(), abs=1e-5
    )


def test_clip_image_batch_crops_the_short_side_and_normalises():
    frames = torch.full((1, 3, 20, 40), 1.0)
    out = clip_image_batch(frames, (10, 10), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert out.shape == (1, 3, 10, 10)
    torch.testing.assert_close(out, torch.full_like(out, 2.0))  # (1 - 0.5) / 0.25


def test_clip_weights_load_from_a_local_file(tmp_path):
    source = build_open_clip_model(TINY_CLIP, None, random_init_ok=True)
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save({f"module.{key}": value for key, value in source.state_dict().items()}, path)
    metric = CLIPSimilarity(TINY_CLIP, str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(metric.model.state_dict()[key], value), key
    assert metric.settings()["weights"] == "open_clip_pytorch_model.bin"


def test_named_architecture_builds_without_download_and_checks_its_config():
    model = build_open_clip_model("ViT-B-32", None, random_init_ok=True, device="meta")
    assert sum(p.numel() for p in model.parameters()) == 151_277_313  # OpenAI CLIP ViT-B/32
    with pytest.raises(ValueError, match="Hugging Face"):
        build_open_clip_model("coca_roberta-ViT-B-32", None, random_init_ok=True, device="meta")
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        build_open_clip_model("ViT-X-99", None, random_init_ok=True)
    with pytest.raises(MissingWeightsError, match=r"metrics\.clipsim\.weights_path"):
        build_open_clip_model("ViT-B-32", None)


# ---- frame FID --------------------------------------------------------------------------------------------


def test_frame_fid_equals_the_frechet_distance_of_the_frame_features():
    network = tiny_feature_net()
    metric = FrameFID(network, frames_per_video=3, frames_per_forward=4, input_img_size=(3, 16, 16))
    generator = torch.Generator().manual_seed(1)
    real = torch.rand(5, 6, 3, 16, 16, generator=generator) * 2 - 1
    fake = (torch.rand(5, 6, 3, 16, 16, generator=generator) * 1.5 - 0.5).clamp(-1, 1)
    metric.update_real(real)
    metric.update_generated(fake, prompts=[""] * 5)
    reference = []
    for videos in (real, fake):
        statistics = FeatureStatistics()
        with torch.no_grad():
            statistics.update(network((select_frames(videos, 3) + 1) / 2))
        reference.append(statistics.fit())
    assert metric.compute()["frame_fid"] == pytest.approx(frechet_distance_of_fits(*reference), rel=1e-3)
    assert metric.settings()["real_frames"] == metric.settings()["generated_frames"] == 15


def test_frame_fid_of_identical_frame_sets_is_zero():
    metric = FrameFID(tiny_feature_net(), input_img_size=(3, 16, 16))
    videos = torch.rand(4, 3, 3, 16, 16) * 2 - 1
    metric.update_real(videos)
    metric.update_generated(videos, prompts=[""] * 4)
    assert metric.compute()["frame_fid"] == pytest.approx(0.0, abs=1e-3)


def test_select_frames_spreads_frames_evenly():
    videos = torch.arange(5.0).view(1, 5, 1, 1, 1).expand(2, 5, 3, 2, 2)
    assert select_frames(videos, 2)[:, 0, 0, 0].tolist() == [0.0, 4.0, 0.0, 4.0]
    assert select_frames(videos, None).shape == (10, 3, 2, 2)
    with pytest.raises(ValueError, match="frames_per_video"):
        select_frames(videos, 6)


def test_inception_features_load_torchvision_weights(tmp_path):
    reference = InceptionV3Features(None, random_init_ok=True)
    state = {key: value for key, value in reference.network.state_dict().items() if not key.startswith("fc.")}
    # torchvision's file has the 1000-class head; the feature extractor drops it after loading
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    path = tmp_path / "inception_v3_google.pth"
    torch.save(state, path)
    loaded = InceptionV3Features(str(path))
    loaded.train()
    assert not loaded.network.training
    frames = torch.rand(2, 3, 40, 40)
    with torch.no_grad():
        features = loaded(frames)
        torch.testing.assert_close(features, reference(frames))
    assert features.shape == (2, InceptionV3Features.num_features)
    with pytest.raises(MissingWeightsError, match=r"feature_extractor\.weights_path"):
        InceptionV3Features(None)


# ---- toy accuracy -----------------------------------------------------------------------------------------


def test_toy_accuracy_is_high_on_ground_truth_videos_and_low_on_shuffled_captions():
    videos, captions = toy_videos(list(range(0, 84, 3)))
    truth = ToyShapesAccuracy()
    truth.update_generated(videos[:14], captions[:14])
    truth.update_generated(videos[14:], captions[14:])
    scores = truth.compute()
    assert scores["toy/color_accuracy"] >= 0.95
    assert scores["toy/direction_accuracy"] >= 0.95
    assert truth.settings()["videos"] == 28

    # video of sample i with the caption of sample i + 24: colour index + 3 (mod 7), direction + 1 or + 2 (mod 4)
    shuffled = ToyShapesAccuracy()
    shuffled.update_generated(videos, captions[8:] + captions[:8])
    wrong = shuffled.compute()
    assert wrong["toy/color_accuracy"] <= 0.05
    assert wrong["toy/direction_accuracy"] <= 0.05
    assert wrong["toy/joint_accuracy"] == 0.0
