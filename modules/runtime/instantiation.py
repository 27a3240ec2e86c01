"""Build callbacks and loggers from their config groups (lightning-hydra-template style)."""

from __future__ import annotations

import logging

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def instantiate_callbacks(callbacks_cfg: DictConfig | None) -> list[L.Callback]:
    """One callback per entry of the `callbacks` group that has a `_target_`."""
    callbacks: list[L.Callback] = []
    for name, cfg in (callbacks_cfg or {}).items():
        if isinstance(cfg, DictConfig) and "_target_" in cfg:
            log.info("callback %s <callbacks.%s>", cfg._target_, name)
            callbacks.append(instantiate(cfg))
    return callbacks


def instantiate_loggers(logger_cfg: DictConfig | None) -> list[Logger]:
    """One logger per entry of the `logger` group that has a `_target_`."""
    loggers: list[Logger] = []
    for name, cfg in (logger_cfg or {}).items():
        if isinstance(cfg, DictConfig) and "_target_" in cfg:
            log.info("logger %s <logger.%s>", cfg._target_, name)
            loggers.append(instantiate(cfg))
    return loggers
