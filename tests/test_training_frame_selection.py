"""A training step encodes only the frames its example reads: ART-V at most 4 per clip (anchor, two references,
target; fewer when they coincide), SCVideo every frame; the example equals the one built from the whole clip."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from modules.artv.reference_frames import draw_training_frame_indices
from tests.conftest import compose_config

NUM_FRAMES = 8


def _module(tmp_path, experiment: str):
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    return instantiate(cfg.model), cfg.resolution


def _count_encoded_frames(module) -> list[int]:
    """Wrap the first stage's per-frame encoder; returns the list that receives each call's frame count."""
    counts: list[int] = []
    encode = module.first_stage.posterior_moments

    def counting(frames):
        counts.append(frames.shape[0])  # [N, 3, H, W]
        return encode(frames)

    module.first_stage.posterior_moments = counting
    return counts


def _batch(resolution, batch: int) -> dict:
    video = torch.rand(batch, NUM_FRAMES, 3, resolution.height, resolution.width) * 2 - 1
    return {"video": video, "caption": ["a red circle moving left"] * batch}


@pytest.mark.parametrize(("experiment", "per_clip"), [("toy_artv", 4), ("toy_scvideo", NUM_FRAMES)])
def test_a_training_step_encodes_only_the_frames_it_uses(tmp_path, experiment, per_clip):
    module, resolution = _module(tmp_path, experiment)
    counts = _count_encoded_frames(module)
    batch = 6
    loss = module.diffusion_loss(_batch(resolution, batch), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    assert sum(counts) <= batch * per_clip
    if experiment == "toy_scvideo":
        assert sum(counts) == batch * NUM_FRAMES


def test_coinciding_frames_are_encoded_once(tmp_path):
    """k = 1 reads frame 0 three times (anchor, clamped k-2, k-1) and frame 1: two frames, not four."""
    module, resolution = _module(tmp_path, "toy_artv")
    module.net.first_step_probability = 1.0
    counts = _count_encoded_frames(module)
    video = _batch(resolution, 3)["video"]
    indices = module.net.training_frame_indices(3, NUM_FRAMES)
    assert indices.tolist() == [[0, 0, 0, 1]] * 3
    latents = module.clip_latents({"video": video}, indices)
    assert sum(counts) == 3 * 2 and latents.shape[2] == 4


def test_the_example_from_selected_frames_equals_the_one_from_the_whole_clip(tmp_path):
    module, resolution = _module(tmp_path, "toy_artv")
    module.eval()  # seeded frame choice and reference noise: both paths draw the same
    video = _batch(resolution, 5)["video"]
    indices = module.net.training_frame_indices(5, NUM_FRAMES)
    selected = module.net.training_example(module.clip_latents({"video": video}, indices), indices)
    whole = module.net.training_example(module.encode_video(video))
    assert torch.equal(selected.x0, whole.x0)
    for key in ("reference", "anchor"):
        assert torch.equal(selected.cond[key], whole.cond[key])


def test_frame_indices_are_anchor_references_and_target():
    indices = draw_training_frame_indices(500, NUM_FRAMES, torch.Generator().manual_seed(0))
    anchor, earlier, previous, target = indices.unbind(1)
    assert (anchor == 0).all() and ((target >= 1) & (target < NUM_FRAMES)).all()
    assert torch.equal(previous, target - 1) and torch.equal(earlier, (target - 2).clamp(min=0))
    assert set(target.tolist()) == set(range(1, NUM_FRAMES))
