"""DDP on CPU: `python train.py trainer=ddp_cpu` (Lightning's `ddp` strategy over gloo; Lightning starts the
second process itself) trains SCVideo and ART-V, and over every epoch the two ranks together see each sample
of the toy shard set exactly once.

16 training videos in 4 shards; `data.samples_per_epoch=16` and batches of 4 give each rank 2 batches per
epoch, read from its own 2 shards.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.helpers.train_runs import read_records, recorder_overrides, run_train, toy_data_dir

TRAIN_SAMPLES = 16
BATCH_SIZE = 4
BATCHES_PER_EPOCH = TRAIN_SAMPLES // 2 // BATCH_SIZE


@pytest.mark.parametrize(
    ("experiment", "epochs"),
    [("toy_scvideo", 2), pytest.param("toy_artv", 1, marks=pytest.mark.slow)],
)
def test_ddp_cpu_sees_every_sample_once_per_epoch(experiment, epochs, tmp_path, tmp_path_factory):
    records = tmp_path / "records"
    result = run_train(
        [
            f"experiment={experiment}",
            "trainer=ddp_cpu",
            f"data.samples_per_epoch={TRAIN_SAMPLES}",
            f"data.batch_size={BATCH_SIZE}",
            f"data.val_samples={2 * BATCH_SIZE}",
            f"trainer.max_steps={epochs * BATCHES_PER_EPOCH}",
            *recorder_overrides(records),
        ],
        tmp_path / "run",
        toy_data_dir(tmp_path_factory),
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    ranks = [[r for r in read_records(records, rank) if r["event"] == "batch"] for rank in (0, 1)]
    for rank, batches in enumerate(ranks):
        assert [r["step"] for r in batches] == list(range(1, epochs * BATCHES_PER_EPOCH + 1)), f"rank {rank}"
    all_keys = set()
    for epoch in range(epochs):
        per_rank = [[key for r in batches if r["epoch"] == epoch for key in r["keys"]] for batches in ranks]
        assert [len(keys) for keys in per_rank] == [TRAIN_SAMPLES // 2] * 2
        counts = Counter(per_rank[0] + per_rank[1])
        assert len(counts) == TRAIN_SAMPLES and set(counts.values()) == {1}, f"epoch {epoch}: {counts}"
        all_keys.add(frozenset(counts))
    assert len(all_keys) == 1  # every epoch covers the same (whole) set
    # the ranks drew different noise: their losses differ at every step
    assert all(a["loss"] != b["loss"] for a, b in zip(*ranks, strict=True))
