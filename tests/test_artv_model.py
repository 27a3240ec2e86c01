"""ART-V building blocks and the denoiser on tiny configs: T2I-Adapter, anchor cross-attention, the masked
composition, training examples and loading SD weights into Φdynamic."""

from __future__ import annotations

import functools

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from modules.artv.adapter import T2IAdapter
from modules.artv.anchor_attention import AnchorSpatialTransformer, anchor_tokens, is_anchor_parameter
from modules.artv.artv_denoiser import ARTVDenoiser
from modules.artv.masked_diffusion import masked_x0
from modules.artv.reference_frames import has_reference
from modules.blocks.attention import SpatialTransformer
from modules.checkpoints import StateDictMismatchError
from modules.unet.unet_2d import UNetModel
from tests.helpers.tiny_artv import (
    CONTEXT_DIM,
    LATENT_CHANNELS,
    LATENT_SIZE,
    UNET_ARGUMENTS,
    random_conditions,
    tiny_artv,
)

pytestmark = pytest.mark.usefixtures("single_torch_thread")


# ---------------------------------------------------------------- T2I-Adapter


def test_adapter_levels_downsample_by_average_pooling_and_project_where_channels_change() -> None:
    torch.manual_seed(0)
    adapter = T2IAdapter([32, 64, 64], nums_rb=2, cin=8, ksize=1, sk=True, use_conv=False)
    assert [name for name, _ in adapter.named_children()] == ["conv_in", "body"]
    has_in_conv = [block.in_conv is not None for block in adapter.body]
    assert has_in_conv == [False, False, True, False, False, False]  # only 32 -> 64
    assert tuple(adapter.body[2].block2.weight.shape) == (64, 64, 1, 1)  # ksize 1
    with torch.no_grad():  # residual branches off: each block is its downsample (and in_conv) only
        for block in adapter.body:
            block.block2.weight.zero_()
            block.block2.bias.zero_()
    x = torch.randn(2, 8, 16, 16)
    features = adapter(x)
    assert [tuple(f.shape) for f in features] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 64, 4, 4)]
    level0 = adapter.conv_in(x)
    torch.testing.assert_close(features[0], level0)
    pooled = torch.nn.functional.avg_pool2d(level0, 2)
    torch.testing.assert_close(features[1], adapter.body[2].in_conv(pooled))
    torch.testing.assert_close(features[2], torch.nn.functional.avg_pool2d(features[1], 2))


def test_adapter_rejects_unsupported_settings_and_wrong_inputs() -> None:
    with pytest.raises(ValueError, match="sk=True"):
        T2IAdapter([32, 64], sk=False)
    adapter = T2IAdapter([32, 64], cin=8)
    with pytest.raises(ValueError, match=r"\[B, 8, h, w\]"):
        adapter(torch.randn(1, 4, 8, 8))


def test_adapter_with_conv_downsampling_uses_the_original_key_names() -> None:
    adapter = T2IAdapter([32, 64], nums_rb=1, cin=8, use_conv=True)
    assert "body.1.down_opt.op.weight" in adapter.state_dict()
    assert [tuple(f.shape) for f in adapter(torch.randn(1, 8, 8, 8))] == [(1, 32, 8, 8), (1, 64, 4, 4)]


# ---------------------------------------------------------------- anchor cross-attention


def test_anchor_tokens_are_4x4_patches_flattened_row_major_then_channels() -> None:
    anchor = torch.arange(2 * 4 * 8, dtype=torch.float32).reshape(1, 2, 4, 8)
    tokens = anchor_tokens(anchor, patch_size=4)
    assert tokens.shape == (1, 2, 2 * 16)
    for p1, p2, channel in [(0, 0, 0), (1, 2, 1), (3, 3, 0)]:
        assert tokens[0, 1, (p1 * 4 + p2) * 2 + channel] == anchor[0, channel, p1, 4 + p2]
    with pytest.raises(ValueError, match="divisible by the patch size 4"):
        anchor_tokens(torch.randn(1, 4, 6, 8), patch_size=4)


