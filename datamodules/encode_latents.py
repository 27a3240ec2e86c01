"""Turn video shards into latent shards (format: datamodules/latent_shards.py).

    python -m datamodules.encode_latents experiment=artv_webvid backbone.pretrained=/w/v2-1_512-ema-pruned.ckpt \
        'data.train_urls="/data/webvid/shards/{00000..09999}.tar"' --out /data/webvid/latents/train --workers 2
    python -m datamodules.encode_latents experiment=toy_scvideo --split val --out data/shapes_latents/val

The positional arguments are Hydra overrides of conf/train.yaml: the experiment decides the first stage, its weights,
the resolution and the frame sampling. One output shard per input shard, written to a temporary file and renamed, so
a rerun (after a crash, or with more input shards) encodes only the shards that are not there yet. Samples that
cannot be used (no video, empty, corrupt, no video stream, fewer frames than `data.num_frames` at the sampling
rate, no caption) are skipped and listed once each, by key and `videoid`, in `encode_report.json`.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import tarfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from einops import rearrange
from tqdm.auto import tqdm

from datamodules.frame_selection import FrameSelection, VideoTooShortError
from datamodules.latent_shards import (
    MOMENTS_MEMBER,
    REPORT_FILE,
    TEXT_MEMBER,
    LatentSetInfo,
    encode_array,
    latent_set_info,
)
from datamodules.tar_samples import CorruptShardError, RawSample, expand_shard_urls, iter_tar_samples
from datamodules.video_clip_stream import VIDEO_EXTENSIONS, read_caption
from datamodules.video_decoding import CorruptVideoError, decode_clip, stream_timing

log = logging.getLogger("encode_latents")
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@dataclass(frozen=True)
class Skipped:
    """A sample left out of the latent shards, and why."""

    key: str
    videoid: str | None
    url: str
    reason: str  # missing_video | empty | no_video_stream | corrupt | too_short | missing_caption
    detail: str


def compose_experiment(overrides: Sequence[str]) -> Any:
    """conf/train.yaml with `overrides`, paths relative to the working directory (no Hydra run)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from modules.runtime.run_directory import register_resolvers

    register_resolvers()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config_name="train", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.root_dir = os.getcwd()
        cfg.paths.output_dir = os.getcwd()
    return cfg


