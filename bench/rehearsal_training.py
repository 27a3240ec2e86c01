"""The training half of the GPU rehearsal (bench/gpu_rehearsal.py): optimizer steps of one paper experiment through
the real `VideoDiffusionModule`, with step time, peak memory and model-FLOP utilisation (MFU).

One step is bench/training_step.py's `training_step` (loss of a synthetic batch through the frozen first stage and
text encoder, backward, AdamW step, EMA update) under the experiment's `trainer.precision` (bf16-mixed = bf16
autocast, as `trainer=a100x4` runs it), gradient checkpointing as the config sets it (`backbone.unet.use_checkpoint`).
Model FLOPs of a step are counted by `torch.utils.flop_counter` on a meta-device copy of the same module (shapes only,
gradient checkpointing off, so the recomputation is not counted); with checkpointing on, a second count gives the
FLOPs the device actually executes. With random weights, all-zero parameters (ldm's zero-initialised output layers)
get N(0, 0.02^2) values so that gradients reach every trainable layer, as from pretrained weights; AdamW runs at the
configured LR (the warm-up schedule is not stepped).

Reduced mode (`RehearsalCase.reduced`, the CPU rehearsal) runs the same code on the paper architectures at 1/8 width:
every UNet, VAE and text-tower width divided by 8 (GroupNorm groups 32 -> 4, so each group keeps SD's channels per
group; head counts and depths kept), 4 frames at 64 px, batch 2.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

import open_clip
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from bench.inference_table2 import group_norm_groups
from bench.report import peak_rss_bytes, reset_peak_rss
from bench.training_step import compose_train_config, synthetic_batch, training_step
from modules.blocks import normalization
from modules.training.video_diffusion_module import VideoDiffusionModule

PAPER_EXPERIMENTS = ("scvideo_webvid256", "artv_webvid")
REDUCED_WIDTH_DIVISOR = 8
REDUCED_FRAMES = 4
REDUCED_RESOLUTION = 64
REDUCED_BATCH = 2
PARAMETER_SAMPLE = 16  # first values of every trainable tensor compared before / after the steps
# Dense bf16 tensor-core peaks (NVIDIA datasheets, without sparsity), matched against torch.cuda.get_device_name in
# this order (the first name contained in the device's wins).
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),  # SXM and PCIe
)


@dataclasses.dataclass(frozen=True)
class RehearsalCase:
    """One experiment's training steps; JSON-serialisable so that it can run in a child process.

    precision: "bf16-mixed" | "fp32", or None for the experiment's `trainer.precision`; warmup / steps: untimed and
    timed optimizer steps after the batch-size probe; reduced: 1/8 width, 4 frames, 64 px, batch 2; pretrained: an
    SD file for `backbone.pretrained` (None: random weights).
    """

    experiment: str
    device: str
    precision: str | None
    warmup: int
    steps: int
    reduced: bool
    threads: int
    pretrained: str | None = None


def stated_peak_flops(device_name: str) -> float | None:
    """The datasheet dense bf16 FLOP/s of a GPU named `device_name` (torch.cuda.get_device_name), None if unknown."""
    return next((peak for name, peak in PEAK_BF16_FLOPS if name in device_name), None)


def _divided(value: int, what: str) -> int:
    if value % REDUCED_WIDTH_DIVISOR:
        raise ValueError(
            f"{what} = {value} is not divisible by the reduced width divisor {REDUCED_WIDTH_DIVISOR}"
        )
    return value // REDUCED_WIDTH_DIVISOR


def _hydra_value(value: Any) -> str:
    """A Python int / bool / str / dict as a Hydra override value (`{a:1,b:{c:true}}`)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{key}:{_hydra_value(item)}" for key, item in value.items()) + "}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def reduced_overrides(cfg: DictConfig) -> list[str]:
    """Hydra overrides turning the composed paper config `cfg` into its reduced rehearsal: widths of Φdynamic / the
    SCVideo UNet, Φmask (when the model has one), the VAE and the text tower divided by 8, clips of 4 frames at 64 px,
    batch 2. Head counts and depths stay the paper's."""
    unet = cfg.backbone.unet
    tower = open_clip.get_model_config(cfg.text_encoder.arch)
    if tower is None:
        raise ValueError(f"text_encoder.arch={cfg.text_encoder.arch!r} is not an open_clip model name")
    text_cfg = {**tower["text_cfg"], "width": _divided(tower["text_cfg"]["width"], "text width")}
    arch = {"embed_dim": _divided(tower["embed_dim"], "text embed_dim"), "text_cfg": text_cfg}
    overrides = [
        f"data.num_frames={REDUCED_FRAMES}",
        f"data.batch_size={REDUCED_BATCH}",
        f"resolution.height={REDUCED_RESOLUTION}",
        f"resolution.width={REDUCED_RESOLUTION}",
        f"backbone.unet.model_channels={_divided(unet.model_channels, 'UNet channels')}",
        f"backbone.unet.context_dim={_divided(unet.context_dim, 'context_dim')}",
        f"backbone.first_stage.ch={_divided(cfg.backbone.first_stage.ch, 'VAE channels')}",
        f"text_encoder.arch={_hydra_value(arch)}",
    ]
    if unet.num_head_channels > 0:
        overrides.append(f"backbone.unet.num_head_channels={_divided(unet.num_head_channels, 'head width')}")
    mask_unet = OmegaConf.select(cfg, "model.net.mask_unet")
    if mask_unet is not None:
        overrides += [
            f"model.net.mask_unet.model_channels={_divided(mask_unet.model_channels, 'Φmask channels')}",
            f"model.net.mask_unet.num_head_channels={_divided(mask_unet.num_head_channels, 'Φmask head width')}",
        ]
    return overrides


