"""Which directory a training run writes to, and which earlier run `ckpt_path=auto` continues.

The run directory is `<paths.log_dir>/<task_name>/runs/<run id>` (conf/hydra/default.yaml), where the run id is,
first that applies:
1. `run_name=...`: a name the user chooses; the same name is the same run.
2. A scheduler's job id, the same for every process of the job and across SLURM requeues: `slurm-<job>` (array
   jobs `slurm-<job>_<task>`), `torchrun-<rdzv id>`.
3. A timestamp `YYYY-MM-DD_HH-MM-SS` (Lightning's own launcher hands rank 0's directory to the other ranks).
Under torchrun without `--rdzv-id` (or `--standalone`) each process would pick its own timestamp, so a run name is
required there.

`ckpt_path=auto` resumes the newest complete checkpoint of the same run: the run directory's own checkpoints, or,
when no `run_name` was given, those of earlier runs in the same `runs/` folder that were launched with the same
command-line overrides (`.hydra/overrides.yaml`), ignoring the keys a relaunch may change (`RELAUNCH_KEYS`). The run
then continues in that earlier directory (checkpoints and logs in one place). When nothing is found, a new run
starts and the directories searched are logged. Every process of a job searches the same files and so resolves the
same directory and checkpoint.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from modules.runtime.checkpoint_discovery import newest_complete_checkpoint, resolve_resume_path, written_at

log = logging.getLogger(__name__)

# overrides a relaunch may add or change and still be the same run: the resume itself and how long it trains
RELAUNCH_KEYS = ("ckpt_path", "run_name", "trainer.max_steps", "trainer.max_time", "trainer.max_epochs")


def run_id(run_name: str | None = None) -> str:
    """The run directory's name (see the module docstring); the `run_id` resolver of conf/hydra/default.yaml."""
    if run_name:
        name = str(run_name)
        if "/" in name or name in (".", ".."):
            raise ValueError(f"run_name={name!r} must be a plain directory name <run_name>")
        return name
    environ = os.environ
    if environ.get("SLURM_ARRAY_JOB_ID"):
        return f"slurm-{environ['SLURM_ARRAY_JOB_ID']}_{environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    if environ.get("SLURM_JOB_ID"):
        return f"slurm-{environ['SLURM_JOB_ID']}"
    torchrun_id = environ.get("TORCHELASTIC_RUN_ID")
    if torchrun_id and torchrun_id != "none":
        return f"torchrun-{torchrun_id}"
    if torchrun_id == "none":
        raise ValueError(
            "torchrun without --rdzv-id: every process would name its own run directory; pass run_name=<name> "
            "(the same on every node) <run_name>"
        )
    return datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def register_resolvers() -> None:
    """Register `${run_id:...}` (idempotent); the entry points call it before Hydra composes."""
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", run_id, use_cache=True)


def parse_overrides(overrides: Sequence[str]) -> dict[str, str]:
    """`["+a.b=1", "c=x"]` -> `{"a.b": "1", "c": "x"}` (Hydra's `+`, `++` and `~` prefixes dropped)."""
    parsed = {}
    for override in overrides:
        key, _, value = str(override).partition("=")
        parsed[key.lstrip("+~")] = value
    return parsed


def same_run(recorded: Sequence[str], current: Sequence[str]) -> bool:
    """Whether two launches' command-line overrides describe the same run (`RELAUNCH_KEYS` aside)."""

    def identity(overrides: Sequence[str]) -> dict[str, str]:
        return {k: v for k, v in parse_overrides(overrides).items() if k not in RELAUNCH_KEYS}

    return identity(recorded) == identity(current)


def recorded_overrides(run_dir: Path) -> list[str] | None:
    """The overrides Hydra recorded for the run in `run_dir`, or None if it recorded none."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    return list(yaml.safe_load(path.read_text()) or [])


@dataclass(frozen=True)
class ResumePlan:
    """Where the run writes (`output_dir`) and the checkpoint it starts from (`ckpt_path`, None = fresh)."""

    output_dir: Path
    ckpt_path: str | None


def plan_resume(
    ckpt_path: str | None, output_dir: str | Path, overrides: Sequence[str], named: bool
) -> ResumePlan:
    """Resolve `ckpt_path` (None, "auto" or a path) for a run in `output_dir` launched with `overrides`.

    named: whether the run directory was named by `run_name` (then only that directory is the run)."""
    output_dir = Path(output_dir).resolve()
    if ckpt_path != "auto":
        return ResumePlan(output_dir, resolve_resume_path(ckpt_path, output_dir / "checkpoints"))
    found = newest_complete_checkpoint(output_dir / "checkpoints")
    if found is not None:
        log.info("resuming from %s <ckpt_path=auto>", found)
        return ResumePlan(output_dir, str(found))
    searched = [output_dir / "checkpoints"]
    candidates: list[tuple[float, Path, Path]] = []
    if not named and output_dir.parent.is_dir():
        for run_dir in sorted(path.resolve() for path in output_dir.parent.iterdir() if path.is_dir()):
            recorded = recorded_overrides(run_dir)
            if run_dir == output_dir or recorded is None or not same_run(recorded, overrides):
                continue
            searched.append(run_dir / "checkpoints")
            checkpoint = newest_complete_checkpoint(run_dir / "checkpoints")
            if checkpoint is not None:
                candidates.append((written_at(checkpoint), run_dir, checkpoint))
    if not candidates:
        log.info(
            "no checkpoint of this run in %s: starting a new run <ckpt_path=auto>",
            ", ".join(str(path) for path in searched),
        )
        return ResumePlan(output_dir, None)
    _, run_dir, checkpoint = max(candidates, key=lambda item: (item[0], str(item[2])))
    log.info("resuming from %s, continuing in %s <ckpt_path=auto>", checkpoint, run_dir)
    return ResumePlan(run_dir, str(checkpoint))