def frames_at_sampling_rate(data: bytes, selection: FrameSelection, height: int, width: int) -> np.ndarray:
    """Every frame of a video at the selection's stride or target fps, resized and centre-cropped like the video
    loader's clips: uint8 `[N, height, width, 3]`. Raises CorruptVideoError / VideoTooShortError as decode_clip."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise CorruptVideoError("the file has no video stream")
            fps, count = stream_timing(container, container.streams.video[0])
    except av.FFmpegError as error:
        raise CorruptVideoError(f"{type(error).__name__}: {error}") from error
    step = FrameSelection(2, selection.frame_stride, selection.target_fps).offsets(fps)[1] or 1
    num_frames = max(1, (count - 1) // step + 1)
    while num_frames > 1:  # the exact count that fits (resampling rounds offsets)
        layout = FrameSelection(num_frames, selection.frame_stride, selection.target_fps)
        if layout.offsets(fps)[-1] < count:
            break
        num_frames -= 1
    whole = FrameSelection(num_frames, selection.frame_stride, selection.target_fps)
    return decode_clip(data, whole, height=height, width=width, rng=None).frames


class ShardEncoder:
    """Encodes shards with one experiment's first stage (and text encoder), in one process."""

    def __init__(self, overrides: Sequence[str], dtype: str, with_text: bool, chunk_frames: int) -> None:
        from hydra.utils import instantiate

        from modules.checkpoints.sd_checkpoint import load_sd_checkpoint

        cfg = compose_experiment(overrides)
        self.first_stage = instantiate(cfg.backbone.first_stage).eval()
        self.text_encoder = instantiate(cfg.text_encoder).eval() if with_text else None
        pretrained = cfg.backbone.get("pretrained")
        if pretrained is not None:
            own_text = getattr(self.text_encoder, "weights_path", None) is not None
            load_sd_checkpoint(
                pretrained, first_stage=self.first_stage, text_encoder=None if own_text else self.text_encoder
            )
        self.selection = FrameSelection(cfg.data.num_frames, cfg.data.frame_stride, cfg.data.target_fps)
        self.height, self.width = int(cfg.resolution.height), int(cfg.resolution.width)
        self.dtype = np.dtype(dtype)
        self.chunk_frames = chunk_frames

    @torch.no_grad()
    def moments(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames `[N, H, W, 3]` -> posterior moments `[N, M, h, w]` in the storage dtype."""
        pixels = rearrange(torch.from_numpy(frames), "n h w c -> n c h w").float() / 127.5 - 1.0
        chunks = [self.first_stage.posterior_moments(chunk) for chunk in pixels.split(self.chunk_frames)]
        return torch.cat(chunks).numpy().astype(self.dtype)

    @torch.no_grad()
    def text_embedding(self, caption: str) -> np.ndarray:
        return self.text_encoder([caption])[0].float().numpy().astype(np.float16)

    def encode_sample(self, sample: RawSample) -> dict[str, bytes] | Skipped:
        """The latent sample's members, or why it is skipped."""
        metadata = _metadata(sample.members)

        def skipped(reason: str, detail: str) -> Skipped:
            videoid = metadata.get("videoid") if isinstance(metadata, dict) else None
            return Skipped(sample.key, None if videoid is None else str(videoid), sample.url, reason, detail)

        extension = next((ext for ext in VIDEO_EXTENSIONS if ext in sample.members), None)
        if extension is None:
            return skipped("missing_video", "no " + "/".join(VIDEO_EXTENSIONS) + " member")
        if not sample.members[extension]:
            return skipped("empty", f"{sample.key}.{extension} is 0 bytes")
        caption = read_caption(sample.members)
        if caption is None:
            return skipped("missing_caption", "no .txt nor json 'caption'")
        try:
            frames = frames_at_sampling_rate(
                sample.members[extension], self.selection, self.height, self.width
            )
        except CorruptVideoError as error:
            reason = "no_video_stream" if "no video stream" in str(error) else "corrupt"
            return skipped(reason, str(error))
        except VideoTooShortError as error:
            return skipped("too_short", str(error))
        if len(frames) < self.selection.num_frames:
            return skipped(
                "too_short",
                f"{len(frames)} frames at the sampling rate, clips need {self.selection.num_frames}",
            )
        members = {
            MOMENTS_MEMBER: encode_array(self.moments(frames)),
            "txt": caption.encode("utf-8"),
            "json": json.dumps(
                {**(metadata if isinstance(metadata, dict) else {}), "latent_frames": len(frames)}
            ).encode(),
        }
        if self.text_encoder is not None:
            members[TEXT_MEMBER] = encode_array(self.text_embedding(caption))
        return members

    def encode_shard(self, url: str, out_path: Path) -> list[Skipped]:
        """Write the latent shard of one video shard (atomically); returns the skipped samples."""
        skipped: list[Skipped] = []
        temporary = out_path.with_name(f".{out_path.name}.tmp{os.getpid()}")
        try:
            with tarfile.open(temporary, "w") as tar:
                for sample in iter_tar_samples(url):
                    result = self.encode_sample(sample)
                    if isinstance(result, Skipped):
                        skipped.append(result)
                        continue
                    for suffix, data in result.items():
                        info = tarfile.TarInfo(f"{sample.key}.{suffix}")
                        info.size, info.mtime = len(data), 0
                        tar.addfile(info, io.BytesIO(data))
        except CorruptShardError as error:
            temporary.unlink(missing_ok=True)
            return [Skipped("-", None, url, "corrupt_shard", str(error))]
        os.replace(temporary, out_path)
        return skipped


def _metadata(members: dict[str, bytes]) -> Any:
    try:
        return json.loads(members.get("json", b"{}"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


_WORKER: ShardEncoder | None = None


def _init_worker(overrides: Sequence[str], dtype: str, with_text: bool, chunk_frames: int) -> None:
    global _WORKER
    torch.set_num_threads(1)
    _WORKER = ShardEncoder(overrides, dtype, with_text, chunk_frames)


def _encode_in_worker(url: str, out_path: str) -> list[Skipped]:
    assert _WORKER is not None
    return _WORKER.encode_shard(url, Path(out_path))


def encode_latent_shards(
    overrides: Sequence[str],
    out: str | Path,
    split: str = "train",
    workers: int = 1,
    dtype: str = "float16",
    with_text: bool = False,
    chunk_frames: int = 16,
    progress: bool = True,
) -> list[Skipped]:
    """Encode every video shard of `data.<split>_urls` that has no latent shard in `out` yet; returns the skipped
    samples of this call (the report file accumulates them over reruns)."""
    cfg = compose_experiment(overrides)
    if cfg.data.get("toy_shards") is not None:
        from hydra.utils import instantiate

        instantiate(
            cfg.data.toy_shards
        ).generate()  # the toy videos, made on first use as the datamodule does
    key = f"data.{split}_urls"
    urls = expand_shard_urls(cfg.data[f"{split}_urls"], key)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = latent_set_info(cfg, dtype, with_text)
    existing = LatentSetInfo.read(out)
    if existing is not None and existing != info:
        raise ValueError(
            f"--out {out} holds latents made with other settings ({out / 'latents_info.json'}); use another "
            "directory or the settings they were made with"
        )
    info.write(out)
    jobs = [(url, out / Path(url.split("::")[-1]).name) for url in urls]
    todo = [(url, path) for url, path in jobs if not path.exists()]
    log.info("%d of %d shards to encode into %s", len(todo), len(jobs), out)
    started = time.monotonic()
    skipped: list[Skipped] = []
    bar = tqdm(total=len(todo), unit="shard", disable=not progress)
    if workers <= 1:
        encoder = ShardEncoder(overrides, dtype, with_text, chunk_frames) if todo else None
        for url, path in todo:
            skipped += encoder.encode_shard(url, path)
            bar.update()
    else:
        context = get_context("spawn")
        initargs = (list(overrides), dtype, with_text, chunk_frames)
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=initargs
        ) as pool:
            for result in pool.map(_encode_in_worker, [u for u, _ in todo], [str(p) for _, p in todo]):
                skipped += result
                bar.update()
    bar.close()
    _append_report(out, skipped)
    log.info(
        "encoded %d shards in %.0f s; %d samples skipped (%s), listed in %s",
        len(todo),
        time.monotonic() - started,
        len(skipped),
        ", ".join(f"{r} {sum(s.reason == r for s in skipped)}" for r in sorted({s.reason for s in skipped}))
        or "none",
        out / REPORT_FILE,
    )
    return skipped


def _append_report(out: Path, skipped: list[Skipped]) -> None:
    path = out / REPORT_FILE
    entries = json.loads(path.read_text()) if path.is_file() else []
    seen = {(entry["url"], entry["key"]) for entry in entries}
    entries += [vars(s) for s in skipped if (s.url, s.key) not in seen]
    path.write_text(json.dumps(entries, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides of conf/train.yaml, e.g. experiment=artv_webvid"
    )
    parser.add_argument("--out", required=True, help="directory of the latent shards")
    parser.add_argument("--split", choices=["train", "val"], default="train", help="encode data.<split>_urls")
    parser.add_argument("--workers", type=int, default=1, help="encoding processes (one first stage each)")
    parser.add_argument(
        "--dtype", choices=["float16", "float32"], default="float16", help="moments' storage type"
    )
    parser.add_argument(
        "--text-embeddings", action="store_true", help="also store the caption's text embedding"
    )
    parser.add_argument("--chunk-frames", type=int, default=16, help="frames per first-stage call")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    encode_latent_shards(
        args.overrides,
        args.out,
        args.split,
        args.workers,
        args.dtype,
        args.text_embeddings,
        args.chunk_frames,
    )


if __name__ == "__main__":
    main()