def test_fresh_anchor_block_is_the_identity_and_trained_one_reads_the_anchor() -> None:
    torch.manual_seed(0)
    plain = SpatialTransformer(32, 2, 16, context_dim=CONTEXT_DIM, use_linear=True)
    anchored = AnchorSpatialTransformer(32, 2, 16, 1, CONTEXT_DIM, True, False, anchor_context_dim=64)
    with torch.no_grad():
        for parameter in plain.parameters():
            parameter.normal_(std=0.1)
    report = anchored.load_state_dict(plain.state_dict(), strict=False)
    assert report.unexpected_keys == [] and all(is_anchor_parameter("." + k) for k in report.missing_keys)
    x, text = torch.randn(2, 32, 8, 8), torch.randn(2, 3, CONTEXT_DIM)
    anchor_a, anchor_b = torch.randn(2, 4, 64), torch.randn(2, 4, 64)
    torch.testing.assert_close(anchored(x, text, anchor_context=anchor_a), plain(x, text))
    with torch.no_grad():
        for parameter in anchored.anchor_block.parameters():
            if not parameter.any():
                parameter.normal_(std=0.1)
    assert not torch.allclose(
        anchored(x, text, anchor_context=anchor_a), anchored(x, text, anchor_context=anchor_b)
    )
    with pytest.raises(ValueError, match="anchor_context"):
        anchored(x, text)


# ---------------------------------------------------------------- masked composition


