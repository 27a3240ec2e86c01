"""Full-size SD UNets and the SD VAE, built on the meta device from conf/backbone/*.yaml, have exactly the
state-dict keys and shapes of the original checkpoints (tests/fixtures/reference/*.json, listed from the
original public code)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from modules.autoencoder.autoencoder_kl import AutoencoderKL

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = REPO_ROOT / "tests" / "fixtures" / "reference"
BACKBONE_DIR = REPO_ROOT / "conf" / "backbone"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."


def reference_layout(listing: str, prefix: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape from a reference listing, with the checkpoint prefix stripped."""
    raw = json.loads((REFERENCE_DIR / listing).read_text())
    assert all(key.startswith(prefix) for key in raw), f"{listing}: every key should start with {prefix!r}"
    return {key.removeprefix(prefix): tuple(shape) for key, shape in raw.items()}


def layout_differences(expected: dict[str, tuple[int, ...]], model: nn.Module, limit: int = 10) -> list[str]:
    """Human-readable differences between a reference layout and a model's state dict (first `limit`)."""
    actual = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    missing = sorted(set(expected) - set(actual))
    unexpected = sorted(set(actual) - set(expected))
    mismatched = sorted(key for key in set(expected) & set(actual) if expected[key] != actual[key])
    report = [f"missing {key} {expected[key]}" for key in missing[:limit]]
    report += [f"unexpected {key} {actual[key]}" for key in unexpected[:limit]]
    report += [f"shape {key}: expected {expected[key]}, got {actual[key]}" for key in mismatched[:limit]]
    return report


def build_on_meta(config_name: str, node: str) -> nn.Module:
    config = OmegaConf.load(BACKBONE_DIR / f"{config_name}.yaml")
    with torch.device("meta"):
        return instantiate(config[node], _partial_=False)  # backbone.unet is `_partial_` for the models


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize(
    ("config_name", "node", "listing", "prefix", "expected_count"),
    [
        ("sd14", "unet", "sd1_unet.json", UNET_PREFIX, 859_520_964),
        ("sd21", "unet", "sd21_unet.json", UNET_PREFIX, 865_910_724),
        ("sd14", "first_stage", "sd_vae.json", VAE_PREFIX, 83_653_863),
        ("sd21", "first_stage", "sd_vae.json", VAE_PREFIX, 83_653_863),
    ],
)
def test_config_matches_reference_layout(
    config_name: str, node: str, listing: str, prefix: str, expected_count: int
) -> None:
    expected = reference_layout(listing, prefix)
    model = build_on_meta(config_name, node)
    assert layout_differences(expected, model) == []
    assert count_parameters(model) == expected_count
    assert sum(math.prod(shape) for shape in expected.values()) == expected_count


def test_autoencoder_defaults_are_the_sd_first_stage() -> None:
    with torch.device("meta"):
        model = AutoencoderKL()
    assert layout_differences(reference_layout("sd_vae.json", VAE_PREFIX), model) == []
    assert (model.latent_channels, model.downsample_factor, model.scale_factor) == (4, 8, 0.18215)


def test_layout_differences_reports_mismatches() -> None:
    expected = {"weight": (3, 2), "bias": (3,), "extra": (1,)}
    report = layout_differences(expected, nn.Linear(3, 3))
    assert report == ["missing extra (1,)", "shape weight: expected (3, 2), got (3, 3)"]


def test_sd_adapter_injection_points_follow_t2i_adapter() -> None:
    """T2I-Adapter adds its features after input block i with (i + 1) % 3 == 0."""
    unet = build_on_meta("sd21", "unet")
    assert unet.adapter_block_indices == [i for i in range(len(unet.input_blocks)) if (i + 1) % 3 == 0]
    assert unet.adapter_feature_channels == [320, 640, 1280, 1280]
