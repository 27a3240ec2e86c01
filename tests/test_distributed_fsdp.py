"""FSDP: `trainer=a100x4_fsdp` instantiates the strategy with block-level units, activation checkpointing, mixed
precision and sharded checkpoints, and `trainer=fsdp_cpu` is the same strategy on 2 CPU processes; the EMA stays
correct when the parameters are sharded, and swapping it in for validation and samples leaves the training weights
intact; sharded checkpoints keep every key.

Through train.py and the Trainer (`trainer=fsdp_cpu`, 2 gloo processes): training with gradient clipping, EMA
validation, sample videos, sharded checkpoints, a relaunch with `ckpt_path=auto` that continues from them (bitwise as
an uninterrupted run: slow), and sample.py reading them in one process.

The sharded-EMA test wraps the tiny SCVideo module the way Lightning's `FSDPStrategy._setup_model` does (its
activation checkpointing, then `FullyShardedDataParallel` with the strategy's policy and settings) in two gloo
processes, trains two AdamW steps with the same batch on both ranks, and compares weights and EMA with an unsharded
single-process copy.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hydra.utils import instantiate
from lightning.fabric.strategies.fsdp import _setup_activation_checkpointing
from lightning.pytorch.strategies import FSDPStrategy, SingleDeviceStrategy
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.distributed.fsdp import BackwardPrefetch, FullyShardedDataParallel, ShardingStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from modules.blocks.attention import SpatialTransformer
from modules.blocks.resnet import TimestepEmbedSequential
from modules.checkpoints.sharded import load_checkpoint_metadata
from modules.runtime.checkpoint_discovery import is_complete_checkpoint
from modules.runtime.process_group import finish_process_group
from modules.runtime.sampling import build_model_for_sampling
from modules.scvideo.video_res_block import VideoResBlock
from modules.training.ema import ExponentialMovingAverage, shadow_buffer_name
from modules.training.fsdp import (
    call_through_root,
    clean_parameter_name,
    fsdp_strategy,
    full_parameters,
    loads_checkpoint_weights_itself,
)
from modules.training.video_diffusion_module import FROZEN_PREFIXES
from tests.conftest import compose_config
from tests.helpers.sharded_checkpoints import read_sharded_checkpoint
from tests.helpers.train_runs import (
    assert_same_tensors,
    read_records,
    recorder_overrides,
    run_command,
    run_train,
    toy_data_dir,
)

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


def _fsdp_checks(config_dir: str) -> None:
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


def _gloo_threads() -> list[str]:
    """Names of this process's gloo worker and transport threads (Linux)."""
    names = [
        (Path("/proc/self/task") / t / "comm").read_text().strip() for t in os.listdir("/proc/self/task")
    ]
    return [name for name in names if "gloo" in name]


def _run_worker(checks: Callable[..., None], rank: int, init_file: str, *args: str) -> None:
    """One rank: join the gloo group, run `checks`, end the group as train.py does."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        checks(*args)  # returns with its FSDP units out of scope, so that the group can be destroyed
        finish_process_group()  # without it gloo can abort the process at exit
        assert not _gloo_threads(), "the process group outlived finish_process_group"
    finally:
        if dist.is_initialized():  # a check failed: no barrier, the other rank may be gone
            dist.destroy_process_group()


def _fsdp_worker(rank: int, init_file: str, config_dir: str) -> None:
    _run_worker(_fsdp_checks, rank, init_file, config_dir)


def test_ema_of_sharded_parameters_matches_an_unsharded_run(tmp_path):
    mp.spawn(_fsdp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=True)


# ---- the EMA swapped in and out of sharded parameters ------------------------------------------------------
class Block(nn.Module):
    """An FSDP unit."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(x))


