"""FSDP: `trainer=a100x4_fsdp` instantiates the strategy with block-level units, activation checkpointing, mixed
precision and sharded checkpoints; the EMA stays correct when the parameters are sharded; sharded checkpoints
keep every key.

Lightning refuses FSDPStrategy on the CPU accelerator ("requires a GPU accelerator"), but torch's FSDP runs on
CPU with gloo. The sharded-EMA test therefore wraps the tiny SCVideo module the way Lightning's
`FSDPStrategy._setup_model` does (its activation checkpointing, then `FullyShardedDataParallel` with the
strategy's policy and settings) in two gloo processes, trains two AdamW steps with the same batch on both
ranks, and compares weights and EMA with an unsharded single-process copy.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra.utils import instantiate
from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
from lightning.pytorch.strategies import FSDPStrategy, SingleDeviceStrategy
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from modules.blocks.attention import SpatialTransformer
from modules.blocks.resnet import TimestepEmbedSequential
from modules.scvideo.video_res_block import VideoResBlock
from modules.training.fsdp import clean_parameter_name, fsdp_strategy, loads_checkpoint_weights_itself
from modules.training.video_diffusion_module import FROZEN_PREFIXES
from tests.conftest import compose_config

FSDP_CONFIG = ["trainer=a100x4_fsdp"]
WORLD_SIZE = 2


def test_fsdp_trainer_config_instantiates_the_strategy(tmp_path):
    cfg = compose_config("train", FSDP_CONFIG, tmp_path)
    assert (cfg.trainer.devices, cfg.trainer.precision) == (4, "bf16-mixed")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    wrap_policy = strategy.kwargs["auto_wrap_policy"]
    checkpoint_policy = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]
    for policy in (wrap_policy, checkpoint_policy):
        assert isinstance(policy, ModuleWrapPolicy)
        assert policy._module_classes == {TimestepEmbedSequential}
    assert strategy.mixed_precision.param_dtype == torch.bfloat16
    assert strategy.mixed_precision.reduce_dtype == torch.float32
    assert strategy.mixed_precision.buffer_dtype == torch.float32
    assert strategy.sharding_strategy.name == "FULL_SHARD"
    assert strategy._state_dict_type == "sharded"
    assert strategy.kwargs["use_orig_params"] is True


def test_fsdp_strategy_rejects_bad_class_paths_and_dtypes():
    with pytest.raises(
        ValueError, match=r"wrap_block_classes: cannot import 'modules.blocks.resnet.NoSuchBlock'"
    ):
        fsdp_strategy(["modules.blocks.resnet.NoSuchBlock"])
    with pytest.raises(ValueError, match=r"wrap_block_classes: 'torch.Tensor' is not an nn.Module class"):
        fsdp_strategy(["torch.Tensor"])
    with pytest.raises(ValueError, match=r"param_dtype='bf16' is not a torch dtype"):
        fsdp_strategy(["modules.blocks.resnet.ResBlock"], param_dtype="bf16")
    with pytest.raises(ValueError, match="wrap_block_classes is empty"):
        fsdp_strategy([])


def test_clean_parameter_name():
    wrapped = "unet.input_blocks.1._fsdp_wrapped_module._checkpoint_wrapped_module.proj_in.weight"
    assert clean_parameter_name(wrapped) == "unet.input_blocks.1.proj_in.weight"


def test_fsdp_checkpoints_keep_every_key(tmp_path):
    """Lightning's FSDP strategy loads a sharded checkpoint (through torch.distributed.checkpoint) and a full one
    strictly itself, every model key, and hands `on_load_checkpoint` no `state_dict`; other checkpoints leave the
    frozen encoders out."""
    cfg = compose_config("train", [], tmp_path)
    model = instantiate(cfg.model)
    frozen = [key for key in model.state_dict() if key.startswith(FROZEN_PREFIXES)]
    assert frozen
    for strategy, kept in (
        (instantiate(compose_config("train", FSDP_CONFIG, tmp_path).trainer.strategy), True),
        (fsdp_strategy(["modules.blocks.resnet.TimestepEmbedSequential"], state_dict_type="full"), True),
        (SingleDeviceStrategy("cpu"), False),
    ):
        assert loads_checkpoint_weights_itself(strategy) is kept
        model.trainer = SimpleNamespace(strategy=strategy)
        checkpoint = {"state_dict": model.state_dict()}
        model.on_save_checkpoint(checkpoint)
        assert all((key in checkpoint["state_dict"]) is kept for key in frozen)
    model.on_load_checkpoint(
        {"training_seed": 5, "consecutive_nonfinite": 2}
    )  # sharded: weights loaded already
    assert model.training_seed == 5


class DiffusionLoss(nn.Module):
    """Root module for FSDP: forward = the module's diffusion loss with a seeded generator."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch: dict, seed: int) -> torch.Tensor:
        return self.module.diffusion_loss(batch, generator=torch.Generator().manual_seed(seed))


