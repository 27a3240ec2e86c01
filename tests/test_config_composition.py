"""Every config group entry and every experiment composes, and paper-scale compositions resolve."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from tests.conftest import CONF_DIR, compose_config

# groups whose entries are whole alternatives at the top level of train.yaml
GROUPS = [
    "data",
    "resolution",
    "backbone",
    "text_encoder",
    "schedule",
    "model",
    "sampler",
    "guidance",
    "trainer",
    "callbacks",
    "logger",
    "debug",
    "experiment",
]


def _entries(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if p.stem != "default")


@pytest.mark.parametrize(
    ("group", "entry"),
    [(group, entry) for group in GROUPS for entry in _entries(group)],
    ids=lambda v: str(v),
)
def test_every_group_entry_composes_and_resolves(group, entry, tmp_path):
    cfg = compose_config("train", [f"{group}={entry}"], tmp_path)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["model"]["_target_"].endswith("VideoDiffusionModule")
    assert container["trainer"]["_target_"].startswith("lightning")


@pytest.mark.parametrize(
    "overrides",
    [
        ["experiment=scvideo_webvid256", "trainer=a100x4"],
        ["experiment=artv_webvid", "trainer=a100x4", "resolution=448px"],
        ["experiment=artv_webvid", "trainer=a100x4_multinode", "resolution=768px"],
        ["model=artv", "backbone=sd21", "resolution=320px"],
    ],
    ids=lambda v: " ".join(v),
)
def test_paper_compositions_resolve(overrides, tmp_path):
    cfg = compose_config("train", overrides, tmp_path)
    OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("config_name", ["sample", "eval"])
@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_composes_for_sampling(config_name, experiment, tmp_path):
    cfg = compose_config(config_name, [f"experiment={experiment}"], tmp_path)
    OmegaConf.to_container(cfg, resolve=True)


def _group_entry(group: str, name: str) -> DictConfig:
    """A config group entry as Hydra composes it: the entries its defaults list names, then its own keys."""
    entry = OmegaConf.load(CONF_DIR / group / f"{name}.yaml")
    parents = [d for d in entry.pop("defaults", []) if d != "_self_"]
    return OmegaConf.merge(*(_group_entry(group, parent) for parent in parents), entry)


@pytest.mark.parametrize("guidance", _entries("guidance"))
@pytest.mark.parametrize(
    "selection",
    [
        ["model=artv"],
        ["model=scvideo", "backbone=tiny"],
        ["experiment=artv_webvid"],
        ["experiment=scvideo_webvid256"],
        ["experiment=toy_scvideo"],
        ["experiment=toy_artv"],
    ],
    ids=lambda v: " ".join(v),
)
def test_a_guidance_entry_replaces_the_models_guidance_whole(selection, guidance, tmp_path):
    """`guidance=none` with ART-V builds NoGuidance: the eq. (1) weights (or a CFG scale) of the model's own guidance
    are not merged into the chosen entry."""
    cfg = compose_config("sample", [*selection, f"guidance={guidance}", "ckpt_path=null"], tmp_path)
    assert OmegaConf.to_container(cfg.guidance) == OmegaConf.to_container(_group_entry("guidance", guidance))
    instantiate(cfg.model.guidance)


def test_sample_config_composes(tmp_path):
    cfg = compose_config("sample", ["model=artv", "prompt=a panda"], tmp_path)
    assert cfg.prompt == "a panda"
    OmegaConf.to_container(cfg, resolve=True)


def test_unknown_group_entry_names_the_group(tmp_path):
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="trainer"):
        compose_config("train", ["trainer=a100x5"], tmp_path)