def case_overrides(case: RehearsalCase) -> list[str]:
    """The Hydra overrides of `case`: its experiment under `trainer=a100x4`, the weights, and the reduction."""
    overrides = [
        f"experiment={case.experiment}",
        "trainer=a100x4",
        f"backbone.pretrained={case.pretrained or 'null'}",
    ]
    if case.reduced:
        overrides += reduced_overrides(compose_train_config(overrides))
    return overrides


def build_module(cfg: DictConfig, device: torch.device | str, reduced: bool) -> VideoDiffusionModule:
    """`instantiate(cfg.model)` with its parameters created on `device` (meta: shapes only); GroupNorms with
    32 / 8 = 4 groups when `reduced`."""
    groups = normalization.NUM_GROUPS // (REDUCED_WIDTH_DIVISOR if reduced else 1)
    with group_norm_groups(groups), torch.device(device):
        module: VideoDiffusionModule = instantiate(cfg.model)
    return module.to(device)  # also sets the LightningModule's `device`


def with_batch_size(cfg: DictConfig, batch_size: int) -> DictConfig:
    """A copy of `cfg` with `data.batch_size` replaced."""
    resized = copy.deepcopy(cfg)
    resized.data.batch_size = batch_size
    return resized


def count_step_flops(cfg: DictConfig, reduced: bool, checkpointing: bool) -> dict[str, int]:
    """FLOPs of one loss + backward of `cfg`'s module on its batch (torch.utils.flop_counter on the meta device:
    matmuls, convolutions and attention; random weights, `backbone.unet.use_checkpoint=checkpointing`). `net` is the
    denoiser's share, the rest the frozen first stage and text encoder. The optimizer step is not counted; the random
    draws of the step (frames, timesteps, dropout) are seeded, so counts of the same config are comparable."""
    meta_cfg = copy.deepcopy(cfg)
    meta_cfg.backbone.pretrained = None
    meta_cfg.backbone.unet.use_checkpoint = checkpointing
    module = build_module(meta_cfg, "meta", reduced).train()
    # the same seed for every count: ART-V encodes the distinct frames of its random picks, so they change the count
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        torch.manual_seed(0)
        module.diffusion_loss(synthetic_batch(meta_cfg, torch.device("meta"))).backward()
    net = counter.get_flop_counts().get(type(module.net).__name__, {})
    return {"total": counter.get_total_flops(), "net": sum(net.values())}


def largest_fitting_batch(fits: Callable[[int], bool], requested: int) -> int:
    """The largest micro-batch `b <= requested` with `fits(b)`: `requested` itself, else halving until one fits, then
    bisecting between it and the smallest that did not."""
    if fits(requested):
        return requested
    too_large, candidate = requested, requested // 2
    while candidate >= 1 and not fits(candidate):
        too_large, candidate = candidate, candidate // 2
    if candidate < 1:
        raise RuntimeError("not even a micro-batch of 1 fits in the device's memory")
    while too_large - candidate > 1:
        middle = (candidate + too_large) // 2
        candidate, too_large = (middle, too_large) if fits(middle) else (candidate, middle)
    return candidate


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free_cached_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def randomize_zero_parameters(module: torch.nn.Module, std: float = 0.02) -> int:
    """Give every all-zero parameter of `module` N(0, std^2) values and return how many there were.

    ldm zero-initialises output layers (the UNet's `out` conv, every transformer's `proj_out`, SCVideo's temporal
    convs); pretrained SD weights make the first two non-zero. With random weights and SCVideo's `trainable: paper`
    the frozen zero `out` conv would stop every gradient, so a rehearsal without weights fills them in.
    """
    zero = [p for p in module.parameters() if not p.is_meta and not p.detach().any()]
    with torch.no_grad():
        for parameter in zero:
            parameter.normal_(0.0, std)
    return len(zero)


