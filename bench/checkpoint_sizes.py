"""Bytes of one training checkpoint by part, and the disk a paper run's checkpoints take, before and after retention
(callbacks/step_checkpoint.py) and leaving frozen pretrained net weights out (modules/checkpoints/frozen_weights.py).

Shapes only: the paper configurations (`experiment=scvideo_webvid256`, `experiment=artv_webvid`) are composed with
Hydra and their VideoDiffusionModule built on the meta device. The parts are those of
`python -m modules.checkpoints.report_size` (the same key classification):
- trainable weights: fp32, 4 bytes per trainable parameter;
- EMA shadows: fp32, 4 bytes per trainable parameter (and the update counter);
- optimizer state: AdamW's two fp32 moments per trainable parameter and a fp32 step per parameter tensor;
- frozen weights: the net's frozen parameters (SCVideo's `trainable: paper` keeps SD 1.4's spatial layers frozen) and
  buffers; the frozen encoders, left out of checkpoints before and after, are not counted;
- other: the module's other buffers (noise schedule, counters); loops, callbacks and the run config (kilobytes) are
  not counted.
Before: every checkpoint holds the frozen net weights, and a step checkpoint every `every_n_train_steps` is kept for
good (`save_top_k: -1`). After: the frozen net parameters are left out (a run with `backbone.pretrained` set, as the
paper runs are), and the step checkpoints are pruned to the experiment's `keep_last` / `keep_every_n_steps`. Disk:
the step checkpoints and last.ckpt at the end of the run; peak: the most at once (a new step checkpoint is written
before an old one is deleted, and last.ckpt is replaced through a temporary copy). A preemption checkpoint adds one.

    python -m bench.checkpoint_sizes              # writes its section of docs/BENCHMARKS.md
    python -m bench.checkpoint_sizes --no-write   # only logs
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from bench.report import (
    BENCHMARKS_MD,
    REPO_ROOT,
    machine_description,
    markdown_table,
    utc_now,
    write_section,
)
from callbacks.step_checkpoint import retained
from modules.checkpoints.report_size import PARTS, format_bytes, state_dict_parts
from modules.training.video_diffusion_module import FROZEN_PREFIXES, VideoDiffusionModule

LOGGER = logging.getLogger("bench.checkpoint_sizes")
SECTION = "checkpoint_sizes"
CONF_DIR = REPO_ROOT / "conf"
EXPERIMENTS = {"SCVideo": "scvideo_webvid256", "ART-V": "artv_webvid"}
FP32_BYTES = 4
ADAMW_MOMENTS = 2  # exp_avg and exp_avg_sq


@dataclass(frozen=True)
class Retention:
    """How often a run writes step checkpoints and which it keeps (conf/callbacks/default.yaml + experiment)."""

    max_steps: int
    every_n_train_steps: int
    keep_last: int | None
    keep_every_n_steps: int | None

    def describe(self) -> str:
        if self.keep_last is None:
            return "all"
        milestones = f" + every {self.keep_every_n_steps:,}" if self.keep_every_n_steps else ""
        return f"newest {self.keep_last}{milestones}"


def files_on_disk(retention: Retention) -> tuple[int, int]:
    """Checkpoints on disk at the end of the run (step checkpoints + last.ckpt) and the most at once during it."""
    written: list[int] = []
    peak = 0
    every = retention.every_n_train_steps
    for step in range(every, retention.max_steps + 1, every):
        written.append(step)
        peak = max(peak, len(written) + 1)  # the new step checkpoint is complete, last.ckpt not yet replaced
        keep = retained(written, retention.keep_last, retention.keep_every_n_steps)
        written = [kept_step for kept_step, kept in zip(written, keep, strict=True) if kept]
        peak = max(peak, len(written) + 2)  # last.ckpt and its replacement, written to a temporary file
    return len(written) + 1, peak


def checkpoint_parts(model: VideoDiffusionModule, leave_out_frozen_net: bool) -> dict[str, int]:
    """Bytes per part (`PARTS`) of one non-FSDP checkpoint of `model` (any device, meta included)."""
    state = model.state_dict()
    parts = state_dict_parts(state)
    parameters = dict(model.named_parameters())
    frozen_net = {key for key, p in parameters.items() if key.startswith("net.") and not p.requires_grad}
    sizes = dict.fromkeys(PARTS, 0)
    for key, tensor in state.items():
        if key.startswith(FROZEN_PREFIXES) or (leave_out_frozen_net and key in frozen_net):
            continue
        sizes[parts[key]] += tensor.numel() * tensor.element_size()
    trainable = [p for _, p in model.net.trainable_named_parameters()]
    sizes["optimizer state"] = sum((ADAMW_MOMENTS * p.numel() + 1) * FP32_BYTES for p in trainable)
    return sizes


@dataclass
class ModelResult:
    """One paper model: checkpoint parts before and after, and its run's retention before and after."""

    name: str
    experiment: str
    before: dict[str, int]
    after: dict[str, int]
    retention_before: Retention
    retention_after: Retention

    def run_bytes(self, after: bool) -> tuple[int, int, int]:
        """(checkpoints at the end, disk at the end, peak disk) in bytes."""
        retention = self.retention_after if after else self.retention_before
        size = sum((self.after if after else self.before).values())
        end, peak = files_on_disk(retention)
        return end, end * size, peak * size


