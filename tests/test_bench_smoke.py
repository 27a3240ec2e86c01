"""Smoke tests of the benchmarks: their quick modes run on the tiniest sizes and write their sections into a
temporary document. No test asserts a time."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from bench import data_vs_step, inference_table2, sampling, training_step
from bench.report import peak_rss_bytes, reset_peak_rss, run_case_in_subprocess, write_section


def test_write_section_replaces_its_own_section_and_keeps_the_rest(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    write_section(doc, "first", "old body")
    write_section(doc, "second", "other body")
    write_section(doc, "first", "new body")
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n")
    assert "new body" in text and "old body" not in text and "other body" in text
    assert text.count("<!-- first:start -->") == 1
    assert text.index("<!-- first:end -->") < text.index("<!-- second:start -->")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_rss_after_a_reset_counts_new_allocations() -> None:
    baseline = reset_peak_rss()
    block = torch.ones(16 * 2**20)  # 64 MiB, touched
    growth = peak_rss_bytes() - baseline
    del block
    assert growth >= 48 * 2**20


def test_width_divisor_divides_both_models_alike() -> None:
    config = inference_table2.modelscope_config(8)
    assert config["block_out_channels"] == (40, 80, 160, 160)
    assert config["norm_num_groups"] == 4
    net = inference_table2.build_network("artv", 8, "meta")
    assert net.dynamic_unet.model_channels == 40 and net.mask_unet.model_channels == 8
    assert net.dynamic_unet.input_blocks[1][0].in_layers[0].num_groups == 4
    # the head counts stay the paper's (5 heads of 64 at 320 channels -> 5 heads of 8 at 40)
    assert net.dynamic_unet.num_head_channels == 8
    with pytest.raises(ValueError, match="width divisor 3"):
        inference_table2.modelscope_config(3)


@pytest.mark.usefixtures("single_torch_thread")
def test_inference_quick_measures_all_three_models_and_writes_its_section(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    results = inference_table2.main(["--quick", "--in-process", "--threads", "1", "--doc", str(doc)])
    by_model = {result["model"]: result for result in results}
    assert set(by_model) == set(inference_table2.MODELS)
    text = doc.read_text()
    for result in results:
        assert result["steps_per_s"] > 0 and math.isfinite(result["steps_per_s"])
        # the quick mode times one step per case, and the section's table reports that step
        assert len(result["times_s"]) == 1 and f"| {result['median_s']:.3f} |" in text
    # the eq. (1) step is four forwards of the ART-V network itself in one batch
    assert by_model["artv_eq1"]["parameters"] == by_model["artv"]["parameters"]
    assert by_model["artv_eq1"]["total_macs"] == 4 * by_model["artv"]["total_macs"]
    assert by_model["artv"]["conv_linear_macs"] > 0 and by_model["modelscope"]["conv_linear_macs"] > 0
    assert "<!-- bench_inference_table2:start -->" in text
    assert "1.55x" in text  # the paper's 320-px throughput ratio next to ours
    if not torch.cuda.is_available():
        assert "No GPU ran" in text


@pytest.mark.usefixtures("single_torch_thread")
def test_training_quick_runs_a_step_with_and_without_checkpointing(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    results = training_step.main(
        ["--quick", "--in-process", "--experiments", "toy_scvideo", "--threads", "1", "--doc", str(doc)]
    )
    assert [result["gradient_checkpointing"] for result in results] == [False, True]
    for result in results:
        assert math.isfinite(result["loss"]) and result["median_s"] > 0
        assert result["clip"] == "8x32x32" and result["batch_size"] == 8
    assert "<!-- bench_training_step:start -->" in doc.read_text()


def test_training_case_config_switches_checkpointing() -> None:
    case = training_step.TrainingCase("toy_artv", True, "cpu", "fp32", 0, 1, 1)
    cfg = training_step.case_config(case)
    assert cfg.backbone.unet.use_checkpoint is True
    assert cfg.model.net.mask_unet.use_checkpoint is True


def step_result(experiment: str, checkpointing: bool, median_s: float, batch_size: int) -> dict:
    """A bench.training_step result with the fields data_vs_step reads."""
    return {
        "experiment": experiment,
        "gradient_checkpointing": checkpointing,
        "median_s": median_s,
        "batch_size": batch_size,
        "clips_per_s": batch_size / median_s,
    }


def test_data_vs_step_names_the_fewest_workers_that_keep_up() -> None:
    loaders = [
        {"experiment": "toy_scvideo", "workers": 0, "clips_per_s": 5.0, "clip": "8x32x32"},
        {"experiment": "toy_scvideo", "workers": 1, "clips_per_s": 20.0, "clip": "8x32x32"},
    ]
    steps = [step_result("toy_scvideo", False, 0.8, 8), step_result("toy_scvideo", True, 1.0, 8)]
    (row,) = data_vs_step.compare(loaders, steps)
    assert row["workers_needed"] == 1
    assert row["consumed_clips_per_s"] == pytest.approx(10.0)
    # 8 clips at 5 clips/s = 1.6 s of loading per 0.8-s step
    assert row["load_share_without_workers"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="toy_artv"):
        data_vs_step.compare([{**loaders[0], "experiment": "toy_artv"}], steps)


@pytest.mark.usefixtures("single_torch_thread")
def test_data_vs_step_quick_reads_the_toy_loader(tmp_path: Path) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    steps = [step_result("toy_scvideo", False, 0.5, 8)]
    (row,) = data_vs_step.main(
        ["--quick", "--experiments", "toy_scvideo", "--threads", "1", "--doc", str(doc)], step_results=steps
    )
    assert row["loader_clips_per_s"][0] > 0
    assert row["clip"] == "8x32x32"
    assert "<!-- bench_data_vs_step:start -->" in doc.read_text()


@pytest.mark.slow
def test_a_training_case_runs_in_its_own_process() -> None:
    case = training_step.TrainingCase("toy_scvideo", False, "cpu", "fp32", 0, 1, 1)
    result = run_case_in_subprocess(training_step.MODULE, dataclasses.asdict(case))
    assert result["memory_bytes"] > 0 and result["memory_kind"] == "peak RSS growth"


@pytest.mark.usefixtures("single_torch_thread")
def test_sampling_quick_generates_one_video_per_caching_setting_and_writes_its_section(
    tmp_path: Path,
) -> None:
    doc = tmp_path / "BENCHMARKS.md"
    result = sampling.main(["--quick", "--threads", "1", "--doc", str(doc)])
    times = result["times"]
    assert set(times) == set(sampling.SETTINGS)
    for measured in times.values():
        assert measured["seconds"] > 0 and math.isfinite(measured["seconds"])
        assert measured["max_abs_difference"] <= 1e-5  # caching changes no video
    macs = result["macs"]["measured"]
    assert (
        0 < macs["anchor"] < macs["text"] < macs["evaluation"] and 0 < macs["per_frame"] < macs["evaluation"]
    )
    text = doc.read_text()
    assert "<!-- sampling:start -->" in text
    # one row per setting, in the bench's order, each with the CPU seconds it measured
    rows = [text.index(f"| {name} | {times[name]['seconds']:.1f} |") for name in sampling.ORDER]
    assert rows == sorted(rows)
    # and, in the same run, 4 prompts in one call against 4 calls for both models
    batching = result["batching"]
    assert set(batching) == set(sampling.BATCH_MODELS)
    assert "<!-- sampling_batching:start -->" in text
    assert "## Sampling 4 prompts in one call vs 4 calls" in text
    for model, measured in batching.items():
        assert measured["batched_seconds"] > 0 and measured["separate_seconds"] > 0
        assert measured["max_abs_difference"] <= 1e-4  # a video of the batch is the video made alone
        assert f"| {model} | {measured['separate_seconds']:.2f} | {measured['batched_seconds']:.2f} |" in text
