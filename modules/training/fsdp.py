"""Fully Sharded Data Parallel for the video UNets: Lightning's `FSDPStrategy` built from YAML, on GPUs or on the CPU,
and full parameters for the EMA.

`fsdp_strategy` turns dotted class paths from `conf/trainer/a100x4_fsdp.yaml` into the sets of module classes
Lightning's strategy wants: FSDP units (`auto_wrap_policy`) and activation-checkpointed blocks
(`activation_checkpointing_policy`). A class matches its subclasses too (`isinstance`). Every other option is
checked when the strategy is built, so that one Lightning or torch would refuse later, inside the launched
processes, stops the run with one line naming `trainer.strategy.<key>`.

The frozen encoders (`first_stage`, `text_encoder`) stay out of FSDP, replicated on every rank: they have no
gradients or optimizer state to shard, sharding them would all-gather them at every step, and FSDP cannot
manage open_clip's scalar `logit_scale` parameter at all ("FSDP doesn't support scalar parameters").

EMA under FSDP. With `use_orig_params=True` every parameter of `net` stays a separate `nn.Parameter`, but outside
forward/backward it holds only this rank's flat slice of the parameter (any length, often empty). The EMA
(`modules/training/ema.py`) keeps full-shape fp32 shadows on every rank, so `VideoDiffusionModule` updates it
inside `full_parameters(strategy)`, which all-gathers the full parameters (`FSDP.summon_full_params`, read
only): every rank then applies the same update to the same full shadows, exactly as under DDP. Cost per
optimizer step: one extra all-gather of the whole model, and the full fp32 weights held transiently on every
rank. The shadows are buffers, which FSDP does not shard; `buffer_dtype=float32` below keeps FSDP from casting
them (and the noise schedule) to bf16.

Validating and sampling with the EMA weights (callbacks ema_weight_swap, video_samples) swap the shadows in and the
training weights back inside `full_parameters(strategy, writeback=True)`, which writes each rank's slice back; both
writes go through it because after a forward without backward FSDP keeps the root unit's gathered parameters and
reuses them, unchanged, in the next forward and checkpoint. Every rank must take part, so every rank generates the
sample videos (rank 0 writes them), through the root FSDP module's forward (`call_through_root`), as Lightning runs
`training_step` and `validation_step`.

Gradient clipping by norm goes through the root FSDP module's `clip_grad_norm_`
(`VideoDiffusionModule.configure_gradient_clipping`): Lightning's FSDP precision plugin refuses it, and a norm of
each rank's slices alone would be wrong.

On the CPU (`conf/trainer/fsdp_cpu.yaml`, 2 processes over gloo, how the tests rehearse this path) the strategy
wraps the model itself with `device_id=torch.device("cpu")`: Lightning passes the root device's index, which is None
on the CPU, and torch then refuses to build FSDP. Everything after the wrapping (activation checkpointing,
precision, checkpoints) is Lightning's GPU code path. Lightning refuses its own `FSDPStrategy` on the CPU by exact
type; this subclass passes.

Checkpoints with `state_dict_type: sharded` are directories (`step00000500.ckpt/`: `.metadata`, one
`__<rank>_0.distcp` per rank, Lightning's `meta.pt`): `ckpt_path=auto` resumes from the newest complete one
(modules/runtime/checkpoint_discovery.py), and sample.py / eval.py consolidate one in a single process
(modules/checkpoints/sharded.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from hydra.utils import get_class
from lightning.pytorch.strategies import FSDPStrategy, Strategy
from torch import nn
from torch.distributed.fsdp import (
    BackwardPrefetch,
    FullyShardedDataParallel,
    MixedPrecision,
    ShardingStrategy,
)

# name parts FSDP and activation checkpointing insert into the names of the modules they wrap
WRAPPER_NAME_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
# FSDPStrategy / FullyShardedDataParallel arguments that `fsdp_strategy` or Lightning set themselves, and what to set
DERIVED_ARGUMENTS = {
    "module": "the strategy wraps the LightningModule",
    "device_id": "the strategy passes the root device",
    "auto_wrap_policy": "set wrap_block_classes",
    "activation_checkpointing": "set checkpoint_block_classes",
    "activation_checkpointing_policy": "set checkpoint_block_classes",
    "mixed_precision": "set param_dtype, reduce_dtype and buffer_dtype",
    "ignored_states": "set replicated_submodules",
    "ignored_modules": "set replicated_submodules",
}
STATE_DICT_TYPES = ("full", "sharded")


def _classes(paths: Sequence[str], key: str) -> set[type[nn.Module]]:
    classes = set()
    for path in paths:
        try:
            cls = get_class(path)
        except (ImportError, AttributeError, ValueError) as error:
            raise ValueError(f"trainer.strategy.{key}: cannot import {path!r} ({error})") from error
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ValueError(f"trainer.strategy.{key}: {path!r} is not an nn.Module class")
        classes.add(cls)
    return classes


def _dtype(name: str | None, key: str) -> torch.dtype | None:
    if name is None:
        return None
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"trainer.strategy.{key}={name!r} is not a torch dtype (e.g. bfloat16, float32)")
    return dtype


def _enum(value: Any, enum: type, key: str) -> Any:
    """A torch FSDP enum member from its name (YAML gives strings), or the value as given."""
    if not isinstance(value, str):
        return value
    try:
        return enum[value.upper()]
    except KeyError:
        names = ", ".join(member.name for member in enum)
        raise ValueError(f"trainer.strategy.{key}={value!r} is not one of {names}") from None


def _checked_strategy_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The remaining FSDPStrategy / FullyShardedDataParallel arguments, each checked here so that a bad one stops
    the run at instantiation with a line naming it, not inside the launched processes."""
    accepted = set(inspect.signature(FSDPStrategy.__init__).parameters) | set(
        inspect.signature(FullyShardedDataParallel.__init__).parameters
    )
    accepted -= {"self", "kwargs"}
    for key in kwargs:
        if key in DERIVED_ARGUMENTS:
            raise ValueError(f"trainer.strategy.{key} cannot be set here: {DERIVED_ARGUMENTS[key]}")
        if key not in accepted:
            raise ValueError(
                f"trainer.strategy.{key} is no argument of Lightning's FSDPStrategy or torch's "
                "FullyShardedDataParallel"
            )
    checked = dict(kwargs)
    if "sharding_strategy" in checked:
        checked["sharding_strategy"] = _enum(
            checked["sharding_strategy"], ShardingStrategy, "sharding_strategy"
        )
    if checked.get("backward_prefetch") is not None:
        checked["backward_prefetch"] = _enum(
            checked["backward_prefetch"], BackwardPrefetch, "backward_prefetch"
        )
    state_dict_type = checked.get("state_dict_type", "full")
    if state_dict_type not in STATE_DICT_TYPES:
        raise ValueError(
            f"trainer.strategy.state_dict_type={state_dict_type!r} must be one of {STATE_DICT_TYPES}"
        )
    if not checked.get("use_orig_params", True):
        raise ValueError(
            "trainer.strategy.use_orig_params=false is not supported: the optimizer, the EMA and gradient clipping "
            "address the net's own parameters; keep it true"
        )
    return checked


class ReplicatedSubmodulesFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, except that
    - the LightningModule's submodules named in `replicated_submodules` are kept out of FSDP (`ignored_states`):
      whole on every rank and moved to the device here, as FSDP moves only what it manages;
    - on the CPU accelerator it wraps the model itself with `device_id=torch.device("cpu")` (see the module
      docstring) and otherwise behaves as on GPUs;
    - a later `trainer.validate` / `trainer.test` of the fitted model (train.py's `validate: true`) reuses the root
      FSDP module of the fit. Lightning would find the blocks wrapped already (wrapping happens in place), leave the
      root unwrapped, and the parameters of the root unit (those outside the blocks) would stay sharded in forward.
    """

    def __init__(self, replicated_submodules: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replicated_submodules = list(replicated_submodules)
        self._fitted_root: FullyShardedDataParallel | None = None

    def setup_environment(self) -> None:
        backend = self._process_group_backend
        if self.root_device.type == "cpu" and backend not in (None, "gloo"):
            raise ValueError(
                f"trainer.strategy.process_group_backend={backend!r} cannot run on the CPU accelerator: use gloo"
            )
        super().setup_environment()

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self._fitted_root is not None and self._fitted_root.module is model:
            return super()._setup_model(self._fitted_root)
        if self.replicated_submodules:
            replicated = [_submodule(model, name) for name in self.replicated_submodules]
            for module in replicated:
                module.to(self.root_device)
            self.kwargs["ignored_states"] = replicated
        already_wrapped = any(isinstance(module, FullyShardedDataParallel) for module in model.modules())
        if self.root_device.type == "cpu" and not already_wrapped:
            # what the parent does on a GPU, with the device torch needs to be told on the CPU
            model = FullyShardedDataParallel(
                module=model,
                cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy,
                device_id=torch.device("cpu"),
                **self.kwargs,
            )
            # applied; the parent, handed a wrapped model, would otherwise warn that it ignores the policy
            self.kwargs.pop("auto_wrap_policy", None)
        root = super()._setup_model(model)
        # wrapping and activation checkpointing are done, in place; a later setup must not try either again
        self.kwargs.pop("auto_wrap_policy", None)
        self._activation_checkpointing_kwargs = {}
        self._fitted_root = root
        return root


def _submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as error:
        raise ValueError(
            f"trainer.strategy.replicated_submodules: the model has no submodule {name!r}"
        ) from error


def fsdp_strategy(
    wrap_block_classes: Sequence[str],
    checkpoint_block_classes: Sequence[str] = (),
    replicated_submodules: Sequence[str] = (),
    param_dtype: str | None = "bfloat16",
    reduce_dtype: str | None = "float32",
    buffer_dtype: str | None = "float32",
    **strategy_kwargs: Any,
) -> FSDPStrategy:
    """Lightning's FSDPStrategy with block-level FSDP units and activation checkpointing.

    Args:
        wrap_block_classes: dotted paths of the module classes that become FSDP units (the UNet blocks).
        checkpoint_block_classes: dotted paths of the classes whose activations are recomputed in backward.
        replicated_submodules: attribute paths of LightningModule submodules kept out of FSDP, whole on every
            rank (the frozen encoders).
        param_dtype, reduce_dtype, buffer_dtype: FSDP mixed precision (torch dtype names; all None = none, then
            Lightning derives it from `trainer.precision`): compute in `param_dtype`, reduce gradients in
            `reduce_dtype`, keep buffers (EMA shadows, the noise schedule) in `buffer_dtype`. The fp32 master weights
            stay sharded.
        strategy_kwargs: the other FSDPStrategy / FullyShardedDataParallel arguments (`sharding_strategy`,
            `state_dict_type`, `use_orig_params`, `limit_all_gathers`, `process_group_backend`, ...); an unknown one,
            one this factory sets itself, or a value Lightning or torch would refuse raises a ValueError naming
            `trainer.strategy.<key>`.
    """
    if not wrap_block_classes:
        raise ValueError(
            "trainer.strategy.wrap_block_classes is empty: FSDP would make the whole model one unit"
        )
    dtypes = {
        "param_dtype": _dtype(param_dtype, "param_dtype"),
        "reduce_dtype": _dtype(reduce_dtype, "reduce_dtype"),
        "buffer_dtype": _dtype(buffer_dtype, "buffer_dtype"),
    }
    mixed_precision = MixedPrecision(**dtypes) if any(dtypes.values()) else None
    checkpointing = _classes(checkpoint_block_classes, "checkpoint_block_classes")
    return ReplicatedSubmodulesFSDPStrategy(
        replicated_submodules=replicated_submodules,
        auto_wrap_policy=_classes(wrap_block_classes, "wrap_block_classes"),
        activation_checkpointing_policy=checkpointing or None,
        mixed_precision=mixed_precision,
        **_checked_strategy_kwargs(strategy_kwargs),
    )


def loads_checkpoint_weights_itself(strategy: Strategy | None) -> bool:
    """Whether `strategy` loads a checkpoint's weights itself, strictly, before `on_load_checkpoint` could add the
    keys a checkpoint leaves out: Lightning's FSDPStrategy does in `load_checkpoint`, for sharded checkpoints (a
    directory of per-rank shards, through `torch.distributed.checkpoint`) and full ones (one file, the full state
    dict, replicated submodules' keys included, loaded into the wrapped model) alike. Its checkpoints must hold
    every key of the model's state dict."""
    return isinstance(strategy, FSDPStrategy)


def clean_parameter_name(name: str) -> str:
    """`unet.input_blocks.1.0._fsdp_wrapped_module.in_layers.0.weight` -> `unet.input_blocks.1.0.in_layers.0.weight`."""
    for part in WRAPPER_NAME_PARTS:
        name = name.replace(part, "")
    return name


def sharded_root(strategy: Strategy | None) -> FullyShardedDataParallel | None:
    """The root FSDP module of an FSDP-trained model, or None with any other strategy (or before setup)."""
    if isinstance(strategy, FSDPStrategy) and isinstance(strategy.model, FullyShardedDataParallel):
        return strategy.model
    return None


def call_through_root(
    strategy: Strategy | None, module: nn.Module, method: str, *args: Any, **kwargs: Any
) -> Any:
    """`module.<method>(*args, **kwargs)`, under FSDP run inside the root FSDP module's forward (every rank must
    call it): only there are the parameters the root unit owns (those outside the wrapped blocks) whole. Lightning
    reroutes `training_step` and `validation_step` the same way; sample generation outside them needs it too."""
    root = sharded_root(strategy)
    if root is None:
        return getattr(module, method)(*args, **kwargs)

    def redirected(*inner_args: Any, **inner_kwargs: Any) -> Any:
        del module.forward  # the class's own forward again, for whatever `method` calls
        return getattr(module, method)(*inner_args, **inner_kwargs)

    module.forward = redirected
    try:
        return root(*args, **kwargs)
    finally:
        module.__dict__.pop("forward", None)


@contextmanager
def full_parameters(strategy: Strategy | None, writeback: bool = False) -> Iterator[None]:
    """Inside this block the parameters of an FSDP-trained model are whole on every rank; with `writeback`, what is
    written into them reaches each rank's slice on exit, else changes are dropped. With any other strategy it does
    nothing. Every rank must enter it (it all-gathers)."""
    root = sharded_root(strategy)
    if root is None:
        yield
        return
    with FullyShardedDataParallel.summon_full_params(root, writeback=writeback):
        yield