def measure(name: str, experiment: str) -> ModelResult:
    """Compose `experiment=...`, build its module on the meta device, and size its checkpoints."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}"])
    with torch.device("meta"):
        model = instantiate(cfg.model)
    checkpointing = cfg.callbacks.model_checkpoint
    after = Retention(
        int(cfg.trainer.max_steps),
        int(checkpointing.every_n_train_steps),
        checkpointing.keep_last,
        checkpointing.keep_every_n_steps,
    )
    before = Retention(after.max_steps, after.every_n_train_steps, None, None)
    return ModelResult(
        name,
        experiment,
        checkpoint_parts(model, leave_out_frozen_net=False),
        checkpoint_parts(model, leave_out_frozen_net=True),
        before,
        after,
    )


def summary_lines(result: ModelResult) -> list[str]:
    lines = [
        f"{result.name} (experiment={result.experiment}): one checkpoint {format_bytes(sum(result.before.values()))}"
        f" -> {format_bytes(sum(result.after.values()))}"
    ]
    lines += [
        f"  {part:<18} {format_bytes(result.before[part]):>10} -> {format_bytes(result.after[part]):>10}"
        for part in PARTS
    ]
    for label, after in (("before", False), ("after", True)):
        end, disk, peak = result.run_bytes(after)
        retention = result.retention_after if after else result.retention_before
        lines.append(
            f"  {label}: keep {retention.describe()}: {end} checkpoints, {format_bytes(disk)} at the end of "
            f"{retention.max_steps:,} steps, peak {format_bytes(peak)}"
        )
    return lines


def markdown_section(results: Sequence[ModelResult], command: str) -> str:
    parts_header = ["model", "part", "before", "after"]
    parts_rows = [
        [result.name, part, format_bytes(result.before[part]), format_bytes(result.after[part])]
        for result in results
        for part in PARTS
    ]
    parts_rows += [
        [
            f"**{result.name}**",
            "**one checkpoint**",
            f"**{format_bytes(sum(result.before.values()))}**",
            f"**{format_bytes(sum(result.after.values()))}**",
        ]
        for result in results
    ]
    run_header = [
        "model",
        "steps",
        "checkpoint every",
        "setting",
        "step checkpoints kept",
        "checkpoint",
        "files at the end",
        "disk at the end",
        "peak disk",
    ]
    run_rows = []
    for result in results:
        for label, after in (("before", False), ("after", True)):
            retention = result.retention_after if after else result.retention_before
            end, disk, peak = result.run_bytes(after)
            size = sum((result.after if after else result.before).values())
            run_rows.append(
                [
                    result.name,
                    f"{retention.max_steps:,}",
                    f"{retention.every_n_train_steps:,}",
                    label,
                    retention.describe(),
                    format_bytes(size),
                    str(end),
                    format_bytes(disk),
                    format_bytes(peak),
                ]
            )
    return "\n".join(
        [
            "## Checkpoint sizes of the paper runs (bench/checkpoint_sizes.py)",
            "",
            f"- Date: {utc_now()}",
            f"- Machine: {machine_description()} (sizes are shape-only, on the meta device)",
            f"- Command: `{command}`",
            "- Models: the VideoDiffusionModule of `experiment=scvideo_webvid256` and `experiment=artv_webvid`. "
            "Parts as `python -m modules.checkpoints.report_size` counts them: fp32 weights, fp32 EMA shadows, "
            "AdamW's two fp32 moments per trainable parameter; frozen encoders are left out before and after.",
            "- Before: frozen net weights (SCVideo's `trainable: paper`: SD 1.4's spatial layers) in every "
            "checkpoint, every step checkpoint kept. After: frozen net weights left out (rebuilt from "
            "`backbone.pretrained`, fingerprint checked), step checkpoints pruned to `keep_last` plus the "
            "experiment's `keep_every_n_steps` milestones. Files at the end include last.ckpt; the peak adds the "
            "step checkpoint written before an old one is deleted, or last.ckpt's temporary replacement.",
            "",
            *markdown_table(parts_header, parts_rows),
            "",
            *markdown_table(run_header, run_rows),
        ]
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-write", action="store_true", help="only log the results")
    parser.add_argument(
        "--doc", type=Path, default=BENCHMARKS_MD, help="document to update (default: docs/BENCHMARKS.md)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[ModelResult]:
    arguments = sys.argv[1:] if argv is None else argv
    args = parse_args(arguments)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = [measure(name, experiment) for name, experiment in EXPERIMENTS.items()]
    for result in results:
        for line in summary_lines(result):
            LOGGER.info(line)
    if not args.no_write:
        command = " ".join(["python -m bench.checkpoint_sizes", *arguments])
        write_section(args.doc, SECTION, markdown_section(results, command))
        LOGGER.info("wrote the %s section of %s", SECTION, args.doc)
    return results


if __name__ == "__main__":
    main()
