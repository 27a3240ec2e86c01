"""Every `experiment=` config composes and trains one `fast_dev_run` batch (`debug=fdr`) with tiny overrides.

Paper-size experiments (tagged `paper`) keep their model, sampler, guidance, frame selection and precision but
get the tiny backbone, the tiny text encoder, the toy data and a toy resolution; their test ids say
`paper-size`. New experiment files are picked up automatically.
"""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import CONF_DIR
from tests.helpers.train_runs import compose_tiny, toy_data_dir

PAPER_TO_TINY = [
    "backbone=tiny",
    "text_encoder=tiny",
    "data=shapes",
    "resolution=toy32",
    "resolution.height=16",
    "resolution.width=16",
    "data.batch_size=2",
    "data.num_frames=4",
]
# ART-V's Φmask at the tiny backbone's size, as experiment=toy_artv
ARTV_MASK_TO_TINY = [
    "model.net.mask_unet.model_channels=32",
    "model.net.mask_unet.attention_resolutions=[1,2]",
    "model.net.mask_unet.num_res_blocks=1",
    "model.net.mask_unet.channel_mult=[1,2]",
    "model.net.mask_unet.num_head_channels=16",
]


def _experiments() -> list:
    params = []
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        experiment = yaml.safe_load(path.read_text()) or {}
        paper = "paper" in experiment.get("tags", [])
        artv = {"override /model": "artv"} in experiment.get("defaults", [])
        tiny = [*PAPER_TO_TINY, *(ARTV_MASK_TO_TINY if artv else [])] if paper else []
        overrides = [f"experiment={path.stem}", "debug=fdr", *tiny]
        params.append(pytest.param(overrides, id=f"paper-size {path.stem}" if paper else path.stem))
    return params


@pytest.mark.parametrize("overrides", _experiments())
def test_experiment_runs_fast_dev_run(overrides, tmp_path, tmp_path_factory):
    from train import train

    cfg = compose_tiny(tmp_path, toy_data_dir(tmp_path_factory), overrides)
    assert cfg.trainer.fast_dev_run
    metrics = train(cfg)
    assert metrics["train/loss"] > 0.0
    assert metrics["train/skipped_nonfinite"] == 0.0
