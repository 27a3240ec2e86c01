"""SCVideo video UNet and denoiser on tiny sizes: identity init, SD keys, trainable set, checkpointing, bf16,
weight files, generation; plus the full-size (SD 1.4) parameter count on the meta device."""

from __future__ import annotations

import copy
import functools
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from einops import rearrange, repeat
from hydra.utils import instantiate
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from torch import Tensor

import modules.blocks.checkpointing as checkpointing_module
from modules.checkpoints import StateDictMismatchError
from modules.diffusion.guidance import ClassifierFreeGuidance
from modules.diffusion.noise_schedule import NoiseSchedule
from modules.diffusion.samplers.ddim import DDIMSampler
from modules.generation import LatentRequest
from modules.scvideo import (
    NEW_MODULE_NAMES,
    SCVideoDenoiser,
    SparseSpatialTemporalBlock,
    VideoResBlock,
    is_new_parameter,
    is_paper_trainable,
    save_temporal_weights,
)
from modules.unet.unet_2d import UNetModel
from tests.conftest import CONF_DIR, FIXTURES

CHANNELS, CONTEXT_DIM, NUM_FRAMES, SIZE = 4, 16, 3, 8
TINY_UNET: dict[str, Any] = dict(
    in_channels=CHANNELS,
    out_channels=CHANNELS,
    model_channels=32,
    attention_resolutions=[1, 2],
    num_res_blocks=1,
    channel_mult=[1, 2],
    num_head_channels=16,
    context_dim=CONTEXT_DIM,
    use_linear_in_transformer=True,
)
SD14_SHARED_PARAMETERS = 859_520_964  # SD 1.4 UNet (tests/fixtures/reference/sd1_unet.json)
SD14_NEW_PARAMETERS = 165_880_640  # 22 temporal convs + 16 pairs of temporal attentions at SD 1.4 widths


def randomize_pretrained_(module: torch.nn.Module, seed: int = 0) -> None:
    """Random values for every SD parameter (zero-initialised ones included), new layers untouched."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, parameter in module.named_parameters():
            if is_new_parameter(key):
                continue
            if parameter.ndim > 1:
                std = parameter[0].numel() ** -0.5
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
            else:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)


def perturb_new_(module: torch.nn.Module, seed: int = 1) -> None:
    """Move the identity-initialised new layers away from the identity (as training would)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, parameter in module.named_parameters():
            if is_new_parameter(key):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)


def tiny_denoiser(**kwargs: Any) -> SCVideoDenoiser:
    return SCVideoDenoiser(functools.partial(UNetModel, **TINY_UNET), **kwargs)


def sd_unet(seed: int = 0) -> UNetModel:
    """A plain 2D UNet with random SD weights: the 'pretrained image model'."""
    unet = UNetModel(**TINY_UNET)
    randomize_pretrained_(unet, seed)
    return unet


def write_sd_checkpoint(unet: UNetModel, path: Path) -> Path:
    """An SD-style checkpoint: UNet under `model.diffusion_model.`, plus a first-stage tensor to ignore."""
    state = {f"model.diffusion_model.{key}": value.clone() for key, value in unet.state_dict().items()}
    state["first_stage_model.decoder.conv_out.bias"] = torch.zeros(3)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 0}, path)
    return path


def video_inputs(batch: int = 2, seed: int = 3) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, CHANNELS, NUM_FRAMES, SIZE, SIZE, generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    text = torch.randn(batch, 7, CONTEXT_DIM, generator=generator)
    return x, t, text


# ---------------------------------------------------------------- identity init, SD keys


def test_identical_frames_reproduce_the_2d_unet_frame_by_frame_at_init():
    image_unet = sd_unet()
    net = tiny_denoiser()
    result = net.unet.load_state_dict(image_unet.state_dict(), strict=False)
    assert not result.unexpected_keys and result.missing_keys
    assert all(is_new_parameter(key) for key in result.missing_keys)

    frame, t, text = video_inputs()
    frame = frame[:, :, 0]
    video = repeat(frame, "b c h w -> b c t h w", t=NUM_FRAMES)
    with torch.no_grad():
        out = net(video, t, {"text": text})
        reference = image_unet(frame, t, text)
    assert reference.abs().mean() > 0.1  # a non-trivial output
    for index in range(NUM_FRAMES):
        torch.testing.assert_close(out[:, :, index], reference, atol=1e-5, rtol=0)


