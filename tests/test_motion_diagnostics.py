"""The motion diagnostics (modules/evaluation/motion_diagnostics.py) on a tiny random SCVideo and on toy clips."""

import pytest
import torch
from hydra.utils import instantiate

from datamodules.toy_shapes import render_toy_video, toy_video_spec
from modules.evaluation.motion_diagnostics import (
    direction_commitment,
    layer_movement,
    noisy_clip_readability,
    probe_by_timestep,
    temporal_layer_report,
)
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def tiny_scvideo(tmp_path_factory):
    cfg = compose_config(
        "train",
        ["experiment=toy_scvideo", "sampler.num_steps=2", "sampler.progress=false"],
        tmp_path_factory.mktemp("cfg"),
    )
    torch.manual_seed(0)
    return instantiate(cfg.model).eval()


def toy_clips(count: int) -> tuple[torch.Tensor, list[str]]:
    import numpy as np

    specs = [
        toy_video_spec(21 * i, np.random.default_rng([1, i]), 32, "direction_free", (0.26, 0.3))
        for i in range(count)
    ]
    video = torch.stack([torch.from_numpy(render_toy_video(spec, 32, 8)) for spec in specs])
    return video.permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0, [spec.caption for spec in specs]


def test_temporal_layers_start_at_identity_and_movement_sees_a_change(tiny_scvideo):
    movement = layer_movement(tiny_scvideo.net)
    assert movement and all(value == 0.0 for value in movement.values())
    conv = next(name for name in movement if name.endswith("temporal_conv"))
    weight = tiny_scvideo.net.get_submodule(conv).weight
    original = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(1.5)
    try:
        assert layer_movement(tiny_scvideo.net)[conv] == pytest.approx(0.5, rel=1e-5)
    finally:
        with torch.no_grad():
            weight.copy_(original)


def test_temporal_layer_report_at_identity_has_no_attention_contribution(tiny_scvideo):
    video, captions = toy_clips(2)
    report = temporal_layer_report(tiny_scvideo, video, captions, timestep=500)
    attention = [row for name, row in report.items() if "attn_temp" in name]
    convs = [row for name, row in report.items() if name.endswith("temporal_conv")]
    assert attention and convs
    # zero output projections add nothing; an identity conv's residual (output - input) is zero
    assert all(row["contribution"] == 0.0 for row in attention + convs)


def test_direction_commitment_rows(tiny_scvideo):
    rows = direction_commitment(
        tiny_scvideo, ["a red circle moving left"], [0, 2], num_frames=4, height=32, width=32
    )
    assert [row["switch_after"] for row in rows] == [0, 2]
    assert all(0.0 <= row["first"] + row["second"] <= 1.0 for row in rows)


def test_ideal_observer_reads_a_clean_clip_and_not_pure_noise():
    alphas = torch.linspace(0.999, 1e-6, 1000, dtype=torch.float64)
    rows = noisy_clip_readability(alphas, [0, 999], scale=1.0, shift=-0.94, num_clips=24)
    assert rows[0]["direction_accuracy"] == 1.0 and rows[0]["color_accuracy"] == 1.0
    assert rows[1]["direction_accuracy"] < 0.6 and rows[1]["color_accuracy"] < 0.5


def test_the_led_probe_hands_per_frame_steps_and_scores_the_later_frames_only(tiny_scvideo, monkeypatch):
    """first_frame_step: t `[4, T]` with the first frame at that step; a prediction that differs between the four
    direction captions on the first frame only leaves the probe's loss gap at exactly 0."""
    seen = []

    def first_frame_differs(x_t, t, cond):
        seen.append(t.clone())
        eps = torch.zeros_like(x_t)
        eps[:, :, 0] = torch.arange(x_t.shape[0], dtype=x_t.dtype).reshape(-1, 1, 1, 1)
        return eps

    monkeypatch.setattr(tiny_scvideo.net, "forward", first_frame_differs)
    video, captions = toy_clips(2)
    led = probe_by_timestep(
        tiny_scvideo, video, captions, "direction", [900], noise_draws=1, first_frame_step=50
    )
    assert all(t.shape == (4, 8) and torch.equal(t[:, 0], torch.full((4,), 50)) for t in seen)
    assert all(bool((t[:, 1:] == 900).all()) for t in seen)
    assert led[0].relative_gap == 0.0
    # every frame at the step, the first frame scored too: the same prediction now separates the captions
    plain = probe_by_timestep(tiny_scvideo, video, captions, "direction", [900], noise_draws=1)
    assert seen[-1].shape == (4,) and plain[0].relative_gap != 0.0
