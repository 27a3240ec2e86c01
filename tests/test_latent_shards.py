"""Latent shards: `encode_latents` turns toy video shards into first-stage moments; training from them gives the same
loss as from the videos (same clip, same seed) and encodes no frame; a run whose first stage, resolution or frame
sampling differs from the set's is refused naming the key; bad samples are reported once each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from datamodules.encode_latents import encode_latent_shards
from datamodules.latent_shards import INFO_FILE, REPORT_FILE
from modules.runtime.config_checks import ConfigError, check_config
from tests.conftest import compose_config

# 4 toy validation videos of 12 frames, 32 px
TOY_SHARDS = [
    "data.toy_shards.train_samples=4",
    "data.toy_shards.val_samples=4",
    "data.toy_shards.samples_per_shard=4",
    "data.toy_shards.num_frames=12",
    "data.toy_shards.size=32",
]
CLIPS = [
    "data.num_frames=4",
    "data.batch_size=4",
    "data.val_samples=null",
    "data.num_workers=0",
]
TOY = [*TOY_SHARDS, *CLIPS]


@pytest.fixture(scope="module")
def latent_set(tmp_path_factory) -> tuple[Path, Path]:
    """(data_dir with the toy videos, the latent shards of their validation split, fp32)."""
    data_dir = tmp_path_factory.mktemp("latent_data")
    out = data_dir / "shapes_latents" / "val"
    overrides = ["experiment=toy_scvideo", "data=shapes", *TOY, f"paths.data_dir={data_dir}"]
    skipped = encode_latent_shards(overrides, out, split="val", dtype="float32", progress=False)
    assert skipped == []
    return data_dir, out


def _config(tmp_path: Path, data_dir: Path, experiment: str, latents: bool, extra: list[str] = ()):
    data = ["data=shapes_latents", "data.train_urls=${data.val_urls}", *CLIPS] if latents else TOY
    cfg = compose_config("train", [f"experiment={experiment}", *data, *extra], tmp_path)
    cfg.paths.data_dir = str(data_dir)
    return cfg


def _first_val_batch(cfg) -> dict:
    datamodule = instantiate(cfg.data)
    datamodule.setup("validate")
    batch = next(iter(datamodule.val_dataloader()))
    return datamodule.on_after_batch_transfer(batch, 0)


@pytest.mark.parametrize("experiment", ["toy_scvideo", "toy_artv"])
def test_the_loss_from_latent_shards_equals_the_loss_from_video(latent_set, tmp_path, experiment):
    data_dir, _ = latent_set
    # toy_artv reads the same 8 fps toy videos at target_fps 8, which is every frame: the set made at stride 1 fits
    extra = ["data.target_fps=null", "data.frame_stride=1"] if experiment == "toy_artv" else []
    video_cfg = _config(
        tmp_path / "video", data_dir, experiment, latents=False, extra=["data=shapes", *extra]
    )
    latent_cfg = _config(tmp_path / "latent", data_dir, experiment, latents=True, extra=extra)
    check_config(latent_cfg)
    video_batch, latent_batch = _first_val_batch(video_cfg), _first_val_batch(latent_cfg)
    assert "moments" in latent_batch and "video" not in latent_batch
    assert latent_batch["key"] == video_batch["key"]

    torch.manual_seed(0)
    module = instantiate(video_cfg.model).eval()
    encoded: list[int] = []
    encode = module.first_stage.posterior_moments
    module.first_stage.posterior_moments = lambda frames: encoded.append(len(frames)) or encode(frames)
    from_video = module.diffusion_loss(video_batch, generator=torch.Generator().manual_seed(5))
    frames_from_video = sum(encoded)
    from_latents = module.diffusion_loss(latent_batch, generator=torch.Generator().manual_seed(5))
    assert torch.equal(from_video, from_latents)
    assert frames_from_video > 0 and sum(encoded) == frames_from_video  # nothing encoded from latent shards


def test_a_set_made_with_other_settings_is_refused_naming_the_key(latent_set, tmp_path):
    data_dir, _ = latent_set
    cfg = _config(tmp_path, data_dir, "toy_scvideo", latents=True, extra=["resolution=toy64"])
    with pytest.raises(
        ConfigError, match=r"^data.train_urls: the latents in .* were made with another resolution.height"
    ):
        check_config(cfg)
    info = json.loads((Path(latent_set[1]) / INFO_FILE).read_text())
    assert info["height"] == 32 and info["frame_stride"] == 1


def test_bad_samples_are_reported_and_a_rerun_encodes_only_missing_shards(latent_set, tmp_path):
    import tarfile

    data_dir, _ = latent_set
    source = data_dir / "shapes" / "val" / "00000.tar"
    broken_dir = tmp_path / "videos"
    broken_dir.mkdir()
    with tarfile.open(source) as tar_in, tarfile.open(broken_dir / "00000.tar", "w") as tar_out:
        for member in tar_in.getmembers():
            data = tar_in.extractfile(member).read()
            if member.name.endswith(".mp4") and "000000001" in member.name:
                data = b"not a video"
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            tar_out.addfile(info, __import__("io").BytesIO(data))
    shutil.copy(broken_dir / "00000.tar", broken_dir / "00001.tar")
    overrides = [
        "experiment=toy_scvideo",
        "data=shapes",
        *TOY,
        f"paths.data_dir={data_dir}",
        f"data.val_urls={broken_dir}",
    ]
    out = tmp_path / "latents"
    skipped = encode_latent_shards(overrides, out, split="val", progress=False)
    assert [(s.reason, s.key) for s in skipped] == [("corrupt", "000000001")] * 2
    report = json.loads((out / REPORT_FILE).read_text())
    assert len(report) == 2 and {entry["url"] for entry in report} == {
        str(broken_dir / n) for n in ("00000.tar", "00001.tar")
    }
    (out / "00001.tar").unlink()
    written = (out / "00000.tar").stat().st_mtime_ns
    assert len(encode_latent_shards(overrides, out, split="val", progress=False)) == 1
    assert (out / "00000.tar").stat().st_mtime_ns == written and (out / "00001.tar").is_file()
    assert len(json.loads((out / REPORT_FILE).read_text())) == 2