def test_distinct_frames_first_frame_is_the_image_model_and_later_frames_are_not():
    image_unet = sd_unet()
    net = tiny_denoiser()
    net.unet.load_state_dict(image_unet.state_dict(), strict=False)
    video, t, text = video_inputs()
    with torch.no_grad():
        out = net(video, t, {"text": text})
        per_frame = image_unet(
            rearrange(video, "b c t h w -> (b t) c h w"),
            repeat(t, "b -> (b t)", t=NUM_FRAMES),
            repeat(text, "b l d -> (b t) l d", t=NUM_FRAMES),
        )
    per_frame = rearrange(per_frame, "(b t) c h w -> b c t h w", t=NUM_FRAMES)
    # frame 1 sees only itself at init (sparse causal [f1; f1], identity temporal layers)
    torch.testing.assert_close(out[:, :, 0], per_frame[:, :, 0], atol=1e-5, rtol=0)
    assert not torch.allclose(out[:, :, 1:], per_frame[:, :, 1:], atol=1e-3)


def test_video_unet_has_exactly_the_sd_keys_plus_named_new_ones():
    image_keys = {key: tuple(value.shape) for key, value in UNetModel(**TINY_UNET).state_dict().items()}
    video_state = tiny_denoiser().unet.state_dict()
    shared = {key: tuple(value.shape) for key, value in video_state.items() if not is_new_parameter(key)}
    assert shared == image_keys
    new_kinds = {
        next(p for p in key.split(".") if p in NEW_MODULE_NAMES)
        for key in video_state
        if is_new_parameter(key)
    }
    assert new_kinds == set(NEW_MODULE_NAMES)
    unet = tiny_denoiser().unet
    assert sum(isinstance(m, VideoResBlock) for m in unet.modules()) == 8  # 2 encoder, 2 middle, 4 decoder
    assert sum(isinstance(m, SparseSpatialTemporalBlock) for m in unet.modules()) == 7  # 2, 1, 4


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_pretrained_sd_checkpoint_loads_strictly_and_reports_new_parameters(tmp_path, caplog, suffix):
    image_unet = sd_unet()
    path = write_sd_checkpoint(image_unet, tmp_path / f"sd{suffix}")
    with caplog.at_level(logging.INFO, logger="modules.scvideo.weight_files"):
        net = tiny_denoiser(pretrained=str(path))
    video_state = net.unet.state_dict()
    for key, value in image_unet.state_dict().items():
        assert torch.equal(video_state[key], value), key
    for key, value in video_state.items():  # the new layers keep their identity init
        if key.endswith("temporal_conv.weight"):
            assert torch.equal(value, torch.nn.init.dirac_(torch.empty_like(value))), key
        if key.endswith("temporal_conv.bias") or ("attn_temp" in key and ".to_out." in key):
            assert not value.any(), key
    message = "\n".join(record.getMessage() for record in caplog.records)
    num_new = sum(is_new_parameter(key) for key in video_state)
    assert f"{num_new} new tensors keep their identity init" in message
    for kind in NEW_MODULE_NAMES:
        count = sum(kind in key.split(".") for key in video_state)
        assert f"{kind}: {count} tensors" in message


def test_pretrained_checkpoint_missing_a_shared_parameter_is_an_error(tmp_path):
    state = sd_unet().state_dict()
    del state["input_blocks.1.0.in_layers.2.weight"]
    path = tmp_path / "unet_only.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    with pytest.raises(StateDictMismatchError, match="missing keys that are not new parameters"):
        tiny_denoiser(pretrained=str(path))