def dynamic_eps(net: ARTVDenoiser, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
    """Φdynamic's own eps, computed outside the denoiser's forward."""
    features = net.dynamic_adapter(cond["reference"][:, : 2 * LATENT_CHANNELS])
    return net.dynamic_unet(
        x_t, t, cond["text"], adapter_features=features, anchor_context=anchor_tokens(cond["anchor"], 4)
    )


@pytest.mark.parametrize("mask_requires_reference", [True, False])
def test_masked_composition_is_x0_blend_of_reference_and_dynamic_prediction(
    mask_requires_reference: bool,
) -> None:
    net = tiny_artv(mask_requires_reference=mask_requires_reference).eval()
    cond = random_conditions()
    x_t = torch.randn(2, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)
    t = torch.tensor([20, 700])
    with torch.no_grad():
        eps, mask = net(x_t, t, cond, return_mask=True)
        eps_dynamic = dynamic_eps(net, x_t, t, cond)
    assert mask.shape == (2, 1, LATENT_SIZE, LATENT_SIZE)
    assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0
    assert float(mask.std()) > 0.01  # a real per-pixel mask, not a constant
    torch.testing.assert_close(net.last_mask, mask)
    reference_frame = cond["reference"][:, 2 * LATENT_CHANNELS :]
    schedule = net.schedule
    # x0_hat = M * z_ref + (1 - M) * x0_dyn, with x0_dyn = (x_t - sqrt(1 - a) eps_dyn) / sqrt(a)
    x0_dynamic = schedule.predict_x0_from_eps(x_t, t, eps_dynamic)
    expected_x0 = mask * reference_frame + (1 - mask) * x0_dynamic
    torch.testing.assert_close(schedule.predict_x0_from_eps(x_t, t, eps), expected_x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(masked_x0(schedule, x_t, t, eps_dynamic, mask, reference_frame), expected_x0)


@pytest.mark.parametrize("mask_requires_reference", [True, False])
def test_dropped_reference_leaves_phi_dynamic_alone_per_sample(mask_requires_reference: bool) -> None:
    net = tiny_artv(mask_requires_reference=mask_requires_reference).eval()
    cond = random_conditions()
    cond["reference"][1] = 0.0  # sample 1: the reference's null value; sample 0 keeps its reference
    x_t = torch.randn(2, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)
    t = torch.tensor([300, 900])
    with torch.no_grad():
        eps, mask = net(x_t, t, cond, return_mask=True)
        eps_dynamic = dynamic_eps(net, x_t, t, cond)
    assert float(mask[0].std()) > 0.01  # the sample with a reference keeps its per-pixel mask
    if mask_requires_reference:  # nothing to copy: M = 0 and eps is Φdynamic's
        assert torch.equal(mask[1], torch.zeros_like(mask[1]))
        torch.testing.assert_close(eps[1], eps_dynamic[1])
    else:  # z_ref = 0 is copied like a frame: the composition scales Φdynamic's x0 by (1 - M)
        assert float(mask[1].min()) > 0.0
        x0_dynamic = net.schedule.predict_x0_from_eps(x_t, t, eps_dynamic)
        x0 = net.schedule.predict_x0_from_eps(x_t, t, eps)
        torch.testing.assert_close(x0[1], (1 - mask[1]) * x0_dynamic[1], atol=1e-4, rtol=1e-4)


def test_has_reference_tells_the_null_reference_apart() -> None:
    reference = torch.randn(3, 3 * LATENT_CHANNELS, 4, 4)
    reference[1] = 0.0
    reference[2, :, 0, 0] = 0.0  # a few zero values do not make a null reference
    assert has_reference(reference).tolist() == [True, False, True]


def test_mask_of_one_predicts_the_reference_frame_as_x0() -> None:
    net = tiny_artv()
    with torch.no_grad():
        net.mask_unet.out[-1].weight.zero_()
        net.mask_unet.out[-1].bias.fill_(100.0)  # sigmoid(100) == 1 in float32
    cond = random_conditions()
    x_t = torch.randn(2, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE)
    for step in (1, 500, 999):
        t = torch.full((2,), step)
        with torch.no_grad():
            eps, mask = net(x_t, t, cond, return_mask=True)
        assert torch.equal(mask, torch.ones_like(mask))
        x0 = net.schedule.predict_x0_from_eps(x_t, t, eps)
        torch.testing.assert_close(x0, cond["reference"][:, 2 * LATENT_CHANNELS :], atol=1e-4, rtol=1e-4)


def test_mask_starts_at_the_configured_logit() -> None:
    net = tiny_artv(randomize_zero_init=False, mask_init_logit=-4.0)
    with torch.no_grad():
        _, mask = net(torch.randn(1, 4, 8, 8), torch.tensor([10]), random_conditions(1), return_mask=True)
    torch.testing.assert_close(mask, torch.full_like(mask, torch.sigmoid(torch.tensor(-4.0)).item()))


def test_without_the_anchor_block_the_anchor_condition_is_unused() -> None:
    net = tiny_artv(anchor_attention=False)
    assert not any(is_anchor_parameter(name) for name, _ in net.named_parameters())
    cond = random_conditions()
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([5, 600])
    with torch.no_grad():
        eps = net(x_t, t, cond)
        eps_other_anchor = net(x_t, t, {**cond, "anchor": torch.randn_like(cond["anchor"])})
    torch.testing.assert_close(eps, eps_other_anchor)


def test_forward_rejects_missing_or_misshaped_conditions() -> None:
    net = tiny_artv()
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    cond = random_conditions()
    with pytest.raises(KeyError, match="anchor"):
        net(x_t, t, {"text": cond["text"], "reference": cond["reference"]})
    with pytest.raises(ValueError, match=r"cond\['reference'\] must be \[B, 12, h, w\]"):
        net(x_t, t, {**cond, "reference": cond["reference"][:, :8]})
    with pytest.raises(ValueError, match="anchor"):
        net(x_t, t, {**cond, "anchor": cond["anchor"][:, :, :4]})


def test_unet_settings_are_checked_against_the_latent_channels() -> None:
    with pytest.raises(ValueError, match="mask_unet must map 4 latent channels"):
        tiny_artv(mask_unet=functools.partial(UNetModel, 4, 4, **UNET_ARGUMENTS))


# ---------------------------------------------------------------- training examples


def frame_indexed_clip(batch: int, num_frames: int) -> Tensor:
    """Latent clips `[B, 4, T, 8, 8]` whose frame i is filled with the value i."""
    values = torch.arange(num_frames, dtype=torch.float32).reshape(1, 1, num_frames, 1, 1)
    return values.expand(batch, LATENT_CHANNELS, num_frames, LATENT_SIZE, LATENT_SIZE).clone()


def test_training_example_picks_target_references_anchor_and_augments_the_adapter_input() -> None:
    net = tiny_artv().train()
    example = net.training_example(frame_indexed_clip(batch=256, num_frames=5))
    target = example.x0[:, 0, 0, 0]
    assert set(target.tolist()) == {1.0, 2.0, 3.0, 4.0}  # frame 0 is never a target
    reference = example.cond["reference"]
    assert reference.shape == (256, 12, 8, 8)
    clean_previous = reference[:, 8:]
    assert torch.equal(clean_previous, (target - 1).reshape(-1, 1, 1, 1).expand_as(clean_previous))
    augmented_pair = reference[:, :8]
    clean_pair = torch.cat(
        [(target - 2).clamp(min=0).reshape(-1, 1, 1, 1).expand(-1, 4, 8, 8), clean_previous], dim=1
    )
    noise_std = (augmented_pair - clean_pair).flatten(1).std(dim=1)
    assert (
        float(noise_std.max()) < 0.1 * 1.3 and float(noise_std.min()) < 0.02
    )  # sigma ~ U(0, 0.1) per sample
    assert float(noise_std.std()) > 0.01  # levels differ between samples
    assert torch.equal(example.cond["anchor"], torch.zeros_like(example.cond["anchor"]))


def test_training_example_of_a_two_frame_clip_uses_frame_zero_twice() -> None:
    net = tiny_artv().train()
    example = net.training_example(frame_indexed_clip(batch=4, num_frames=2))
    assert torch.equal(example.x0, torch.ones_like(example.x0))
    assert torch.equal(example.cond["reference"][:, 8:], torch.zeros(4, 4, 8, 8))
    assert float(example.cond["reference"][:, :8].abs().max()) < 0.6  # frames 0 and 0, lightly noised


def test_validation_examples_are_reproducible_at_the_inference_noise_level() -> None:
    net = tiny_artv(reference_noise_level_inference=0.05).eval()
    clip = torch.randn(64, 4, 6, 8, 8)
    first, second = net.training_example(clip), net.training_example(clip)
    assert torch.equal(first.x0, second.x0)
    assert torch.equal(first.cond["reference"], second.cond["reference"])
    clean = first.cond["reference"][:, 4:8]
    noise = first.cond["reference"][:, 4:8] - first.cond["reference"][:, 8:]
    assert not torch.equal(clean, first.cond["reference"][:, 8:])
    assert float(noise.std()) == pytest.approx(0.05, rel=0.05)


def test_first_step_probability_sets_the_share_of_frame_one_targets() -> None:
    net = tiny_artv(first_step_probability=0.5).train()
    torch.manual_seed(0)
    example = net.training_example(frame_indexed_clip(batch=2000, num_frames=5))
    target = example.x0[:, 0, 0, 0]
    assert set(target.tolist()) == {1.0, 2.0, 3.0, 4.0}
    assert float((target == 1).float().mean()) == pytest.approx(0.5, abs=0.04)  # uniform would give 0.25
    later = target[target > 1]
    for frame in (2.0, 3.0, 4.0):  # the rest stay uniform over 2..T-1
        assert float((later == frame).float().mean()) == pytest.approx(1 / 3, abs=0.05)
    with pytest.raises(ValueError, match="first_step_probability"):
        tiny_artv(first_step_probability=0.5).train().training_example(torch.randn(1, 4, 2, 8, 8))
    with pytest.raises(ValueError, match="first_step_probability"):  # a bad value fails at construction
        tiny_artv(first_step_probability=1.5)


def test_training_example_needs_two_frames() -> None:
    with pytest.raises(ValueError, match="at least 2 frames"):
        tiny_artv().training_example(torch.randn(1, 4, 1, 8, 8))


# ---------------------------------------------------------------- SD weights into Φdynamic


def sd_unet_state(seed: int = 5) -> dict[str, Tensor]:
    torch.manual_seed(seed)
    sd_unet = UNetModel(LATENT_CHANNELS, LATENT_CHANNELS, **UNET_ARGUMENTS)
    with torch.no_grad():
        for parameter in sd_unet.parameters():
            parameter.normal_()
    return {key: value.contiguous() for key, value in sd_unet.state_dict().items()}


def test_pretrained_sd_checkpoint_loads_every_shared_parameter_and_reports_the_new_ones(tmp_path) -> None:
    unet_state = sd_unet_state()
    checkpoint = {f"model.diffusion_model.{key}": value for key, value in unet_state.items()}
    checkpoint["first_stage_model.encoder.conv_in.weight"] = torch.zeros(3)
    checkpoint["alphas_cumprod"] = torch.zeros(1000)
    path = tmp_path / "sd21.safetensors"
    save_file(checkpoint, str(path))
    fresh = tiny_artv(randomize_zero_init=False)
    net = tiny_artv(randomize_zero_init=False, pretrained=str(path))
    loaded = net.dynamic_unet.state_dict()
    for key, value in unet_state.items():
        assert torch.equal(loaded[key], value), key
    report = net.pretrained_report
    assert report is not None and sorted(report.loaded) == sorted(unet_state)
    assert report.missing and all(is_anchor_parameter(key) for key in report.missing)
    for key in report.missing:  # new parameters keep their initialisation
        assert torch.equal(loaded[key], fresh.dynamic_unet.state_dict()[key])
    for module_name in ("mask_unet", "dynamic_adapter", "mask_adapter"):
        for (name, value), (_, fresh_value) in zip(
            getattr(net, module_name).state_dict().items(),
            getattr(fresh, module_name).state_dict().items(),
            strict=True,
        ):
            assert torch.equal(value, fresh_value), f"{module_name}.{name}"


def test_pretrained_unet_only_file_loads_and_a_missing_sd_key_is_an_error(tmp_path) -> None:
    unet_state = sd_unet_state()
    path = tmp_path / "unet.safetensors"
    save_file(unet_state, str(path))
    net = tiny_artv(pretrained=str(path))
    assert torch.equal(net.dynamic_unet.time_embed[0].weight, unet_state["time_embed.0.weight"])
    del unet_state["input_blocks.1.0.in_layers.2.weight"]
    save_file(unet_state, str(path))
    with pytest.raises(StateDictMismatchError, match="missing keys that are not new parameters"):
        tiny_artv(pretrained=str(path))
