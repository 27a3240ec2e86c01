"""Shared pytest set-up: CPU only, few threads, deterministic seeds, and Hydra config composition helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from modules.runtime.run_directory import register_resolvers

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
torch.set_num_threads(min(2, os.cpu_count() or 1))
register_resolvers()  # what the entry points register before Hydra composes


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    torch.manual_seed(0)
    yield


def compose_config(config_name: str, overrides: list[str], tmp_path: Path):
    """Compose conf/<config_name>.yaml with overrides, with the hydra: resolvers set, as an app run would have."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            cfg.paths.root_dir = str(REPO_ROOT)
            cfg.paths.output_dir = str(tmp_path / "output")
            cfg.paths.log_dir = str(tmp_path / "logs")
            cfg.paths.data_dir = str(tmp_path / "data")
            del cfg.hydra
    return cfg


@pytest.fixture
def single_torch_thread() -> Iterator[None]:
    """Run a test on one torch thread, restoring the count after: tiny models run fastest on one thread, and one
    thread behaves when the machine's cores are shared with another process."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