def test_full_size_sd14_video_unet_on_meta_device():
    backbone = OmegaConf.load(CONF_DIR / "backbone" / "sd14.yaml")
    unet_partial = instantiate(backbone.unet, _partial_=True)
    with torch.device("meta"):
        net = SCVideoDenoiser(unet_partial)
    parameters = dict(net.unet.named_parameters())
    shared = sum(p.numel() for key, p in parameters.items() if not is_new_parameter(key))
    new = sum(p.numel() for key, p in parameters.items() if is_new_parameter(key))
    assert shared == SD14_SHARED_PARAMETERS
    assert new == SD14_NEW_PARAMETERS

    reference = json.loads((FIXTURES / "reference" / "sd1_unet.json").read_text())
    prefix = "model.diffusion_model."
    expected = {key[len(prefix) :]: tuple(shape) for key, shape in reference.items()}
    state = net.unet.state_dict()
    assert {key: tuple(v.shape) for key, v in state.items() if not is_new_parameter(key)} == expected


# ---------------------------------------------------------------- trainable set


def test_paper_trainable_set_alone_receives_gradients():
    net = tiny_denoiser(trainable="paper")
    randomize_pretrained_(net.unet)
    perturb_new_(net.unet)
    net.configure_trainable()
    x, t, text = video_inputs(batch=1)
    net(x, t, {"text": text}).square().mean().backward()
    for key, parameter in net.unet.named_parameters():
        if is_paper_trainable(key):
            assert (
                parameter.requires_grad and parameter.grad is not None and parameter.grad.abs().sum() > 0
            ), key
        else:
            assert not parameter.requires_grad and parameter.grad is None, key

    trainable = {key.removeprefix("unet.") for key, _ in net.trainable_named_parameters()}
    block = "input_blocks.1.1.transformer_blocks.0."
    for name in ("attn1.to_q.weight", "attn2.to_k.weight", "attn_temp1.to_out.0.bias", "norm_temp2.weight"):
        assert block + name in trainable
    for name in ("norm1.weight", "norm3.bias", "ff.net.0.proj.weight"):
        assert block + name not in trainable
    assert "input_blocks.1.0.temporal_conv.weight" in trainable
    assert "input_blocks.1.0.in_layers.2.weight" not in trainable
    assert "input_blocks.1.1.proj_in.weight" not in trainable and "time_embed.0.weight" not in trainable


def test_trainable_all_and_invalid_names():
    net = tiny_denoiser(trainable="all")
    net.unet.requires_grad_(False)
    net.configure_trainable()
    assert all(p.requires_grad for p in net.parameters())
    assert len(net.trained_parameter_names()) == len(list(net.unet.parameters()))
    with pytest.raises(ValueError, match=r"model\.net\.trainable"):
        tiny_denoiser(trainable="attention")


# ---------------------------------------------------------------- checkpointing, bf16


def test_gradient_checkpointing_gives_same_output_and_gradients(monkeypatch):
    reference = tiny_denoiser(trainable="all")
    randomize_pretrained_(reference.unet)
    perturb_new_(reference.unet)
    checkpointed = copy.deepcopy(reference)
    checkpointed.unet.set_gradient_checkpointing(True)
    calls = []
    real_checkpoint = checkpointing_module.checkpoint

    def counting_checkpoint(*args: Any, **kwargs: Any) -> Tensor:
        calls.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(checkpointing_module, "checkpoint", counting_checkpoint)
    x, t, text = video_inputs(batch=1)
    outputs, gradients = [], []
    for net in (reference, checkpointed):
        out = net(x, t, {"text": text})
        out.square().mean().backward()
        outputs.append(out.detach())
        gradients.append([p.grad for p in net.parameters()])
    assert len(calls) == 8 + 7  # every VideoResBlock and SS-T block ran checkpointed
    torch.testing.assert_close(outputs[1], outputs[0], atol=0, rtol=0)
    for checkpointed_grad, reference_grad in zip(gradients[1], gradients[0], strict=True):
        torch.testing.assert_close(checkpointed_grad, reference_grad, atol=1e-6, rtol=1e-5)


def test_bf16_autocast_forward_and_backward():
    net = tiny_denoiser(trainable="paper")
    randomize_pretrained_(net.unet)
    perturb_new_(net.unet)
    net.configure_trainable()
    x, t, text = video_inputs(batch=1)
    with torch.no_grad():
        reference = net(x, t, {"text": text})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t, {"text": text})
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float() - reference).abs().max() < 0.05 * reference.abs().max()
    out.float().square().mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------- temporal weights


