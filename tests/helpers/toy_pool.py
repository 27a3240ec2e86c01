"""A toy candidate pool for the POS tests: the toy runs' random text tower, toy shapes shards the model never saw,
and their caption index."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from datamodules.shard_writer import write_shard_set
from datamodules.toy_shapes import toy_sample_factory
from modules.pos.build_index import IndexBuilder
from modules.pos.caption_embedding import CaptionEmbedder
from tests.conftest import CONF_DIR

POOL_SEED = 99  # not the toy training data's seed: the pool holds videos the model never saw
POOL_SIZE = 32  # px
POOL_FRAMES = 12


def tiny_text_encoder(init_seed: int = 0) -> torch.nn.Module:
    """The toy runs' frozen random text tower (conf/text_encoder/tiny.yaml)."""
    config = OmegaConf.load(CONF_DIR / "text_encoder" / "tiny.yaml")
    config.init_seed = init_seed
    return instantiate(config)


def write_toy_pool(directory: Path, count: int = 8, per_shard: int = 4) -> list[str]:
    """Toy shapes shards (32 px, 12 frames at 8 fps, distinct captions for count <= 84); returns the captions."""
    make_sample = toy_sample_factory(POOL_SEED, "val", POOL_SIZE, POOL_FRAMES, 8.0)
    write_shard_set(directory, count, per_shard, make_sample, description="toy pool")
    return [make_sample(index, "k").caption for index in range(count)]


def build_toy_index(tmp_path: Path, encoder: torch.nn.Module | None = None, count: int = 8) -> Path:
    """A pool of `count` toy videos in tmp_path/pool and its index tmp_path/index.safetensors."""
    write_toy_pool(tmp_path / "pool", count)
    out = tmp_path / "index.safetensors"
    builder = IndexBuilder(CaptionEmbedder(encoder or tiny_text_encoder()), batch_size=3, progress=False)
    builder.build([str(path) for path in sorted((tmp_path / "pool").glob("*.tar"))], out)
    return out
