"""Train a text-to-video diffusion model.

python train.py                                          # tiny SCVideo on toy data, CPU
python train.py experiment=scvideo_webvid256 trainer=a100x4
python train.py -m model=scvideo,artv resolution=256,320 # a sweep
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from modules.runtime.checkpoint_discovery import resolve_resume_path
from modules.runtime.config_checks import check_checkpoint_matches, check_config
from modules.runtime.instantiation import instantiate_callbacks, instantiate_loggers

log = logging.getLogger("train")


def train(cfg: DictConfig) -> dict[str, float]:
    """Compose -> instantiate -> fit; returns the final callback metrics."""
    check_config(cfg)
    L.seed_everything(cfg.seed, workers=True)
    datamodule: L.LightningDataModule = instantiate(cfg.data)
    model: L.LightningModule = instantiate(cfg.model)
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_callbacks(cfg.get("callbacks")),
        logger=instantiate_loggers(cfg.get("logger")),
    )
    if cfg.get("train"):
        ckpt_path = resolve_resume_path(cfg.get("ckpt_path"), Path(cfg.paths.output_dir) / "checkpoints")
        check_checkpoint_matches(model, ckpt_path)
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {
        k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1
    }
    if cfg.get("validate") and not trainer.interrupted:
        trainer.validate(model, datamodule=datamodule)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
    log.info("final metrics: %s", metrics)
    return metrics


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
