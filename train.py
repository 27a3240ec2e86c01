"""Train a text-to-video diffusion model.

python train.py                                          # tiny SCVideo on toy data, CPU
python train.py model=artv                               # tiny ART-V on toy data, CPU
python train.py experiment=scvideo_webvid256 trainer=a100x4 run_name=scvideo256 ckpt_path=auto  # resumable paper run
python train.py -m model=scvideo,artv resolution=256,320 # a sweep
"""

from __future__ import annotations

import logging

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from modules.runtime.config_checks import check_checkpoint_matches, check_config, check_resume_config
from modules.runtime.instantiation import instantiate_callbacks, instantiate_loggers
from modules.runtime.process_group import finish_process_group
from modules.runtime.run_directory import plan_resume, register_resolvers

log = logging.getLogger("train")
register_resolvers()


def _launch_overrides() -> list[str]:
    """The command line's overrides (what identifies a run for `ckpt_path=auto`); none outside a Hydra app."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def train(cfg: DictConfig) -> dict[str, float]:
    """Compose -> instantiate -> fit; returns the final callback metrics."""
    check_config(cfg)
    ckpt_path = None
    if cfg.get("train"):
        plan = plan_resume(
            cfg.get("ckpt_path"), cfg.paths.output_dir, _launch_overrides(), named=bool(cfg.get("run_name"))
        )
        cfg.paths.output_dir = str(
            plan.output_dir
        )  # an earlier run of the same command continues in its directory
        ckpt_path = plan.ckpt_path
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
        check_checkpoint_matches(model, ckpt_path)
        check_resume_config(cfg, ckpt_path)
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
    finish_process_group()  # every rank ends together; see its docstring for the abort it prevents
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
