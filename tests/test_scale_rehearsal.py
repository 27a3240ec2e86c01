"""Scale rehearsals through `train.py` in real processes: a sweep over both models, gradient accumulation with a
non-finite micro-batch on 2 DDP ranks, and a preempted run relaunched with the same command.

FSDP through the Trainer is rehearsed in tests/test_distributed_fsdp.py (`trainer=fsdp_cpu`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from tests.helpers.train_runs import (
    assert_same_tensors,
    load_checkpoint,
    read_records,
    recorder_overrides,
    run_command,
    toy_data_dir,
    train_command,
)

PROBES = "tests.helpers.probes"


def test_card_sweep_over_both_models_trains(tmp_path, tmp_path_factory):
    """`python train.py -m model=scvideo,artv debug=fdr`: one fast_dev_run per model in one sweep."""
    sweep = tmp_path / "sweep"
    command = train_command(
        ["model=scvideo,artv", "debug=fdr", f"hydra.sweep.dir={sweep}"],
        toy_data_dir(tmp_path_factory),
        tmp_path / "logs",
    )
    command.insert(2, "-m")  # Hydra's flag goes before the overrides
    result = run_command(command, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for job, net in ((0, "SCVideoDenoiser"), (1, "ARTVDenoiser")):
        config = (sweep / str(job) / ".hydra" / "config.yaml").read_text()
        assert net in config
        log = (sweep / str(job) / "train.log").read_text()
        assert re.search(r"final metrics: \{.*'train/loss': [0-9.]+", log), log[-2000:]


# 2 ranks x 6 micro-batches of 2 per epoch; 3 micro-batches per optimizer step, 2 steps
ACCUMULATION = [
    "trainer=ddp_cpu",
    "trainer.accumulate_grad_batches=3",
    "trainer.max_steps=2",
    "data.samples_per_epoch=24",
    "trainer.limit_val_batches=0",
    "callbacks.model_checkpoint.every_n_train_steps=0",
]


def _probe_overrides(directory: Path) -> list[str]:
    return [
        f"+callbacks.nonfinite._target_={PROBES}.NonFiniteBatch",
        "+callbacks.nonfinite.rank=1",
        "+callbacks.nonfinite.batch_index=0",
        f"+callbacks.state._target_={PROBES}.RankStateProbe",
        f"+callbacks.state.directory={directory}",
    ]


def test_nan_in_the_first_micro_batch_of_one_rank_skips_the_step_on_both(tmp_path, tmp_path_factory):
    """NaN in micro-batch 1 of 3 on rank 1 only: both ranks skip optimizer step 1 (weights and EMA unchanged, one
    skip counted), step 2 trains, and weights and EMA stay finite and bitwise equal on the two ranks, with DDP not
    broadcasting buffers (the EMA shadows) from rank 0."""
    states = tmp_path / "states"
    command = train_command(
        [*ACCUMULATION, *_probe_overrides(states), f"hydra.run.dir={tmp_path / 'run'}"],
        toy_data_dir(tmp_path_factory),
        tmp_path / "logs",
    )
    result = run_command(command, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "non-finite loss at step 0: skipping the optimizer step (1 in a row" in log, log[-3000:]

    for rank in (0, 1):
        info = json.loads((states / f"rank{rank}.json").read_text())
        assert info == {"broadcast_buffers": False, "world": 2}
    state = {
        (rank, step): torch.load(states / f"rank{rank}_step{step}.pt")
        for rank in (0, 1)
        for step in (0, 1, 2)
    }
    for rank in (0, 1):
        start, skipped, trained = state[rank, 0], state[rank, 1], state[rank, 2]
        assert torch.equal(skipped["weights"], start["weights"]) and torch.equal(skipped["ema"], start["ema"])
        assert skipped["skipped"] == trained["skipped"] == 1
        assert not torch.equal(trained["weights"], start["weights"])
        assert not torch.equal(trained["ema"], start["ema"])
        assert torch.isfinite(trained["weights"]).all() and torch.isfinite(trained["ema"]).all()
    for step in (0, 1, 2):
        assert_same_tensors(state[1, step], state[0, step], f"rank 1 vs rank 0 at step {step}")


def _checkpoints(log_dir: Path) -> list[Path]:
    return sorted(log_dir.glob("train/runs/*/checkpoints/*.ckpt"))


def test_preempted_run_relaunched_with_the_same_command_continues_bitwise(tmp_path, tmp_path_factory):
    """SIGTERM at step 3 -> preempted.ckpt -> the same command again (ckpt_path=auto, no run name) -> steps 4-6 in
    the first run's directory, ending bitwise equal to an uninterrupted run of the same command."""
    data_dir = toy_data_dir(tmp_path_factory)
    same_command = [
        "trainer.max_steps=6",
        "model.lr_scheduler.total_steps=6",
        "callbacks.model_checkpoint.every_n_train_steps=100",
        "trainer.limit_val_batches=0",
        "ckpt_path=auto",
        f"+callbacks.preempt._target_={PROBES}.SignalOnce",
        "+callbacks.preempt.step=3",
    ]
    reference_logs, logs = tmp_path / "reference", tmp_path / "logs"
    reference_records = tmp_path / "reference_records"
    reference_command = [*same_command, "~callbacks.preempt", *recorder_overrides(reference_records)]
    reference = run_command(train_command(reference_command, data_dir, reference_logs), timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]

    records = tmp_path / "records"
    command = train_command([*same_command, *recorder_overrides(records)], data_dir, logs)
    first = run_command(command, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    output = first.stdout + first.stderr
    assert "SIGTERM: saved" in output and "at step 3 and stopping" in output
    assert "starting a new run <ckpt_path=auto>" in output
    (run_dir,) = (logs / "train" / "runs").iterdir()
    assert load_checkpoint(run_dir / "checkpoints" / "preempted.ckpt")["global_step"] == 3

    second = run_command(command, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"continuing in {run_dir} <ckpt_path=auto>" in second.stdout + second.stderr
    starts = [r["step"] for r in read_records(records) if r["event"] == "start"]
    assert starts == [0, 3]
    # the same samples, timesteps and noise (the same losses) as the uninterrupted run, step by step
    batches = [(r["step"], r["keys"], r["loss"]) for r in read_records(records) if r["event"] == "batch"]
    expected_batches = [
        (r["step"], r["keys"], r["loss"]) for r in read_records(reference_records) if r["event"] == "batch"
    ]
    assert batches == expected_batches and len(batches) == 6

    (expected_last,) = [p for p in _checkpoints(reference_logs) if p.name == "last.ckpt"]
    resumed_last = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    expected = load_checkpoint(expected_last)
    assert resumed_last["global_step"] == expected["global_step"] == 6
    assert_same_tensors(resumed_last["state_dict"], expected["state_dict"], "state_dict")
    assert_same_tensors(resumed_last["optimizer_states"], expected["optimizer_states"], "optimizer_states")


def test_a_run_name_directory_is_the_run_and_a_config_change_is_refused(tmp_path, tmp_path_factory):
    """`run_name=X ckpt_path=auto` resumes X's newest checkpoint; relaunching X with another learning rate names the
    key and the checkpoint instead of silently training a different model from X's weights."""
    data_dir = toy_data_dir(tmp_path_factory)
    named = [
        "run_name=paper",
        "ckpt_path=auto",
        "model.lr_scheduler.total_steps=4",
        "trainer.limit_val_batches=0",
    ]
    first = run_command(train_command([*named, "trainer.max_steps=2"], data_dir, tmp_path / "logs"))
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "logs" / "train" / "runs" / "paper"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    changed = run_command(
        train_command([*named, "trainer.max_steps=4", "model.optimizer.lr=0.5"], data_dir, tmp_path / "logs")
    )
    assert changed.returncode != 0
    errors = [line for line in changed.stderr.splitlines() if "ConfigError: " in line]
    assert len(errors) == 1 and "model.optimizer.lr=0.5 but ckpt_path=" in errors[0]
    assert str(run_dir / "checkpoints") in errors[0]