def _batch() -> dict:
    generator = torch.Generator().manual_seed(7)
    video = torch.rand(2, 4, 3, 16, 16, generator=generator) * 2 - 1
    return {"video": video, "caption": ["a red circle moving left", "a blue square moving up"]}


def _train_step(root: nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    torch.manual_seed(step)  # condition dropout draws from the global RNG
    root(_batch(), seed=step).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _fsdp_worker(rank: int, init_file: str, config_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        cfg = compose_config("train", [*FSDP_CONFIG, "trainer.strategy.param_dtype=null"], Path(config_dir))
        torch.manual_seed(0)
        model = instantiate(cfg.model)
        reference = copy.deepcopy(model)
        strategy = instantiate(cfg.trainer.strategy)
        root = FullyShardedDataParallel(
            DiffusionLoss(model),
            mixed_precision=strategy.mixed_precision,
            sharding_strategy=strategy.sharding_strategy,
            device_id=torch.device("cpu"),  # Lightning passes the GPU index here
            ignored_states=[model.get_submodule(name) for name in strategy.replicated_submodules],
            **strategy.kwargs,
        )
        _setup_activation_checkpointing(root, strategy._activation_checkpointing_kwargs)
        strategy.model = root
        # one unit per UNet block (input_blocks.i, middle_block, output_blocks.i), holding the video blocks
        units = [m.module for m in root.modules() if isinstance(m, FullyShardedDataParallel)][1:]
        unet = model.net.unet
        assert len(units) == len(unet.input_blocks) + 1 + len(unet.output_blocks)
        assert all(isinstance(unit, TimestepEmbedSequential) for unit in units)
        assert any(isinstance(layer, VideoResBlock) for unit in units for layer in unit.modules())
        assert any(isinstance(layer, SpatialTransformer) for unit in units for layer in unit.modules())
        named = dict(model.net.trainable_named_parameters())
        assert any("_fsdp_wrapped_module" in name for name in named)
        assert any("_checkpoint_wrapped_module" in name for name in named)

        optimizer = torch.optim.AdamW([p for _, p in model.net.trainable_named_parameters()], lr=1e-3)
        reference_optimizer = torch.optim.AdamW(
            [p for _, p in reference.net.trainable_named_parameters()], lr=1e-3
        )
        for step in range(2):
            _train_step(root, optimizer, step)
            model.update_ema(strategy)
            _train_step(DiffusionLoss(reference), reference_optimizer, step)
            reference.update_ema(None)

        # outside forward each rank holds only its slice of a parameter, which the EMA could not read
        sharded = dict(model.net.trainable_named_parameters())
        assert any(
            p.numel() < reference.get_parameter(f"net.{clean_parameter_name(n)}").numel()
            for n, p in sharded.items()
        )
        with FullyShardedDataParallel.summon_full_params(root, writeback=False):
            full = {
                clean_parameter_name(n): p.detach().clone() for n, p in model.net.trainable_named_parameters()
            }
        for name, param in reference.net.trainable_named_parameters():
            assert torch.equal(full[name], param.detach()), name  # bitwise on CPU with gloo
        assert model.ema.num_updates.item() == reference.ema.num_updates.item() == 2
        for name, shadow, expected in zip(
            model.ema.param_names, model.ema.shadows(), reference.ema.shadows(), strict=True
        ):
            assert shadow.dtype == torch.float32 and shadow.shape == expected.shape, name
            assert torch.equal(shadow, expected), name
    finally:
        dist.destroy_process_group()


def test_ema_of_sharded_parameters_matches_an_unsharded_run(tmp_path):
    mp.spawn(_fsdp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
