"""Fully Sharded Data Parallel for the video UNets: Lightning's `FSDPStrategy` built from YAML, and full
parameters for the EMA.

`fsdp_strategy` turns dotted class paths from `conf/trainer/a100x4_fsdp.yaml` into the sets of module classes
Lightning's strategy wants: FSDP units (`auto_wrap_policy`) and activation-checkpointed blocks
(`activation_checkpointing_policy`). A class matches its subclasses too (`isinstance`).

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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from hydra.utils import get_class
from lightning.pytorch.strategies import FSDPStrategy, Strategy
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision

# name parts FSDP and activation checkpointing insert into the names of the modules they wrap
WRAPPER_NAME_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


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


class ReplicatedSubmodulesFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, except that the LightningModule's submodules named in `replicated_submodules`
    are kept out of FSDP (`ignored_states`): whole on every rank and moved to the device here, as FSDP moves only
    what it manages."""

    def __init__(self, replicated_submodules: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replicated_submodules = list(replicated_submodules)

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self.replicated_submodules:
            replicated = [_submodule(model, name) for name in self.replicated_submodules]
            for module in replicated:
                module.to(self.root_device)
            self.kwargs["ignored_states"] = replicated
        return super()._setup_model(model)


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
        param_dtype, reduce_dtype, buffer_dtype: FSDP mixed precision (torch dtype names; all None = none):
            compute in `param_dtype`, reduce gradients in `reduce_dtype`, keep buffers (EMA shadows, the noise
            schedule) in `buffer_dtype`. The fp32 master weights stay sharded.
        strategy_kwargs: the other FSDPStrategy / FullyShardedDataParallel arguments (`sharding_strategy`,
            `state_dict_type`, `use_orig_params`, `limit_all_gathers`, ...).
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
        **strategy_kwargs,
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


@contextmanager
def full_parameters(strategy: Strategy | None) -> Iterator[None]:
    """Inside this block the parameters of an FSDP-trained model are whole on every rank (read only: changes are
    not written back); with any other strategy it does nothing. Every rank must enter it (it all-gathers)."""
    if isinstance(strategy, FSDPStrategy) and isinstance(strategy.model, FullyShardedDataParallel):
        with FullyShardedDataParallel.summon_full_params(strategy.model, writeback=False):
            yield
    else:
        yield
