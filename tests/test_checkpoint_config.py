"""Self-describing checkpoints (modules/runtime/checkpoint_config.py): sample.py and eval.py rebuild the model, its
backbone and text encoder, the resolution and the sampling defaults from the run config a checkpoint stores;
command-line overrides of sampling settings win, those that contradict the weights fail in one line, and
`ckpt_path=latest` takes the newest checkpoint of the model the command line names."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import av
import pytest
from omegaconf import OmegaConf

from modules.runtime.checkpoint_config import apply_checkpoint_config
from modules.runtime.config_checks import ConfigError
from modules.runtime.sampling import build_model_for_sampling
from tests.conftest import compose_config
from tests.helpers.train_runs import run_command, toy_data_dir, train_checkpoint

ARTV_NET = "modules.artv.artv_denoiser.ARTVDenoiser"
SCVIDEO_NET = "modules.scvideo.scvideo_denoiser.SCVideoDenoiser"
# what the tiny ART-V run trains with beyond the tiny overrides, all unlike sample.yaml's defaults: 4-frame 16x16
# clips at 4 fps and a lower text-guidance weight
ARTV_RUN = ["model=artv", "data.frame_stride=null", "data.target_fps=4", "guidance.weights.text=3.0"]
FAST = ["sampler.num_steps=2", "sampler.progress=false", "device=cpu"]


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log directory with a tiny ART-V run and a newer tiny SCVideo run, one checkpoint each."""
    data_dir = toy_data_dir(tmp_path_factory)
    logs = tmp_path_factory.mktemp("checkpoint_config") / "logs"
    artv = train_checkpoint(logs / "train" / "runs" / "artv", data_dir, ARTV_RUN)
    scvideo = train_checkpoint(logs / "train" / "runs" / "scvideo", data_dir, ["model=scvideo"])
    now = time.time()
    for age, checkpoint in ((60, artv), (0, scvideo)):  # the SCVideo run is the newer one
        for path in (*checkpoint.parent.iterdir(), checkpoint.parent):
            os.utime(path, (now - age, now - age))
    return logs


def _artv_checkpoint(log_dir: Path) -> Path:
    return log_dir / "train" / "runs" / "artv" / "checkpoints" / "step00000001.ckpt"


def _scvideo_checkpoint(log_dir: Path) -> Path:
    return log_dir / "train" / "runs" / "scvideo" / "checkpoints" / "step00000001.ckpt"


def _restored(config_name: str, overrides: list[str], log_dir: Path, tmp_path: Path):
    """The sampling config composed with `overrides` (as on a command line), restored from its checkpoint."""
    cfg = compose_config(config_name, overrides, tmp_path)
    cfg.paths.log_dir = str(log_dir)
    return apply_checkpoint_config(cfg)


def test_sample_py_with_only_ckpt_path_rebuilds_artv(log_dir, tmp_path):
    checkpoint = _artv_checkpoint(log_dir)
    command = [sys.executable, "sample.py", f"ckpt_path={checkpoint}", "prompt=a red circle moving left"]
    run_dir = [f"hydra.run.dir={tmp_path / 'run'}", f"paths.log_dir={log_dir}"]
    result = run_command([*command, *FAST, *run_dir], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (video,) = (tmp_path / "run" / "videos").glob("*.mp4")
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(video=0))
        assert (stream.average_rate, stream.width, stream.height) == (
            4,
            16,
            16,
        )  # the run's fps and resolution
    assert len(frames) == 4  # the run's clip length, not sample.yaml's num_frames=8


def test_the_run_config_sets_model_backbone_text_encoder_and_sampling_defaults(log_dir, tmp_path):
    cfg = _restored("sample", [f"ckpt_path={_artv_checkpoint(log_dir)}", *FAST], log_dir, tmp_path)
    assert cfg.model.net._target_ == ARTV_NET
    assert cfg.text_encoder.init_seed == 10  # conf/from_scratch/artv_tiny.yaml, not sample.yaml's 0
    assert cfg.backbone.unet.attention_resolutions == [1, 2]  # artv_tiny again
    assert (cfg.resolution.height, cfg.resolution.width, cfg.num_frames, cfg.fps) == (16, 16, 4, 4)
    # ART-V's sampler and eq. (1) guidance with the run's weight, the command line's step count on top
    assert cfg.sampler._target_.endswith("DPMPP2SAncestralSampler") and cfg.sampler.num_steps == 2
    assert cfg.guidance.weights.text == 3.0
    assert cfg.sampler.init_noise == "gaussian"  # sample.yaml's generation-only key stays
    assert cfg.model.sampler == cfg.sampler and cfg.model.guidance == cfg.guidance
    model = build_model_for_sampling(cfg)
    assert type(model.net).__name__ == "ARTVDenoiser" and model.sampler.num_steps == 2