class BlocksAndHead(nn.Module):
    """Two FSDP units and a layer of the root unit, as the UNet's stages and its `time_embed` / `out` layers."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))

    def generate(self, x: torch.Tensor) -> torch.Tensor:
        """What the sample logger calls outside training and validation steps."""
        return self.forward(x)


def _swap_checks() -> None:
    torch.manual_seed(0)
    model = BlocksAndHead()
    trained = copy.deepcopy(model)
    ema = ExponentialMovingAverage(model.named_parameters(), decay=0.5)
    for shadow in ema.shadows():
        shadow.add_(1.0)  # EMA weights far from the training weights
    averaged = copy.deepcopy(model)
    for name, shadow in zip(ema.param_names, ema.shadows(), strict=True):
        averaged.get_parameter(name).data.copy_(shadow)
    root = FullyShardedDataParallel(
        model,
        auto_wrap_policy=ModuleWrapPolicy({Block}),
        device_id=torch.device("cpu"),
        use_orig_params=True,
    )
    strategy = FSDPStrategy()
    strategy.model = root
    named = [(clean_parameter_name(n), p) for n, p in model.named_parameters()]
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for _ in range(2):  # the second swap starts from what the first left behind
            with ema.swapped_in(named, whole=partial(full_parameters, strategy, writeback=True)):
                sampled = call_through_root(strategy, model, "generate", x)
            # the root unit keeps its gathered parameters after a forward without backward; the restore must
            # reach them, not only this rank's slices, or this forward would still see EMA weights
            after = root(x)
            assert torch.equal(sampled, averaged(x)), dist.get_rank()
            assert torch.equal(after, trained(x)), dist.get_rank()
    with FullyShardedDataParallel.summon_full_params(root, writeback=False):
        for name, param in trained.named_parameters():
            assert torch.equal(root.module.get_parameter(name), param), name


def _swap_worker(rank: int, init_file: str) -> None:
    _run_worker(_swap_checks, rank, init_file)


def test_ema_swap_and_sampling_leave_the_sharded_training_weights_intact(tmp_path):
    mp.spawn(_swap_worker, args=(str(tmp_path / "init"),), nprocs=WORLD_SIZE, join=True)


# ---- configuration -----------------------------------------------------------------------------------------
def test_fsdp_cpu_config_is_the_a100x4_fsdp_strategy_in_fp32_on_two_processes(tmp_path):
    gpu = compose_config("train", FSDP_CONFIG, tmp_path).trainer
    cpu = compose_config("train", ["trainer=fsdp_cpu"], tmp_path).trainer
    assert (cpu.accelerator, cpu.devices, cpu.precision) == ("cpu", 2, "32-true")
    assert cpu.gradient_clip_val == gpu.gradient_clip_val == 1.0
    differs = {"param_dtype", "reduce_dtype", "buffer_dtype", "process_group_backend"}
    assert {k: v for k, v in cpu.strategy.items() if k not in differs} == {
        k: v for k, v in gpu.strategy.items() if k not in differs
    }
    assert (cpu.strategy.param_dtype, cpu.strategy.process_group_backend) == (None, "gloo")
    strategy = instantiate(cpu.strategy)
    assert strategy.mixed_precision is None  # Lightning derives fp32 from `precision: 32-true`
    assert strategy._state_dict_type == "sharded" and strategy.kwargs["use_orig_params"] is True


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"use_orig_paramz": True},
            "trainer.strategy.use_orig_paramz is no argument of Lightning's FSDPStrategy",
        ),
        (
            {"device_id": 0},
            "trainer.strategy.device_id cannot be set here: the strategy passes the root device",
        ),
        ({"mixed_precision": None}, "trainer.strategy.mixed_precision cannot be set here: set param_dtype"),
        (
            {"sharding_strategy": "HALF_SHARD"},
            "trainer.strategy.sharding_strategy='HALF_SHARD' is not one of FULL_",
        ),
        (
            {"backward_prefetch": "early"},
            "trainer.strategy.backward_prefetch='early' is not one of BACKWARD_PRE",
        ),
        (
            {"state_dict_type": "consolidated"},
            "trainer.strategy.state_dict_type='consolidated' must be one of",
        ),
        ({"use_orig_params": False}, "trainer.strategy.use_orig_params=false is not supported"),
    ],
)
def test_fsdp_option_lightning_or_torch_would_refuse_is_named(options, message):
    with pytest.raises(ValueError) as error:
        fsdp_strategy(["modules.blocks.resnet.TimestepEmbedSequential"], **options)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_fsdp_strategy_turns_option_names_into_torch_values(tmp_path):
    cfg = compose_config(
        "train", ["trainer=fsdp_cpu", "+trainer.strategy.backward_prefetch=BACKWARD_POST"], tmp_path
    )
    strategy = instantiate(cfg.trainer.strategy)
    assert strategy.kwargs["backward_prefetch"] is BackwardPrefetch.BACKWARD_POST
    assert strategy.sharding_strategy is ShardingStrategy.FULL_SHARD


def test_process_group_backend_the_cpu_cannot_run_is_named(tmp_path):
    cfg = compose_config(
        "train", ["trainer=fsdp_cpu", "trainer.strategy.process_group_backend=nccl"], tmp_path
    )
    strategy = instantiate(cfg.trainer.strategy)
    strategy.parallel_devices = [torch.device("cpu")]
    with pytest.raises(
        ValueError, match=r"^trainer.strategy.process_group_backend='nccl' cannot run on the CPU"
    ):
        strategy.setup_environment()


# ---- FSDP through train.py and the Trainer, on 2 CPU processes --------------------------------------------
CLIP = (
    0.01  # below the toy run's whole-gradient norms (about 0.25 to 0.4), so that clipping acts at every step
)
FSDP_RUN = [
    "experiment=toy_scvideo",
    "trainer=fsdp_cpu",
    f"trainer.gradient_clip_val={CLIP}",
    "data.samples_per_epoch=8",  # 2 ranks x batches of 2: epochs of 2 optimizer steps, validation after step 2
    "model.lr_scheduler.total_steps=3",  # the schedule must not depend on where a launch stops
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "callbacks.video_samples.every_n_steps=1",
    "logger=tensorboard",
]
PROBE = "tests.helpers.probes.ShardedTrainingProbe"


def _probe_overrides(directory: Path) -> list[str]:
    # after callbacks.ema_weight_swap, so that it sees the swapped-in and the restored weights
    return [f"+callbacks.sharded_probe._target_={PROBE}", f"+callbacks.sharded_probe.directory={directory}"]


def _fsdp_train(directory: Path, data_dir: Path, max_steps: int, *args: str) -> subprocess.CompletedProcess:
    """`python train.py` of FSDP_RUN in `directory/run`, recording batches and the probe under `directory`."""
    overrides = [*recorder_overrides(directory / "records"), *_probe_overrides(directory / "probe")]
    return run_train(
        [*FSDP_RUN, f"trainer.max_steps={max_steps}", *overrides, *args],
        directory / "run",
        data_dir,
        timeout=300,
    )


def _succeeded(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.fixture(scope="module")
def resumed_fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Steps 1-2 (samples after each, EMA validation and a sharded checkpoint after step 2), then the same command
    relaunched with `ckpt_path=auto`, to step 3 and train.py's final `trainer.validate`. Returns the directory."""
    directory = tmp_path_factory.mktemp("fsdp")
    data_dir = toy_data_dir(tmp_path_factory)
    _succeeded(_fsdp_train(directory, data_dir, 2))
    relaunch = _fsdp_train(directory, data_dir, 3, "ckpt_path=auto", "validate=true")
    _succeeded(relaunch)
    checkpoints = directory / "run" / "checkpoints"
    assert re.search(
        rf"resuming from {checkpoints}/(last|step00000002)\.ckpt <ckpt_path=auto>", relaunch.stdout
    )
    return directory


