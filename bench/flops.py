"""Multiply-accumulates of one ART-V forward (Φdynamic + Φmask) and of a ModelScope-style 3D UNet, next to
ART-V supplementary Table 2.

Table 2 gives FLOPs (G/batch) for "a batch ... containing 16 frames" at 320 / 448 / 768 px. Its numbers are
conv + linear multiply-accumulates (no attention score matmuls), which is what `conv_linear` counts here; the
full count adds the two attention matmuls (Q K^T and A V) of every attention layer. Everything runs on the meta
device (shapes only, no memory, no weights), so the figures do not depend on the machine.

- ART-V: the network of `experiment=artv_webvid` (conf/model/artv.yaml, backbone=sd21, anchor blocks on), 16
  frames as a batch of 16 single-frame forwards (x_t [16, 4, h, w], text [16, 77, 1024], reference
  [16, 12, h, w], anchor [16, 4, h, w]), adapters included; h = w = resolution / 8.
- ModelScope: diffusers' `UNet3DConditionModel` with ModelScope's configuration (block_out_channels (320, 640,
  1280, 1280), cross_attention_dim 1024, attention_head_dim 64, layers_per_block 2), sample [1, 4, 16, h, w].

    python -m bench.flops                 # prints the table and writes its section of docs/BENCHMARKS.md
    python -m bench.flops --no-write
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from bench.report import machine_description, write_section
from modules.blocks.attention import Attention

LOGGER = logging.getLogger("bench.flops")
REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
BENCHMARKS_MD = REPO_ROOT / "docs" / "BENCHMARKS.md"
SECTION = "bench_flops"
RESOLUTIONS = (320, 448, 768)
NUM_FRAMES = 16  # Table 2: "A batch is a video containing 16 frames"
TEXT_TOKENS = 77
TEXT_DIM = 1024
LATENT_FACTOR = 8
# ART-V supplementary Table 2, Inference, FLOPs (G/batch).
TABLE2_GFLOPS = {
    "ART-V": {320: 3163.20, 448: 6162.88, 768: 18036.96},
    "ModelScope": {320: 3689.72, 448: 7201.22, 768: 21100.92},
}
# ModelScope text-to-video's UNet configuration (the baseline of Table 2), in diffusers' argument names.
MODELSCOPE_UNET = {
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    "attention_head_dim": 64,
    "norm_num_groups": 32,
}


@dataclass
class MacCount:
    """Multiply-accumulates: `conv_linear` (every Conv1d/2d/3d and Linear, biases not counted) and `attention`
    (Q K^T and A V of every attention layer)."""

    conv_linear: int = 0
    attention: int = 0

    @property
    def total(self) -> int:
        return self.conv_linear + self.attention


def _conv_macs(module: nn.Module, output: Tensor) -> int:
    # every output element: in_channels / groups * prod(kernel) multiply-accumulates
    return output.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)


def _attention_macs(batch: int, query_len: int, key_len: int, inner_dim: int) -> int:
    # Q K^T: batch * heads * Lq * Lk * head_dim, and the same for A V; heads * head_dim = inner_dim
    return 2 * batch * query_len * key_len * inner_dim


def _positional_or_keyword(args: tuple, kwargs: dict, index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _our_attention_macs(module: Attention, args: tuple, kwargs: dict) -> int:
    """`modules.blocks.attention.Attention(x [N, Lq, C], context [N, Lk, D] | None)`."""
    x = args[0]
    context = _positional_or_keyword(args, kwargs, 1, "context")
    key_len = x.shape[1] if context is None else context.shape[1]
    return _attention_macs(x.shape[0], x.shape[1], key_len, module.num_heads * module.head_dim)


def _diffusers_attention_macs(module: nn.Module, args: tuple, kwargs: dict) -> int:
    """diffusers `Attention(hidden_states [N, L, C] or [N, C, H, W], encoder_hidden_states [N, Lk, D] | None)`."""
    hidden = _positional_or_keyword(args, kwargs, 0, "hidden_states")
    context = _positional_or_keyword(args, kwargs, 1, "encoder_hidden_states")
    query_len = hidden.shape[1] if hidden.ndim == 3 else math.prod(hidden.shape[2:])
    key_len = query_len if context is None else context.shape[1]
    return _attention_macs(hidden.shape[0], query_len, key_len, module.inner_dim)


def _attention_counters() -> list[tuple[type, Callable[[nn.Module, tuple, dict], int]]]:
    counters: list[tuple[type, Callable[[nn.Module, tuple, dict], int]]] = [(Attention, _our_attention_macs)]
    try:
        from diffusers.models.attention_processor import Attention as DiffusersAttention
    except ImportError:
        return counters
    return [*counters, (DiffusersAttention, _diffusers_attention_macs)]


@contextmanager
def counting_macs(model: nn.Module) -> Iterator[MacCount]:
    """Count the multiply-accumulates of every forward of `model` inside the `with` block (forward hooks on
    convs, linears and attention layers; works on the meta device)."""
    count = MacCount()
    attention_counters = _attention_counters()
    handles = []

    def on_conv(module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        count.conv_linear += _conv_macs(module, output)

    def on_linear(module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        count.conv_linear += output.numel() * module.in_features

    def on_attention(counter: Callable[[nn.Module, tuple, dict], int]) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, _output: Any) -> None:
            count.attention += counter(module, args, kwargs)

        return hook

    for module in model.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            handles.append(module.register_forward_hook(on_conv))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(on_linear))
        else:
            for kind, counter in attention_counters:
                if isinstance(module, kind):
                    handles.append(module.register_forward_hook(on_attention(counter), with_kwargs=True))
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()


def build_artv_net(
    anchor_attention: bool = True, overrides: Sequence[str] = (), device: str | torch.device = "meta"
) -> nn.Module:
    """The ART-V denoiser of the paper configuration (`experiment=artv_webvid`: conf/model/artv.yaml with
    backbone=sd21), on the meta device unless `device` says otherwise; `overrides` are further Hydra overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    overrides = ["experiment=artv_webvid", "model.net.pretrained=null", *overrides]
    overrides.append(f"model.net.anchor_attention={str(anchor_attention).lower()}")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="train", overrides=overrides)
    with torch.device(device):
        return instantiate(cfg.model.net)


