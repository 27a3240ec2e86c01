"""Checks of a composed config that turn would-be deep stack traces into one line naming the key."""

from __future__ import annotations

from omegaconf import DictConfig


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key."""


def _first_stage_factor(cfg: DictConfig) -> int | None:
    first_stage = cfg.get("backbone", {}).get("first_stage")
    if first_stage is None:
        return None
    if "factor" in first_stage:
        return int(first_stage.factor)
    if "ch_mult" in first_stage:
        return 2 ** (len(first_stage.ch_mult) - 1)
    return None


def _unet_factor(cfg: DictConfig) -> int:
    unet = cfg.get("backbone", {}).get("unet")
    if unet is None or "channel_mult" not in unet:
        return 1
    return 2 ** (len(unet.channel_mult) - 1)


def check_resolution(cfg: DictConfig) -> None:
    """Pixels must be divisible by first-stage factor x UNet down-sampling factor."""
    factor = _first_stage_factor(cfg)
    if factor is None or "resolution" not in cfg:
        return
    multiple = factor * _unet_factor(cfg)
    for axis in ("height", "width"):
        size = int(cfg.resolution[axis])
        if size % multiple:
            raise ConfigError(
                f"resolution.{axis}={size} is not divisible by {multiple} (autoencoder factor {factor} x UNet "
                f"down-sampling {multiple // factor}); pick a multiple of {multiple}"
            )


def check_config(cfg: DictConfig) -> None:
    """Run every check; raises ConfigError with the offending key."""
    check_resolution(cfg)
