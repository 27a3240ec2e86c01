"""The SCVideo vs ART-V ablation: `python train.py -m experiment=toy_scvideo,toy_artv` and
`scripts/tabulate_runs.py`, which turns the multirun's run directories into a Markdown table.

`experiment=toy_scvideo model=artv` is ART-V with its own from-scratch recipe (conf/from_scratch/artv_tiny.yaml) on
the SCVideo toy's data, sampler and guidance: an experiment sets nothing another model cannot take.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.utils import instantiate

from scripts.tabulate_runs import main, markdown_table
from tests.conftest import REPO_ROOT, compose_config
from tests.helpers.train_runs import TINY, child_env, toy_data_dir


def _fake_run(sweep: Path, job: int, overrides: list[str]) -> Path:
    run = sweep / str(job)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return run


def _write_csv(run: Path, rows: list[str]) -> None:
    path = run / "csv" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(["epoch,lr-AdamW,step,train/loss,val/loss", *rows]) + "\n")


def test_tabulates_csv_and_tensorboard_runs(tmp_path, capsys):
    from torch.utils.tensorboard import SummaryWriter

    sweep = tmp_path / "multirun"
    first = _fake_run(sweep, 0, ["experiment=toy_scvideo", "seed=1"])
    _write_csv(first, ["0,0.001,9,0.5,", "0,,9,,0.25", "1,0.002,19,0.125,"])
    second = _fake_run(sweep, 1, ["experiment=toy_artv", "seed=1"])
    writer = SummaryWriter(str(second / "tensorboard"))
    for step, loss in ((5, 0.75), (10, 0.5)):
        writer.add_scalar("train/loss", loss, step)
    writer.add_scalar("val/loss", 0.375, 10)
    writer.close()
    _fake_run(sweep, 10, ["experiment=toy_artv", "seed=2"])  # no metrics yet (e.g. still running)

    table = markdown_table(sweep)
    assert table.splitlines() == [
        "| run | experiment | seed | step | val/loss | lr-AdamW | train/loss |",
        "|---|---|---|---|---|---|---|",
        "| 0 | toy_scvideo | 1 | 19 | 0.25 | 0.002 | 0.125 |",
        "| 1 | toy_artv | 1 | 10 | 0.375 | - | 0.5 |",
        "| 10 | toy_artv | 2 | - | - | - | - |",
    ]
    out = tmp_path / "ablation.md"
    main([str(sweep), "--metrics", "val/loss", "--out", str(out)])
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    assert printed.splitlines()[0] == "| run | experiment | seed | step | val/loss |"


def test_empty_sweep_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run directories"):
        markdown_table(tmp_path)


def test_a_toy_experiment_builds_the_other_model_too(tmp_path):
    for experiment in ("toy_scvideo", "toy_artv"):
        cfg = compose_config("train", [f"experiment={experiment}"], tmp_path / experiment)
        assert instantiate(cfg.model).net.__class__.__name__ in ("SCVideoDenoiser", "ARTVDenoiser")
    mixed = compose_config("train", ["experiment=toy_scvideo", "model=artv"], tmp_path / "mixed")
    assert instantiate(mixed.model).net.__class__.__name__ == "ARTVDenoiser"


@pytest.mark.slow
def test_ablation_multirun_end_to_end(tmp_path, tmp_path_factory):
    sweep = tmp_path / "multirun"
    command = [
        sys.executable,
        "train.py",
        "-m",
        "experiment=toy_scvideo,toy_artv",
        *TINY,
        "trainer.max_steps=3",
        f"paths.data_dir={toy_data_dir(tmp_path_factory)}",
        f"hydra.sweep.dir={sweep}",
    ]
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = markdown_table(sweep, ["val/loss", "train/loss"]).splitlines()
    assert rows[0] == "| run | experiment | step | val/loss | train/loss |"
    # Lightning logs the metrics of optimizer step n at logger step n - 1
    assert [row.split(" | ")[1:3] for row in rows[2:]] == [["toy_scvideo", "2"], ["toy_artv", "2"]]
    assert all(row.split(" | ")[3] != "-" and row.split(" | ")[4] != "-" for row in rows[2:])