def artv_macs(net: nn.Module, resolution: int, num_frames: int = NUM_FRAMES) -> MacCount:
    """One Φdynamic + Φmask forward for `num_frames` frames at `resolution` px (meta tensors)."""
    size = resolution // LATENT_FACTOR
    channels = net.latent_channels
    with torch.device("meta"):
        x_t = torch.empty(num_frames, channels, size, size)
        t = torch.zeros(num_frames, dtype=torch.int64)
        cond = {
            "text": torch.empty(num_frames, TEXT_TOKENS, TEXT_DIM),
            "reference": torch.empty(num_frames, 3 * channels, size, size),
            "anchor": torch.empty(num_frames, channels, size, size),
        }
        with torch.no_grad(), counting_macs(net) as count:
            net(x_t, t, cond)
    return count


def build_modelscope_unet(
    config: dict[str, Any] | None = None, device: str | torch.device = "meta"
) -> nn.Module:
    """diffusers' UNet3DConditionModel with ModelScope's configuration (or `config`), on the meta device unless
    `device` says otherwise."""
    try:
        from diffusers import UNet3DConditionModel
    except ImportError as error:
        raise ImportError(
            "bench.flops needs diffusers for the ModelScope baseline: pip install -e '.[dev]'"
        ) from error
    with torch.device(device):
        return UNet3DConditionModel(**(MODELSCOPE_UNET if config is None else config))


def modelscope_macs(unet: nn.Module, resolution: int, num_frames: int = NUM_FRAMES) -> MacCount:
    """One forward of a `[1, 4, num_frames, h, w]` video at `resolution` px (meta tensors)."""
    size = resolution // LATENT_FACTOR
    with torch.device("meta"):
        sample = torch.empty(1, MODELSCOPE_UNET["in_channels"], num_frames, size, size)
        text = torch.empty(1, TEXT_TOKENS, TEXT_DIM)
        with torch.no_grad(), counting_macs(unet) as count:
            unet(sample, torch.zeros(1, dtype=torch.int64), text)
    return count


@dataclass
class Row:
    """One measured configuration next to its Table 2 figure."""

    method: str
    resolution: int
    count: MacCount

    @property
    def paper(self) -> float:
        return TABLE2_GFLOPS[self.method][self.resolution]

    @property
    def deviation_percent(self) -> float:
        return 100.0 * (self.count.conv_linear / 1e9 - self.paper) / self.paper


def measure(resolutions: tuple[int, ...]) -> list[Row]:
    artv = build_artv_net()
    modelscope = build_modelscope_unet()
    rows = []
    for resolution in resolutions:
        rows.append(Row("ART-V", resolution, artv_macs(artv, resolution)))
        rows.append(Row("ModelScope", resolution, modelscope_macs(modelscope, resolution)))
    return rows


def summary_line(row: Row) -> str:
    return (
        f"{row.method:>10} {row.resolution} px: conv+linear {row.count.conv_linear / 1e9:9.2f} G "
        f"(Table 2: {row.paper:9.2f} G, {row.deviation_percent:+.3f} %), with attention "
        f"{row.count.total / 1e9:9.2f} G"
    )


def markdown_section(rows: list[Row], command: str) -> str:
    table = [
        "| method | resolution | conv + linear MACs (G) | Table 2 FLOPs (G) | deviation | + attention matmuls (G) |",
        "|---|---|---|---|---|---|",
    ]
    table += [
        f"| {row.method} | {row.resolution} | {row.count.conv_linear / 1e9:.2f} | {row.paper:.2f} | "
        f"{row.deviation_percent:+.3f} % | {row.count.total / 1e9:.2f} |"
        for row in rows
    ]
    return "\n".join(
        [
            "## Multiply-accumulates per 16-frame batch vs ART-V Table 2 (bench/flops.py)",
            "",
            f"- Date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- Machine: {machine_description(torch.get_num_threads())} (counts are shape-only, on the meta device)",
            f"- Command: `{command}`",
            "- ART-V: one Φdynamic + Φmask forward on 16 frames (adapters and anchor blocks included, "
            "`experiment=artv_webvid`); ModelScope: diffusers UNet3DConditionModel with ModelScope's configuration "
            "on a 4 x 16 x h x w sample. h = w = resolution / 8.",
            "- Conv + linear = multiply-accumulates of every Conv1d/2d/3d and Linear layer (biases not counted), "
            "the quantity Table 2 reports as FLOPs; the last column adds the attention score and value matmuls.",
            "",
            *table,
        ]
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolutions", type=int, nargs="+", default=list(RESOLUTIONS), choices=RESOLUTIONS)
    parser.add_argument("--no-write", action="store_true", help="do not update docs/BENCHMARKS.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = measure(tuple(args.resolutions))
    for row in rows:
        LOGGER.info(summary_line(row))
    if not args.no_write:
        command = ("python -m bench.flops " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
        write_section(BENCHMARKS_MD, SECTION, markdown_section(rows, command))
        LOGGER.info("wrote the %s section of %s", SECTION, BENCHMARKS_MD)


if __name__ == "__main__":
    main()
