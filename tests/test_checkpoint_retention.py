"""Checkpoint retention (callbacks/step_checkpoint.py): the newest `keep_last` step checkpoints plus milestones stay,
older ones are deleted only once a newer one is written, last.ckpt and preempted.ckpt stay, a resumed run continues
the record of the checkpoint it resumed from, and sharded (directory) checkpoints are pruned alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.strategies import SingleDeviceStrategy, Strategy

from callbacks.step_checkpoint import StepCheckpoint, retained
from modules.runtime.checkpoint_discovery import is_complete_checkpoint
from tests.conftest import compose_config
from tests.helpers.train_runs import compose_tiny, load_checkpoint, toy_data_dir

RETENTION = [
    "model.lr_scheduler.total_steps=10",  # the schedule must not change where a resumed segment stops
    "callbacks.model_checkpoint.every_n_train_steps=1",
    "callbacks.model_checkpoint.keep_last=2",
    "callbacks.model_checkpoint.keep_every_n_steps=2",
    "trainer.limit_val_batches=0",
]
PREEMPT_AT_STEP_4 = [
    "+callbacks.preempt._target_=tests.helpers.probes.SignalOnce",
    "+callbacks.preempt.step=4",
    "+callbacks.preempt.signal_name=SIGUSR1",
]


def test_retained_keeps_the_newest_and_the_milestones():
    steps = [500 * index for index in range(1, 9)]  # 500 .. 4000
    assert retained(steps, keep_last=3, keep_every_n_steps=1000) == [
        False,  # 500
        True,  # 1000: milestone
        False,  # 1500
        True,  # 2000: milestone
        False,  # 2500
        True,  # 3000: newest 3 and milestone
        True,  # 3500: newest 3
        True,  # 4000: newest 3 and milestone
    ]
    assert retained(steps, keep_last=None) == [True] * 8
    assert retained(steps[:2], keep_last=3) == [True, True]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"keep_last": -1}, r"^callbacks.model_checkpoint.keep_last=-1 must be a positive integer or null$"),
        ({"keep_last": 0}, r"^callbacks.model_checkpoint.keep_last=0 must be a positive integer or null$"),
        (
            {"keep_last": 3, "keep_every_n_steps": -500},
            r"^callbacks.model_checkpoint.keep_every_n_steps=-500 must be a positive integer or null$",
        ),
        (
            {"keep_last": 3, "keep_every_n_steps": 750},
            r"^callbacks.model_checkpoint.keep_every_n_steps=750 must be a multiple of every_n_train_steps=500,",
        ),
        (
            {"keep_last": 3, "save_top_k": 2, "monitor": "val/loss"},
            r"^callbacks.model_checkpoint.keep_last=3 keeps the newest step checkpoints and needs save_top_k=-1",
        ),
    ],
)
def test_bad_retention_values_name_the_key(arguments: dict[str, Any], message: str, tmp_path: Path):
    settings = {"dirpath": str(tmp_path), "every_n_train_steps": 500, "save_top_k": -1, **arguments}
    with pytest.raises(ValueError, match=message) as error:
        StepCheckpoint(**settings)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("experiment", "milestone"), [("scvideo_webvid256", 10_000), ("artv_webvid", 25_000)]
)
def test_paper_experiments_keep_milestones(experiment: str, milestone: int, tmp_path: Path):
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    callback = instantiate(cfg.callbacks.model_checkpoint)
    assert (callback.keep_last, callback.keep_every_n_steps) == (3, milestone)


def _step_files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.startswith("step"))


def _record(checkpoint: dict[str, Any]) -> list[int]:
    (state,) = [value for key, value in checkpoint["callbacks"].items() if key.startswith("StepCheckpoint")]
    return [item["step"] for item in state["step_files"]]


def test_training_prunes_after_each_write_and_a_resumed_run_continues_the_record(
    tmp_path, tmp_path_factory, monkeypatch
):
    from train import train

    removals: list[tuple[int, str, bool]] = []
    remove = Strategy.remove_checkpoint

    def recording_remove(self: Strategy, filepath: str) -> None:
        # when a checkpoint is deleted, the newer one of this step is already complete
        step = self.lightning_module.global_step
        newest = Path(filepath).with_name(f"step{step:08d}.ckpt")
        removals.append((step, Path(filepath).name, is_complete_checkpoint(newest)))
        remove(self, filepath)

    monkeypatch.setattr(Strategy, "remove_checkpoint", recording_remove)
    data_dir = toy_data_dir(tmp_path_factory)
    directory = tmp_path / "output" / "checkpoints"

    # preempted at step 4: preempted.ckpt (recording steps 2, 3) is saved just before step00000004.ckpt
    train(compose_tiny(tmp_path, data_dir, [*RETENTION, *PREEMPT_AT_STEP_4, "trainer.max_steps=10"]))
    assert sorted(path.name for path in directory.iterdir()) == [
        "last.ckpt",
        "preempted.ckpt",
        "step00000002.ckpt",
        "step00000003.ckpt",
        "step00000004.ckpt",
    ]
    assert removals == [(3, "step00000001.ckpt", True)]
    preempted = load_checkpoint(directory / "preempted.ckpt")
    assert preempted["global_step"] == 4 and _record(preempted) == [2, 3]

    # the resumed run adds step00000004.ckpt to the record and prunes what the first run wrote
    resume = ["trainer.max_steps=7", f"ckpt_path={directory / 'preempted.ckpt'}"]
    train(compose_tiny(tmp_path, data_dir, [*RETENTION, *PREEMPT_AT_STEP_4, *resume]))
    assert _step_files(directory) == [
        "step00000002.ckpt",
        "step00000004.ckpt",
        "step00000006.ckpt",
        "step00000007.ckpt",
    ]
    assert (directory / "last.ckpt").exists() and (directory / "preempted.ckpt").exists()
    assert removals[1:] == [(5, "step00000003.ckpt", True), (7, "step00000005.ckpt", True)]
    last = load_checkpoint(directory / "last.ckpt")
    assert last["global_step"] == 7 and _record(last) == [2, 4, 6, 7]

    # a branch from the older step00000004.ckpt never deletes the newer files of the other branch
    branch = ["trainer.max_steps=6", f"ckpt_path={directory / 'step00000004.ckpt'}"]
    train(compose_tiny(tmp_path, data_dir, [*RETENTION, *branch]))
    assert _step_files(directory) == [
        "step00000002.ckpt",
        "step00000004.ckpt",
        "step00000005.ckpt",
        "step00000006-v1.ckpt",
        "step00000006.ckpt",
        "step00000007.ckpt",
    ]
    assert _record(load_checkpoint(directory / "last.ckpt")) == [2, 4, 5, 6]


class ShardedDirectoryStrategy(SingleDeviceStrategy):
    """Writes every checkpoint as a directory of shard files, as FSDP with `state_dict_type: sharded` does."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        path = Path(filepath)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, path / "meta.pt")
        (path / "__0_0.distcp").write_bytes(b"shard of rank 0")


def test_sharded_checkpoint_directories_are_pruned_alike(tmp_path):
    callback = StepCheckpoint(
        dirpath=str(tmp_path / "checkpoints"),
        filename="step{step:08d}",
        auto_insert_metric_name=False,
        every_n_train_steps=1,
        save_top_k=-1,
        save_last=True,
        keep_last=2,
        keep_every_n_steps=3,
    )
    trainer = L.Trainer(
        strategy=ShardedDirectoryStrategy(device=torch.device("cpu")),
        max_steps=5,
        limit_val_batches=0,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(BoringModel())
    directory = tmp_path / "checkpoints"
    assert sorted(path.name for path in directory.iterdir()) == [
        "last.ckpt",
        "step00000003.ckpt",
        "step00000004.ckpt",
        "step00000005.ckpt",
    ]
    assert all(path.is_dir() for path in directory.iterdir())
