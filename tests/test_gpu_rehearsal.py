"""The GPU rehearsal (bench/gpu_rehearsal.py): its reduced mode end to end on the CPU, the micro-batch probe, the
peak table, and the paper-size step on the meta device. No test asserts a time."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import flops, gpu_rehearsal, rehearsal_training
from bench.rehearsal_training import (
    RehearsalCase,
    case_overrides,
    count_step_flops,
    largest_fitting_batch,
    stated_peak_flops,
)
from bench.training_step import compose_train_config


@pytest.mark.usefixtures("single_torch_thread")
def test_reduced_rehearsal_trains_both_papers_and_writes_its_section(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = rehearsal_training.training_step

    def artv_fits_one_clip(
        module: Any, optimizer: Any, batch: dict[str, Any], precision: str
    ) -> torch.Tensor:
        # ART-V's micro-batch of 2 "runs out of memory", so the probe has to settle on 1
        if type(module.net).__name__ == "ARTVDenoiser" and len(batch["caption"]) > 1:
            raise torch.cuda.OutOfMemoryError("simulated: CUDA out of memory")
        return real_step(module, optimizer, batch, precision)

    monkeypatch.setattr(rehearsal_training, "training_step", artv_fits_one_clip)
    doc = tmp_path / "BENCHMARKS.md"
    results = gpu_rehearsal.main(
        ["--reduced", "--device", "cpu", "--in-process", "--threads", "1", "--doc", str(doc)]
    )
    training = {result["experiment"]: result for result in results["training"]}
    assert set(training) == {"scvideo_webvid256", "artv_webvid"}
    for result in training.values():
        assert result["median_s"] > 0 and math.isfinite(result["median_s"])
        assert math.isfinite(result["loss"])
        assert result["changed_parameter_tensors"] == result["trainable_parameter_tensors"] > 0
        assert result["ema_updates"] == 3  # the probe's step, 1 warm-up, 1 timed
        assert result["precision"] == "bf16-mixed" and result["gradient_checkpointing"]
        assert 0 < result["net_flops"] < result["model_flops"] < result["executed_flops"]
        assert 0 < result["mfu"] < 1 and math.isfinite(result["mfu"])
        assert result["clip"] == "4x64x64" and result["requested_batch_size"] == 2
    assert training["scvideo_webvid256"]["batch_size"] == 2
    assert training["artv_webvid"]["batch_size"] == 1
    assert {result["model"] for result in results["inference"]} == {"modelscope", "artv", "artv_eq1"}
    assert all(result["steps_per_s"] > 0 for result in results["inference"])
    text = doc.read_text()
    assert "<!-- gpu_rehearsal:start -->" in text and "<!-- gpu_rehearsal:end -->" in text
    assert "CPU reduced run" in text and "not paper-size GPU numbers" in text
    assert "| 1 (2) |" in text  # ART-V's micro-batch next to the config's
    assert "### Inference vs ModelScope" in text


def test_the_paper_size_rehearsal_refuses_a_cpu() -> None:
    with pytest.raises(SystemExit):
        gpu_rehearsal.parse_args(["--device", "cpu"])


def test_largest_fitting_batch_halves_then_bisects() -> None:
    tried: list[int] = []

    def fits_up_to_13(batch_size: int) -> bool:
        tried.append(batch_size)
        return batch_size <= 13

    assert largest_fitting_batch(fits_up_to_13, 24) == 13
    assert tried == [24, 12, 18, 15, 13, 14]
    assert largest_fitting_batch(lambda batch_size: True, 24) == 24
    with pytest.raises(RuntimeError, match="not even a micro-batch of 1"):
        largest_fitting_batch(lambda batch_size: False, 5)


def test_stated_peaks_follow_the_device_name() -> None:
    assert stated_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert stated_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert stated_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert stated_peak_flops("NVIDIA H200") == 989e12
    assert stated_peak_flops("Tesla T4") is None


def test_the_paper_size_step_composes_and_counts_on_the_meta_device() -> None:
    shapes = {}
    for experiment in ("scvideo_webvid256", "artv_webvid"):
        cfg = compose_train_config(case_overrides(RehearsalCase(experiment, "cuda", None, 2, 3, False, 1)))
        shapes[experiment] = (cfg.data.batch_size, cfg.data.num_frames, cfg.resolution.height)
        assert cfg.trainer.precision == "bf16-mixed" and cfg.backbone.unet.use_checkpoint
    assert shapes == {"scvideo_webvid256": (5, 16, 256), "artv_webvid": (24, 16, 320)}
    # ART-V's whole denoiser is trained: forward + backward = 3 forwards of one frame per clip (bench/flops.py's MACs)
    counted = count_step_flops(cfg, reduced=False, checkpointing=False)
    forward_macs = flops.artv_macs(flops.build_artv_net(), 320, num_frames=24).total
    assert counted["net"] == pytest.approx(3 * 2 * forward_macs, rel=0.03)
    assert counted["total"] > counted["net"]  # the frozen VAE and text encoder forwards
