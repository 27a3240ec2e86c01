"""Checkpoint loading: fake SD 1.x / 2.x checkpoints in the original key layouts (tiny configs, random
tensors) loaded through load_sd_checkpoint into the tiny UNet, AutoencoderKL and text encoders; EMA;
lone component files; mismatch reports; refused pickle payloads; truncated files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from modules.autoencoder.autoencoder_kl import AutoencoderKL
from modules.checkpoints import (
    CheckpointError,
    StateDictMismatchError,
    UnsafeCheckpointError,
    ema_unet_state_dict,
    load_partial,
    load_sd_checkpoint,
    load_state_dict_file,
    load_strict,
    split_sd_checkpoint,
)
from modules.text_encoders import FrozenCLIPTextEmbedder, FrozenOpenCLIPEmbedder, open_clip_to_hf
from modules.unet.unet_2d import UNetModel

TINY_TEXT_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
# SD 1.x: num_heads, 1x1-conv proj_in/out, transformers text encoder; SD 2.x: num_head_channels,
# Linear proj_in/out, open_clip text encoder. Both tiny.
UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "sd1": dict(num_heads=2, use_linear_in_transformer=False),
    "sd2": dict(num_head_channels=16, use_linear_in_transformer=True),
}
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "posterior_variance",
)


def tiny_unet(layout: str) -> UNetModel:
    return UNetModel(4, 4, 32, [1], 1, [1, 2], context_dim=64, **UNET_CONFIGS[layout])


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(ch=32, ch_mult=[1, 2], num_res_blocks=1, z_channels=4, embed_dim=4, resolution=32)


def tiny_text_encoder(layout: str, init_seed: int = 0) -> FrozenOpenCLIPEmbedder:
    cls = FrozenCLIPTextEmbedder if layout == "sd1" else FrozenOpenCLIPEmbedder
    return cls(arch=TINY_TEXT_CONFIG, init_seed=init_seed)


def random_like(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random tensors with the module's keys and shapes (so a successful load is visible)."""
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(value.shape, generator=generator) for key, value in module.state_dict().items()}


def lit_ema_name(unet_key: str) -> str:
    """ldm LitEma buffer name: 'model_ema.' + ('diffusion_model.' + key) with the dots removed."""
    return "model_ema." + ("diffusion_model." + unet_key).replace(".", "")