def test_sampling_overrides_win(log_dir, tmp_path):
    overrides = [
        f"ckpt_path={_artv_checkpoint(log_dir)}",
        "sampler=ddim",
        "++guidance.weights.text=1.5",  # ++: sample.yaml's default guidance (cfg) has no `weights`
        "resolution=toy32",
        "num_frames=6",
        *FAST,
    ]
    cfg = _restored("sample", overrides, log_dir, tmp_path)
    assert (
        cfg.sampler._target_ == "modules.diffusion.samplers.ddim.DDIMSampler" and cfg.sampler.num_steps == 2
    )
    assert cfg.model.sampler._target_ == cfg.sampler._target_
    assert cfg.guidance.weights == {"reference": 0.25, "anchor": 0.25, "text": 1.5}
    assert (cfg.resolution.height, cfg.num_frames, cfg.fps) == (32, 6, 4)
    assert cfg.model.net._target_ == ARTV_NET


@pytest.mark.parametrize(
    ("override", "key", "trained"),
    [
        ("model=scvideo", "model.net._target_", ARTV_NET),
        ("backbone=sd14", "backbone.first_stage._target_", "PixelUnshuffleAutoencoder"),
        ("text_encoder.init_seed=3", "text_encoder.init_seed", "10"),
        ("++model.net.anchor_patch_size=2", "model.net.anchor_patch_size", "4"),  # ++: SCVideo's net has none
    ],
)
def test_an_override_contradicting_the_weights_fails_in_one_line(log_dir, tmp_path, override, key, trained):
    checkpoint = _artv_checkpoint(log_dir)
    with pytest.raises(ConfigError) as refused:
        _restored("sample", [f"ckpt_path={checkpoint}", override], log_dir, tmp_path)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{override} contradicts ckpt_path={checkpoint}: it gives {key}=")
    assert f"the checkpoint was trained with {key}=" in message and trained in message


@pytest.mark.parametrize(
    "agreeing", [["model=artv"], ["experiment=toy_artv"], ["model=artv", "text_encoder=tiny"]]
)
def test_overrides_that_agree_with_the_checkpoint_are_accepted(log_dir, tmp_path, agreeing):
    cfg = _restored("sample", [f"ckpt_path={_artv_checkpoint(log_dir)}", *agreeing], log_dir, tmp_path)
    assert cfg.model.net._target_ == ARTV_NET and cfg.text_encoder.init_seed == 10


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], "scvideo"),  # no model named: the newest checkpoint of any model, which then drives everything
        (["model=artv"], "artv"),  # the newest ART-V checkpoint, though a newer SCVideo run exists
        (["experiment=toy_artv"], "artv"),
        (["model=scvideo"], "scvideo"),
    ],
)
def test_latest_is_the_newest_checkpoint_of_the_requested_model(log_dir, tmp_path, overrides, expected):
    cfg = _restored("sample", ["ckpt_path=latest", *overrides], log_dir, tmp_path)
    checkpoint = _artv_checkpoint(log_dir) if expected == "artv" else _scvideo_checkpoint(log_dir)
    assert Path(cfg.ckpt_path).parent == checkpoint.parent  # that run's newest checkpoint (last.ckpt)
    assert cfg.model.net._target_ == (ARTV_NET if expected == "artv" else SCVIDEO_NET)


def test_latest_without_a_checkpoint_of_the_requested_model_keeps_the_config(tmp_path, caplog):
    empty = tmp_path / "empty_logs"
    cfg = _restored("sample", ["ckpt_path=latest", "model=artv"], empty, tmp_path)
    assert cfg.ckpt_path is None and cfg.model.net._target_ == ARTV_NET
    assert f"no trained checkpoint of model.net._target_={ARTV_NET}" in caplog.text


def test_eval_takes_the_model_but_keeps_its_protocol(log_dir, tmp_path):
    cfg = _restored("eval", [f"ckpt_path={_artv_checkpoint(log_dir)}"], log_dir, tmp_path)
    assert cfg.model.net._target_ == ARTV_NET and cfg.resolution.height == 16
    protocol = compose_config("eval", [], tmp_path / "plain").eval_protocol
    assert OmegaConf.to_container(cfg.eval_protocol) == OmegaConf.to_container(protocol)