def _probe(directory: Path, event: str) -> list[list[dict]]:
    """Both ranks' probe records of `event`."""
    return [[r for r in read_records(directory / "probe", rank) if r["event"] == event] for rank in (0, 1)]


def test_fsdp_cpu_trains_validates_samples_and_resumes_sharded_through_train_py(resumed_fsdp_run):
    directory = resumed_fsdp_run
    checkpoints = directory / "run" / "checkpoints"
    step2 = checkpoints / "step00000002.ckpt"
    assert sorted(p.name for p in step2.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    assert is_complete_checkpoint(step2) and is_complete_checkpoint(checkpoints / "last.ckpt")
    assert load_checkpoint_metadata(checkpoints / "last.ckpt")["global_step"] == 3

    # the relaunch continued from step 2 on both ranks
    for rank in (0, 1):
        records = read_records(directory / "records", rank)
        assert [r["step"] for r in records if r["event"] == "start"] == [0, 2]
        assert [r["step"] for r in records if r["event"] == "batch"] == [1, 2, 3]

    # the whole gradient, all ranks' slices together, clipped to the configured norm, alike on both ranks
    before, after = _probe(directory, "before_clipping"), _probe(directory, "after_clipping")
    assert before[0] == before[1] and after[0] == after[1]
    assert [r["step"] for r in after[0]] == [1, 2, 3]
    for unclipped, clipped in zip(before[0], after[0], strict=True):
        assert unclipped["grad_norm"] > CLIP
        assert clipped["grad_norm"] == pytest.approx(CLIP, rel=1e-4)

    # validation (after step 2, and train.py's trainer.validate after step 3) sees the EMA weights, then the
    # training weights are back
    for rank in (0, 1):
        validations, restores = _probe(directory, "validation")[rank], _probe(directory, "restored")[rank]
        assert [r["step"] for r in validations] == [r["step"] for r in restores] == [2, 3]
        assert all(r["from_ema"] == 0.0 and r["ema_from_training"] > 0.0 for r in validations)
        assert all(r["from_training"] == 0.0 for r in restores)

    # sample videos after every step, written by rank 0 alone: one writing process per launch (event files are
    # named events.out.tfevents.<time>.<host>.<pid>.<n>)
    tensorboard = directory / "run" / "tensorboard"
    assert len({path.name.split(".")[-2] for path in tensorboard.glob("events.out.tfevents.*")}) == 2
    events = EventAccumulator(str(tensorboard), size_guidance={"images": 0})
    events.Reload()
    for index in (0, 1):
        assert [image.step for image in events.Images(f"samples/{index}")] == [1, 2, 3]


def test_sample_py_consolidates_a_sharded_checkpoint_with_its_ema(resumed_fsdp_run, tmp_path):
    checkpoint = resumed_fsdp_run / "run" / "checkpoints" / "last.ckpt"
    stored = read_sharded_checkpoint(checkpoint, tmp_path / "whole.pt")["model"]
    for use_ema, stored_name in (
        (True, lambda n: f"ema.{shadow_buffer_name(n)}"),
        (False, lambda n: f"net.{n}"),
    ):
        cfg = compose_config(
            "sample", ["experiment=toy_scvideo", f"ckpt_path={checkpoint}", f"use_ema={use_ema}"], tmp_path
        )
        model = build_model_for_sampling(cfg)
        for name, param in model.net.trainable_named_parameters():
            assert torch.equal(param, stored[stored_name(name)]), name
    assert any(
        not torch.equal(stored[f"net.{name}"], stored[f"ema.{shadow_buffer_name(name)}"])
        for name, _ in model.net.trainable_named_parameters()
    )

    output = tmp_path / "sample"
    result = run_command(
        [
            sys.executable,
            "sample.py",
            "experiment=toy_scvideo",
            f"ckpt_path={checkpoint}",
            f"hydra.run.dir={output}",
            "resolution.height=16",
            "resolution.width=16",
            "num_frames=4",
        ]
    )
    _succeeded(result)
    assert (output / "videos" / "a-red-circle-moving-left_seed0.mp4").stat().st_size > 0


@pytest.mark.slow
def test_fsdp_resume_is_bitwise_identical_to_an_uninterrupted_run(
    resumed_fsdp_run, tmp_path, tmp_path_factory
):
    """Samples, validation and checkpoints with the EMA swapped in and out must not touch the training weights."""
    _succeeded(_fsdp_train(tmp_path, toy_data_dir(tmp_path_factory), 3, "validate=true"))
    for name in ("step00000002.ckpt", "last.ckpt"):
        resumed = read_sharded_checkpoint(
            resumed_fsdp_run / "run" / "checkpoints" / name, tmp_path / "resumed.pt"
        )
        expected = read_sharded_checkpoint(tmp_path / "run" / "checkpoints" / name, tmp_path / "expected.pt")
        assert_same_tensors(resumed, expected, name)  # weights, EMA shadows, optimizer states
    for rank in (0, 1):
        batches = [
            [
                (r["step"], r["keys"], r["loss"])
                for r in read_records(run / "records", rank)
                if r["event"] == "batch"
            ]
            for run in (resumed_fsdp_run, tmp_path)
        ]
        assert batches[0] == batches[1]