def fake_sd_checkpoint(layout: str, with_ema: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A full SD state dict in the original key layout, and the tensors each component should receive."""
    unet = random_like(tiny_unet(layout), seed=1)
    vae = random_like(tiny_vae(), seed=2)
    text = random_like(tiny_text_encoder(layout).model, seed=3)
    state: dict[str, torch.Tensor] = {}
    state.update({f"model.diffusion_model.{key}": value for key, value in unet.items()})
    state.update({f"first_stage_model.{key}": value for key, value in vae.items()})
    if layout == "sd1":
        text_in_file = open_clip_to_hf(text)
        state.update({f"cond_stage_model.transformer.{key}": value for key, value in text_in_file.items()})
        text = {key: value for key, value in text.items() if key not in ("text_projection", "logit_scale")}
    else:
        state.update({f"cond_stage_model.model.{key}": value for key, value in text.items()})
    state.update({name: torch.linspace(1e-4, 2e-2, 1000) for name in SCHEDULE_BUFFERS})
    expected: dict[str, Any] = {"unet": unet, "first_stage": vae, "text_encoder": text}
    if with_ema:
        ema = {key: value + 1.0 for key, value in unet.items()}
        state.update({lit_ema_name(key): value for key, value in ema.items()})
        state["model_ema.decay"] = torch.tensor(0.9999)
        state["model_ema.num_updates"] = torch.tensor(470000, dtype=torch.int32)
        expected["ema_unet"] = ema
    return state, expected


def write_checkpoint(state: dict[str, torch.Tensor], path: Path) -> Path:
    """`.safetensors` as SD 2.x ships; `.ckpt` as a Lightning checkpoint with bookkeeping, like sd-v1-4.ckpt."""
    if path.suffix == ".safetensors":
        save_file({key: value.contiguous() for key, value in state.items()}, path)
    else:
        from pytorch_lightning.callbacks.model_checkpoint import ModelCheckpoint

        torch.save(
            {
                "state_dict": state,
                "epoch": 6,
                "global_step": 470000,
                "pytorch-lightning_version": "1.4.2",
                "callbacks": {ModelCheckpoint: {"monitor": None, "best_model_score": np.float64(0.25)}},
            },
            path,
        )
    return path


def assert_module_holds(module: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    actual = module.state_dict()
    assert set(expected) <= set(actual)
    for key, tensor in expected.items():
        assert torch.equal(actual[key], tensor), key


@pytest.mark.parametrize("layout", ["sd1", "sd2"])
@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_full_sd_checkpoint_loads_every_component_exactly(layout: str, suffix: str, tmp_path: Path) -> None:
    state, expected = fake_sd_checkpoint(layout)
    path = write_checkpoint(state, tmp_path / f"{layout}{suffix}")
    unet, vae, text_encoder = tiny_unet(layout), tiny_vae(), tiny_text_encoder(layout, init_seed=9)

    reports = load_sd_checkpoint(path, unet=unet, first_stage=vae, text_encoder=text_encoder)

    assert_module_holds(unet, expected["unet"])
    assert_module_holds(vae, expected["first_stage"])
    assert_module_holds(text_encoder.model, expected["text_encoder"])
    assert set(reports) == {"unet", "first_stage", "text_encoder"}
    assert reports["unet"].is_exact and reports["first_stage"].is_exact
    text_missing = ["logit_scale", "text_projection"] if layout == "sd1" else []
    assert sorted(reports["text_encoder"].missing) == text_missing
    assert text_encoder(["a red circle"]).shape == (1, 77, 64)


def test_split_detects_the_text_encoder_format_and_ignores_schedule_buffers() -> None:
    for layout, text_format in (("sd1", "hf_clip"), ("sd2", "open_clip")):
        state, expected = fake_sd_checkpoint(layout)
        components = split_sd_checkpoint(state)
        assert components.text_encoder_format == text_format
        assert set(components.unet) == set(expected["unet"])
        assert set(components.first_stage) == set(expected["first_stage"])
        assert sorted(components.ignored_keys) == sorted(SCHEDULE_BUFFERS)
        assert not components.unet_from_ema
    sd1_text = split_sd_checkpoint(fake_sd_checkpoint("sd1")[0]).text_encoder
    assert "text_model.embeddings.position_ids" in sd1_text


def test_ema_weights_are_mapped_back_from_lit_ema_names(tmp_path: Path) -> None:
    state, expected = fake_sd_checkpoint("sd2", with_ema=True)
    path = write_checkpoint(state, tmp_path / "sd2_ema.ckpt")

    ema_unet = tiny_unet("sd2")
    report = load_sd_checkpoint(path, unet=ema_unet, use_ema=True)["unet"]
    assert_module_holds(ema_unet, expected["ema_unet"])
    assert report.what == "UNet (EMA weights)" and "model_ema." in report.source

    plain_unet = tiny_unet("sd2")
    load_sd_checkpoint(path, unet=plain_unet)
    assert_module_holds(plain_unet, expected["unet"])

    components = split_sd_checkpoint(state, use_ema=True)
    assert components.unet_from_ema
    assert {"model_ema.decay", "model_ema.num_updates"} <= set(components.ignored_keys)


def test_ema_only_checkpoint_maps_with_the_model_keys() -> None:
    state, expected = fake_sd_checkpoint("sd1", with_ema=True)
    ema_only = {key: value for key, value in state.items() if not key.startswith("model.diffusion_model.")}
    mapped = ema_unet_state_dict(ema_only, tiny_unet("sd1").state_dict().keys())
    assert set(mapped) == set(expected["ema_unet"])
    assert all(torch.equal(mapped[key], expected["ema_unet"][key]) for key in mapped)


def test_ema_errors_are_clear(tmp_path: Path) -> None:
    state, _ = fake_sd_checkpoint("sd2")
    path = write_checkpoint(state, tmp_path / "no_ema.safetensors")
    with pytest.raises(CheckpointError, match=r"use_ema=True.*no 'model_ema\.' tensors"):
        load_sd_checkpoint(path, unet=tiny_unet("sd2"), use_ema=True)

    with pytest.raises(CheckpointError, match="match no UNet key"):
        ema_unet_state_dict({"model_ema.diffusion_modelfooweight": torch.zeros(1)}, ["bar.weight"])
    with pytest.raises(CheckpointError, match="both flatten to the EMA name"):
        ema_unet_state_dict(
            {"model_ema.diffusion_modela1weight": torch.zeros(1)}, ["a.1.weight", "a1.weight"]
        )


def test_mismatch_error_lists_missing_unexpected_and_shapes(tmp_path: Path) -> None:
    state, _ = fake_sd_checkpoint("sd2")  # Linear proj_in/out, loaded into the conv-proj SD 1.x UNet
    del state["model.diffusion_model.out.2.bias"]
    state["model.diffusion_model.label_emb.0.weight"] = torch.zeros(3, 3)
    path = write_checkpoint(state, tmp_path / "sd2.safetensors")
    with pytest.raises(StateDictMismatchError) as error:
        load_sd_checkpoint(path, unet=tiny_unet("sd1"))
    message = str(error.value)
    assert f"Cannot load UNet from {path} [model.diffusion_model.*]" in message
    assert "missing keys (in the model, not in the file) [1]:\n    out.2.bias" in message
    assert "unexpected keys (in the file, not in the model) [1]:\n    label_emb.0.weight" in message
    assert "shape mismatches [8]:" in message
    assert "input_blocks.1.1.proj_in.weight: checkpoint [32, 32] vs model [32, 32, 1, 1]" in message
    report = error.value.report
    assert (len(report.missing), len(report.unexpected), len(report.shape_mismatches)) == (1, 1, 8)


def test_strict_load_lists_only_the_first_keys_and_loads_nothing_on_error() -> None:
    module = nn.Sequential(*[nn.Linear(2, 2) for _ in range(12)])
    before = {key: value.clone() for key, value in module.state_dict().items()}
    wrong = {key: torch.zeros(3) for key in before}
    with pytest.raises(StateDictMismatchError, match=r"\.\.\. and 14 more") as error:
        load_strict(module, wrong, what="toy", source="toy.pt")
    assert "Cannot load toy from toy.pt" in str(error.value)
    assert "0 matched, 0 missing, 0 unexpected, 24 shape mismatches" in str(error.value)
    assert all(torch.equal(module.state_dict()[key], before[key]) for key in before)


def test_partial_load_is_strict_for_shared_keys_and_reports_new_ones() -> None:
    pretrained = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    extended = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    extended.temporal = nn.Linear(2, 2)
    is_new: Callable[[str], bool] = lambda key: key.startswith("temporal.")  # noqa: E731
    report = load_partial(extended, pretrained.state_dict(), what="video UNet", expected_missing=is_new)
    assert sorted(report.missing) == ["temporal.bias", "temporal.weight"]
    assert len(report.loaded) == 4 and report.unexpected == []
    assert torch.equal(extended[1].weight, pretrained[1].weight)

    without_pretrained = {key: value for key, value in pretrained.state_dict().items() if key != "1.bias"}
    with pytest.raises(StateDictMismatchError, match=r"1 missing keys that are not new parameters.*1\.bias"):
        load_partial(extended, without_pretrained, what="video UNet", expected_missing=is_new)
    with_extra = {**pretrained.state_dict(), "extra": torch.zeros(1)}
    with pytest.raises(StateDictMismatchError, match="1 unexpected keys"):
        load_partial(extended, with_extra, what="video UNet", expected_missing=is_new)
    report = load_partial(extended, with_extra, what="video UNet", allow_unexpected=True)
    assert report.unexpected == ["extra"]


def test_lone_component_files_load_with_or_without_prefix(tmp_path: Path) -> None:
    state, expected = fake_sd_checkpoint("sd1")
    unet_file = tmp_path / "unet.safetensors"
    save_file(expected["unet"], unet_file)  # no prefix
    vae_file = tmp_path / "vae.ckpt"
    vae_state = {key: value for key, value in state.items() if key.startswith("first_stage_model.")}
    vae_state["first_stage_model.loss.logvar"] = torch.zeros(())  # VAE training checkpoints carry loss.*
    torch.save({"state_dict": vae_state}, vae_file)
    text_file = tmp_path / "text_encoder.pt"
    text_state = {
        key.removeprefix("cond_stage_model.transformer."): v for key, v in state.items() if "cond" in key
    }
    torch.save(text_state, text_file)  # transformers names, no prefix

    unet, vae, text_encoder = tiny_unet("sd1"), tiny_vae(), tiny_text_encoder("sd1", init_seed=5)
    load_sd_checkpoint(unet_file, unet=unet)
    load_sd_checkpoint(vae_file, first_stage=vae)
    load_sd_checkpoint(text_file, text_encoder=text_encoder)
    assert_module_holds(unet, expected["unet"])
    assert_module_holds(vae, expected["first_stage"])
    assert_module_holds(text_encoder.model, expected["text_encoder"])

    with pytest.raises(CheckpointError, match="pass exactly one of"):
        load_sd_checkpoint(unet_file, unet=tiny_unet("sd1"), first_stage=tiny_vae())
    with pytest.raises(CheckpointError, match=r"has no unet weights .*it holds: first_stage"):
        load_sd_checkpoint(vae_file, unet=tiny_unet("sd1"))
    with pytest.raises(ValueError, match="at least one of"):
        load_sd_checkpoint(vae_file)


def test_pickle_payload_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "payload_ran"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    path = tmp_path / "malicious.ckpt"
    torch.save({"state_dict": {"weight": torch.zeros(2)}, "extra": Payload()}, path)
    with pytest.raises(
        UnsafeCheckpointError, match="arbitrary Python objects and will not be unpickled"
    ) as error:
        load_state_dict_file(path)
    assert "open" in str(error.value) and str(path) in str(error.value)
    assert not marker.exists()


def test_lightning_bookkeeping_globals_are_read_as_inert_placeholders(tmp_path: Path) -> None:
    path = write_checkpoint({"weight": torch.arange(3.0)}, tmp_path / "lightning.ckpt")
    state = load_state_dict_file(path)
    assert list(state) == ["weight"] and torch.equal(state["weight"], torch.arange(3.0))


def test_truncated_missing_empty_and_non_state_dict_files(tmp_path: Path) -> None:
    state = {"weight": torch.randn(64, 64), "bias": torch.randn(64)}
    for suffix in (".ckpt", ".safetensors"):
        path = tmp_path / f"model{suffix}"
        write_checkpoint(state, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match="truncated") as error:
            load_state_dict_file(path)
        assert str(path) in str(error.value)

    with pytest.raises(FileNotFoundError, match=r"absent\.ckpt"):
        load_state_dict_file(tmp_path / "absent.ckpt")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_state_dict_file(tmp_path / "empty.safetensors")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        load_state_dict_file(tmp_path / "list.pt")
    torch.save({"weight": torch.zeros(1), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="1 entries are not tensors"):
        load_state_dict_file(tmp_path / "mixed.pt")