def _optimizer_at_base_lr(module: VideoDiffusionModule) -> torch.optim.Optimizer:
    """The module's optimizer at its configured LR, as after the warm-up (the LR scheduler, which would start it
    at LR / warmup_steps, is not stepped in a rehearsal)."""
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    for group in optimizer.param_groups:
        group["lr"] = group.get("initial_lr", group["lr"])
    return optimizer


def _parameter_samples(module: VideoDiffusionModule) -> list[torch.Tensor]:
    return [
        p.detach().flatten()[:PARAMETER_SAMPLE].clone() for _, p in module.net.trainable_named_parameters()
    ]


def run_rehearsal_case(case: RehearsalCase) -> dict[str, Any]:
    """Build the case's module on its device, probe the largest micro-batch up to the config's that fits (one step
    per probe; peak-memory records restart after the probes), run `warmup` + `steps` steps and count the model FLOPs.
    Memory: `torch.cuda.max_memory_allocated` on a GPU, else the growth of peak RSS from just before the build."""
    if case.steps < 1:
        raise ValueError(f"a rehearsal needs at least one timed step, got steps={case.steps}")
    torch.set_num_threads(case.threads)
    torch.manual_seed(0)
    device = torch.device(case.device)
    cfg = compose_train_config(case_overrides(case))
    precision = case.precision or cfg.trainer.precision
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(cfg.trainer.benchmark)  # as the trainer sets it
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = reset_peak_rss()
    module = build_module(cfg, device, case.reduced).train()
    filled = randomize_zero_parameters(module.net) if case.pretrained is None else 0
    optimizer = _optimizer_at_base_lr(module)
    before = _parameter_samples(module)

    def fits(batch_size: int) -> bool:
        try:
            training_step(
                module, optimizer, synthetic_batch(with_batch_size(cfg, batch_size), device), precision
            )
            _synchronize(device)
        except torch.cuda.OutOfMemoryError:
            fitted = False
        else:
            fitted = True
        optimizer.zero_grad(set_to_none=True)
        _free_cached_memory(device)
        return fitted

    batch_size = largest_fitting_batch(fits, cfg.data.batch_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(
            device
        )  # the probes that ran out of memory are not the step's peak
    reset_peak_rss()
    batch = synthetic_batch(with_batch_size(cfg, batch_size), device)
    for _ in range(case.warmup):
        training_step(module, optimizer, batch, precision)
    _synchronize(device)
    times = []
    for _ in range(case.steps):
        start = time.perf_counter()
        loss = training_step(module, optimizer, batch, precision)
        _synchronize(device)
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        memory, memory_kind = torch.cuda.max_memory_allocated(device), "max_memory_allocated"
    else:
        memory, memory_kind = peak_rss_bytes() - rss_before, "peak RSS growth"
    after = _parameter_samples(module)
    checkpointing = bool(cfg.backbone.unet.use_checkpoint)
    model_flops = count_step_flops(with_batch_size(cfg, batch_size), case.reduced, checkpointing=False)
    executed = (
        count_step_flops(with_batch_size(cfg, batch_size), case.reduced, True)
        if checkpointing
        else model_flops
    )
    median = statistics.median(times)
    return {
        **dataclasses.asdict(case),
        "precision": precision,
        "denoiser": type(module.net).__name__,
        "clip": f"{cfg.data.num_frames}x{cfg.resolution.height}x{cfg.resolution.width}",
        "requested_batch_size": cfg.data.batch_size,
        "batch_size": batch_size,
        "gradient_checkpointing": checkpointing,
        "trainable_parameters": sum(p.numel() for _, p in module.net.trainable_named_parameters()),
        "parameters": sum(p.numel() for p in module.parameters()),
        "loss": float(loss),
        "times_s": times,
        "median_s": median,
        "clips_per_s": batch_size / median,
        "memory_bytes": memory,
        "memory_kind": memory_kind,
        "changed_parameter_tensors": sum(not torch.equal(b, a) for b, a in zip(before, after, strict=True)),
        "trainable_parameter_tensors": len(before),
        "randomized_zero_tensors": filled,
        "learning_rate": optimizer.param_groups[0]["lr"],
        "ema_updates": int(module.ema.num_updates) if module.ema is not None else 0,
        "model_flops": model_flops["total"],
        "net_flops": model_flops["net"],
        "executed_flops": executed["total"],
        "achieved_flops_per_s": model_flops["total"] / median,
    }