def test_temporal_weights_round_trip_with_raw_sd_weights(tmp_path):
    sd_path = write_sd_checkpoint(sd_unet(), tmp_path / "sd.safetensors")
    trained = tiny_denoiser(pretrained=str(sd_path), trainable="paper")
    perturb_new_(trained.unet)
    with torch.no_grad():
        for key, parameter in trained.unet.named_parameters():
            if ".attn1." in key or ".attn2." in key:
                parameter.add_(0.05)  # fine-tuned pretrained attention
    weights_path = tmp_path / "scvideo_temporal.safetensors"
    written = save_temporal_weights(trained, weights_path)

    stored = load_file(str(weights_path))
    assert sorted(stored) == sorted(written) == sorted(trained.trained_parameter_names())
    assert any(".attn1." in key for key in stored) and any("temporal_conv" in key for key in stored)
    assert not any("in_layers" in key or ".ff." in key for key in stored)

    restored = tiny_denoiser(pretrained=str(sd_path), temporal_weights=str(weights_path))
    for key, value in trained.unet.state_dict().items():
        assert torch.equal(restored.unet.state_dict()[key], value), key
    x, t, text = video_inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            restored(x, t, {"text": text}), trained(x, t, {"text": text}), atol=0, rtol=0
        )


def test_temporal_weights_without_the_new_layers_are_rejected(tmp_path):
    net = tiny_denoiser()
    path = tmp_path / "partial.safetensors"
    save_file({"input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": torch.zeros(32, 32)}, str(path))
    with pytest.raises(StateDictMismatchError, match="missing keys that are not new parameters"):
        tiny_denoiser(temporal_weights=str(path))
    with pytest.raises(ValueError, match="safetensors"):
        save_temporal_weights(net, tmp_path / "weights.pt")


# ---------------------------------------------------------------- denoiser contract


def test_forward_shape_and_input_errors():
    net = tiny_denoiser()
    x, t, text = video_inputs()
    assert net(x, t, {"text": text}).shape == x.shape
    with pytest.raises(ValueError, match=r"x_t must be \[B, 4, T, h, w\]"):
        net(x[:, :, 0], t, {"text": text})
    with pytest.raises(ValueError, match="cond\\['text'\\]"):
        net(x, t, {})
    with pytest.raises(ValueError, match="unknown conditions"):
        net(x, t, {"text": text, "anchor": x})
    with pytest.raises(TypeError, match="_partial_"):
        SCVideoDenoiser(UNetModel(**TINY_UNET))


def test_training_example_is_the_whole_clip():
    latents = torch.randn(2, CHANNELS, NUM_FRAMES, SIZE, SIZE)
    example = tiny_denoiser().training_example(latents)
    assert example.x0 is latents and example.cond == {}


def test_generate_is_seeded_and_rejects_a_first_frame():
    net = tiny_denoiser()
    randomize_pretrained_(net.unet)
    sampler = DDIMSampler(NoiseSchedule(), num_steps=2, progress=True)
    guidance = ClassifierFreeGuidance(scale=3.0)
    _, _, text = video_inputs()
    null_text = torch.zeros(1, 7, CONTEXT_DIM)

    def generate(seed: int, **kwargs: Any) -> Tensor:
        generator = torch.Generator().manual_seed(seed)
        request = LatentRequest(
            texts=[text],
            null_text=null_text,
            num_frames=4,
            latent_size=(SIZE, SIZE),
            generators=generator,
            **kwargs,
        )
        return net.generate(sampler, guidance, request).latents

    first = generate(0, progress=False)
    assert first.shape == (2, CHANNELS, 4, SIZE, SIZE) and torch.isfinite(first).all()
    assert sampler.progress  # restored after a run without a progress bar
    torch.testing.assert_close(generate(0), first, atol=0, rtol=0)
    assert not torch.allclose(generate(1), first)
    with pytest.raises(ValueError, match="first_frame: SCVideo cannot start from a given first frame"):
        net.abilities.check(first_frame=True)
