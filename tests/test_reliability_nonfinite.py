"""Non-finite losses: the optimizer update is skipped (weights and EMA unchanged), counted, and K consecutive
ones stop training with NonFiniteLossError naming model.max_consecutive_nonfinite.

Lightning still counts a skipped batch as an optimizer step (`global_step`, `max_steps`), and steps the LR
schedule with it, so the schedule and the step counter stay in step with each other.
"""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from modules.training.video_diffusion_module import NonFiniteLossError
from tests.helpers.train_runs import compose_tiny, toy_data_dir

LIMIT = 3
# batch 1 alone (the count restarts at batch 2), then batches 3-5: the third in a row raises
NAN_BATCHES = {1, 3, 4, 5}
RAISING_BATCH = 5


class StateProbe(L.Callback):
    """Snapshot of the trainable weights, the EMA shadows, the step and the skip counter after every batch."""

    def __init__(self) -> None:
        self.snapshots: list[dict[str, object]] = []

    def _snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        weights = torch.cat([p.detach().flatten() for _, p in pl_module.net.trainable_named_parameters()])
        ema = torch.cat([shadow.flatten() for shadow in pl_module.ema.shadows()])
        self.snapshots.append(
            {
                "weights": weights.clone(),
                "ema": ema.clone(),
                "step": trainer.global_step,
                "skipped": int(pl_module.skipped_nonfinite_steps),
            }
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._snapshot(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._snapshot(trainer, pl_module)


def test_nonfinite_losses_are_skipped_counted_and_stop_after_the_limit(tmp_path, tmp_path_factory, caplog):
    cfg = compose_tiny(
        tmp_path,
        toy_data_dir(tmp_path_factory),
        [f"model.max_consecutive_nonfinite={LIMIT}", "trainer.max_steps=20", "trainer.limit_val_batches=0"],
    )
    L.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    probe = StateProbe()
    trainer = instantiate(cfg.trainer, callbacks=[probe], logger=False, enable_checkpointing=False)

    net_forward = model.net.forward

    def forward_with_nan(x_t, t, cond):
        eps = net_forward(x_t, t, cond)
        if model.training and trainer.fit_loop.total_batch_idx in NAN_BATCHES:
            return eps * float("nan")
        return eps

    model.net.forward = forward_with_nan
    caplog.set_level(logging.WARNING)
    with pytest.raises(NonFiniteLossError, match=f"model.max_consecutive_nonfinite={LIMIT}"):
        trainer.fit(model, datamodule=datamodule)

    # snapshots[0] is the start; snapshots[b + 1] is after batch b; the raising batch has none
    snapshots = probe.snapshots
    assert len(snapshots) == 1 + RAISING_BATCH
    skipped = 0
    for batch in range(RAISING_BATCH):
        before, after = snapshots[batch], snapshots[batch + 1]
        if batch in NAN_BATCHES:
            skipped += 1
            assert torch.equal(after["weights"], before["weights"]), f"batch {batch} changed the weights"
            assert torch.equal(after["ema"], before["ema"]), f"batch {batch} changed the EMA"
        else:
            assert not torch.equal(after["weights"], before["weights"]), f"batch {batch} did not train"
            assert not torch.equal(after["ema"], before["ema"])
        assert after["step"] == before["step"] + 1
        assert after["skipped"] == skipped
        assert torch.isfinite(after["weights"]).all() and torch.isfinite(after["ema"]).all()
    assert int(model.skipped_nonfinite_steps) == len(NAN_BATCHES)  # the raising batch counted too
    warnings = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert len(warnings) == len(NAN_BATCHES)
    assert "3 in a row, limit 3 <model.max_consecutive_nonfinite>" in warnings[-1]
