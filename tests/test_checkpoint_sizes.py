"""Checkpoint sizes: `python -m modules.checkpoints.report_size` on a real checkpoint file and on a sharded
directory, and bench/checkpoint_sizes.py on the paper configs (meta device, nothing written)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from hydra.utils import instantiate

from bench import checkpoint_sizes
from modules.checkpoints.report_size import PARTS, checkpoint_size, main, report
from tests.helpers.pretrained_files import paper_trainable, write_tiny_sd_unet
from tests.helpers.train_runs import compose_tiny, toy_data_dir

ONE_STEP = [
    "callbacks.model_checkpoint.every_n_train_steps=1",
    "trainer.limit_val_batches=0",
    "trainer.max_steps=1",
]


def test_report_of_a_trained_checkpoint_matches_the_bench_parts(tmp_path, tmp_path_factory, capsys):
    from train import train

    overrides = [*ONE_STEP, *paper_trainable(write_tiny_sd_unet(tmp_path / "sd.safetensors", seed=1))]
    cfg = compose_tiny(tmp_path, toy_data_dir(tmp_path_factory), overrides)
    train(cfg)
    path = Path(cfg.paths.output_dir) / "checkpoints" / "step00000001.ckpt"

    size = checkpoint_size(path)
    model = instantiate(cfg.model)
    expected = checkpoint_sizes.checkpoint_parts(model, leave_out_frozen_net=True)
    trainable = sum(p.numel() for _, p in model.net.trainable_named_parameters())
    assert size.bytes["trainable weights"] == expected["trainable weights"] == 4 * trainable
    assert size.bytes["optimizer state"] == expected["optimizer state"]
    for part in ("EMA shadows", "frozen weights"):
        assert size.bytes[part] == expected[part], part
    assert size.bytes["other"] >= expected["other"]
    assert sum(size.bytes.values()) == size.disk_bytes == path.stat().st_size
    assert size.global_step == 1 and size.left_out.tensors == len(model.frozen_net_keys)

    capsys.readouterr()  # what training printed
    assert main([str(path)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{path} (file, global step 1): ")
    assert all(part in printed for part in PARTS)
    assert "frozen net weights left out" in printed and str(tmp_path / "sd.safetensors") in printed


def test_report_of_a_sharded_directory_reads_its_metadata(tmp_path):
    directory = tmp_path / "step00000500.ckpt"
    model = {
        "net.unet.attn.weight": torch.zeros(8, 8),  # trainable: has an EMA shadow
        "net.unet.norm.weight": torch.zeros(8),  # frozen
        "ema.unet__attn__weight": torch.zeros(8, 8),
        "ema.num_updates": torch.zeros((), dtype=torch.long),
        "first_stage.decoder.weight": torch.zeros(4, 4),  # frozen encoder, kept by sharded checkpoints
        "skipped_nonfinite_steps": torch.zeros((), dtype=torch.long),
    }
    optimizer = {
        "state": {"net.unet.attn.weight": {"exp_avg": torch.zeros(8, 8), "exp_avg_sq": torch.zeros(8, 8)}},
        "param_groups": [{"lr": 1e-5, "params": ["net.unet.attn.weight"]}],
    }
    dcp.save({"model": model, "optimizer_0": optimizer}, checkpoint_id=str(directory), no_dist=True)
    torch.save({"global_step": 500}, directory / "meta.pt")

    size = checkpoint_size(directory)
    assert size.sharded and size.global_step == 500 and size.left_out is None
    assert size.bytes["trainable weights"] == 256 and size.tensors["trainable weights"] == 1
    assert size.bytes["EMA shadows"] == 256 + 8
    assert size.bytes["optimizer state"] == 2 * 256
    assert size.bytes["frozen weights"] == 32 + 64
    assert sum(size.bytes.values()) == size.disk_bytes
    assert "sharded FSDP directory, global step 500" in report(size)


def test_bench_sizes_the_paper_checkpoints_on_meta_without_writing(monkeypatch):
    def refuse(*args, **kwargs) -> None:
        raise AssertionError("--no-write wrote a section")

    monkeypatch.setattr(checkpoint_sizes, "write_section", refuse)
    scvideo, artv = checkpoint_sizes.main(["--no-write"])

    # SCVideo: SD 1.4's frozen spatial layers (3.06 GB fp32) leave every checkpoint; ART-V trains everything
    assert scvideo.before["frozen weights"] == pytest.approx(3.06e9, rel=0.01)
    assert scvideo.after["frozen weights"] == 0
    assert sum(scvideo.before.values()) == pytest.approx(7.21e9, rel=0.01)
    assert sum(artv.before.values()) == sum(artv.after.values()) == pytest.approx(19.5e9, rel=0.01)
    for result in (scvideo, artv):
        trainable = result.after["trainable weights"]
        assert result.after["EMA shadows"] == pytest.approx(trainable, abs=8)
        assert result.after["optimizer state"] == pytest.approx(2 * trainable, rel=1e-4)

    # 80K steps, a checkpoint every 500: 160 step checkpoints + last.ckpt before; the newest 3 and 8 milestones
    # (80K among both) + last.ckpt after
    assert checkpoint_sizes.files_on_disk(scvideo.retention_before) == (161, 162)
    assert checkpoint_sizes.files_on_disk(scvideo.retention_after) == (11, 12)
    assert checkpoint_sizes.files_on_disk(artv.retention_after) == (14, 15)
    section = checkpoint_sizes.markdown_section([scvideo, artv], "python -m bench.checkpoint_sizes")
    assert section.startswith("## Checkpoint sizes of the paper runs (bench/checkpoint_sizes.py)")
    assert "| SCVideo | 80,000 | 500 | after | newest 3 + every 10,000 |" in section
