"""Build the POS candidate-pool index from WebDataset video shards (video2dataset layout: KEY.mp4, KEY.txt, KEY.json).

    python -m modules.pos.build_index --urls /data/pool/{00000..00099}.tar --out pool/index.safetensors \
        --text-encoder clip_vit_l14 --set weights_path=/weights/sd-v1-4.ckpt
    python -m modules.pos.build_index --urls data/shapes_pool --out pool/index.safetensors \
        --checkpoint logs/train/runs/demo/checkpoints/last.ckpt        # the text encoder a run was trained with

Every caption is embedded with the model's text encoder (EOT pooling, `caption_embedding.py`); with
`--frame-arch` the middle frame of every video is also embedded by an open_clip image tower
(`frame_embedding.py`). The text encoder must be the one the sampling model uses: pass its config group entry
(`conf/text_encoder/<name>.yaml`) or a YAML file, plus `--set key=value` overrides (its `weights_path`), or the
training checkpoint whose stored run config names it. The index records the encoder's identity and sampling
refuses an index built with another encoder.

Resumable: each finished shard is written to `<out>.parts/` and recorded in `<out>.parts/progress.json`; a rerun
with the same URLs and encoder skips finished shards (`--restart` discards them). Samples without a caption or a
video are skipped and counted; an unreadable shard keeps the samples read before the damage and is logged.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from datamodules.frame_selection import VideoTooShortError
from datamodules.tar_samples import CorruptShardError, expand_shard_urls, iter_tar_samples
from datamodules.video_clip_stream import VIDEO_EXTENSIONS, read_caption
from datamodules.video_decoding import CorruptVideoError
from modules.pos.candidate_index import CandidateIndex, IndexEntry
from modules.pos.caption_embedding import CaptionEmbedder, EncoderMismatchError, check_same_encoder
from modules.pos.frame_embedding import FrameEmbedder

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
TEXT_ENCODER_GROUP = REPO_ROOT / "conf" / "text_encoder"
PROGRESS_FILE = "progress.json"


def parts_dir(out: str | Path) -> Path:
    """`pool/index.safetensors` -> `pool/index.safetensors.parts` (per-shard results while building)."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


@dataclass
class ShardPart:
    """One shard's rows: caption embeddings `[n, D]`, entries, optional frame embeddings `[n, E]`, skip counts."""

    captions: Tensor
    entries: list[IndexEntry]
    frames: Tensor | None
    skipped: Counter = field(default_factory=Counter)
    error: str | None = None

    def save(self, path: Path) -> None:
        tensors = {"caption_embeddings": self.captions.contiguous()}
        if self.frames is not None:
            tensors["frame_embeddings"] = self.frames.contiguous()
        entries = json.dumps([asdict(entry) for entry in self.entries], ensure_ascii=False)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"entries": entries})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ShardPart:
        with safe_open(str(path), framework="pt") as file:
            entries = [IndexEntry(**item) for item in json.loads(file.metadata()["entries"])]
            names = set(file.keys())
            captions = file.get_tensor("caption_embeddings")
            frames = file.get_tensor("frame_embeddings") if "frame_embeddings" in names else None
        return cls(captions=captions, entries=entries, frames=frames)


class IndexBuilder:
    """Embeds the captions (and optionally middle frames) of every sample of every shard.

    Args:
        embedder: the model's text encoder wrapped for EOT pooling.
        batch_size: captions per text-encoder forward.
        frame_embedder: optional CLIP image tower for frame embeddings.
        progress: tqdm bars over shards.
    """

    def __init__(
        self,
        embedder: CaptionEmbedder,
        *,
        batch_size: int = 256,
        frame_embedder: FrameEmbedder | None = None,
        progress: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
        self.embedder = embedder
        self.batch_size = batch_size
        self.frame_embedder = frame_embedder
        self.progress = progress

    def build(self, urls: Sequence[str], out: str | Path, *, restart: bool = False) -> CandidateIndex:
        """Embed every shard not finished yet, then merge all shards in URL order into `out`."""
        urls = list(urls)
        work = parts_dir(out)
        if restart and work.exists():
            shutil.rmtree(work)
        state = self._start_or_resume(work, urls)
        remaining = [url for url in urls if url not in state["done"]]
        if len(remaining) < len(urls):
            log.info(
                "resuming %s: %d of %d shards already embedded", work, len(urls) - len(remaining), len(urls)
            )
        with tqdm(
            total=len(urls), initial=len(urls) - len(remaining), unit="shard", disable=not self.progress
        ) as bar:
            for shard_number, url in enumerate(urls):
                if url in state["done"]:
                    continue
                part = self._embed_shard(url)
                name = f"{shard_number:06d}.safetensors"
                part.save(work / name)
                state["done"][url] = {
                    "part": name,
                    "samples": len(part.entries),
                    "skipped": dict(part.skipped),
                    "error": part.error,
                }
                _write_json(work / PROGRESS_FILE, state)
                bar.update(1)
                bar.set_postfix(samples=sum(done["samples"] for done in state["done"].values()))
        index = self._merge(work, urls, state)
        index.save(out)
        skipped = sum((Counter(done["skipped"]) for done in state["done"].values()), Counter())
        log.info(
            "wrote %s: %d candidates from %d shards; skipped %s", out, len(index), len(urls), dict(skipped)
        )
        shutil.rmtree(work)
        return index

    # ---- progress -----------------------------------------------------------------------------------
    def _encoder_state(self) -> dict[str, Any]:
        frame = self.frame_embedder
        return {
            "encoder": self.embedder.identity(),
            "probe_embeddings": self.embedder.probe_embeddings().tolist(),
            "frame_encoder": None if frame is None else frame.identity(),
            "frame_probe_embeddings": None if frame is None else frame.probe_embeddings().tolist(),
        }

    def _start_or_resume(self, work: Path, urls: list[str]) -> dict[str, Any]:
        progress_path = work / PROGRESS_FILE
        encoder_state = self._encoder_state()
        if not progress_path.is_file():
            work.mkdir(parents=True, exist_ok=True)
            state = {"urls": urls, **encoder_state, "done": {}}
            _write_json(progress_path, state)
            return state
        state = json.loads(progress_path.read_text())
        if state["urls"] != urls:
            raise ValueError(
                f"{work} holds a build of other shard URLs ({len(state['urls'])} shards, first "
                f"{state['urls'][:1]}); pass the same --urls to resume, or --restart"
            )
        try:
            check_same_encoder(
                state["encoder"], torch.tensor(state["probe_embeddings"]), self.embedder, str(work)
            )
        except EncoderMismatchError as error:
            raise ValueError(f"cannot resume: {error}; pass --restart to start over") from error
        if state["frame_encoder"] != encoder_state["frame_encoder"]:
            raise ValueError(
                f"{work} was started with frame encoder {state['frame_encoder']}; resume with it or --restart"
            )
        return state

    # ---- embedding ----------------------------------------------------------------------------------
    def _embed_shard(self, url: str) -> ShardPart:
        captions: list[str] = []
        entries: list[IndexEntry] = []
        frames: list[Tensor] = []
        skipped: Counter = Counter()
        error = None
        try:
            for ordinal, sample in enumerate(iter_tar_samples(url)):
                kept = self._read_sample(sample.members, skipped)
                if kept is None:
                    continue
                caption, frame = kept
                captions.append(caption)
                entries.append(IndexEntry(key=sample.key, caption=caption, url=url, ordinal=ordinal))
                if frame is not None:
                    frames.append(frame)
        except CorruptShardError as damage:
            error = str(damage)
            log.warning("keeping the %d samples read before the damage: %s", len(entries), error)
        frame_embeddings = None if self.frame_embedder is None else self._embed_frames(frames)
        return ShardPart(self._embed_captions(captions), entries, frame_embeddings, skipped, error)

    def _read_sample(self, members: dict[str, bytes], skipped: Counter) -> tuple[str, Tensor | None] | None:
        """(caption, middle frame or None) of one sample, or None after counting why it is skipped."""
        caption = read_caption(members)
        video = next((members[ext] for ext in VIDEO_EXTENSIONS if members.get(ext)), None)
        if caption is None:
            skipped["missing_caption"] += 1
            return None
        if video is None:
            skipped["missing_video"] += 1
            return None
        if self.frame_embedder is None:
            return caption, None
        try:
            return caption, self.frame_embedder.decode_middle_frame(video)
        except (CorruptVideoError, VideoTooShortError):
            skipped["corrupt_video"] += 1
            return None

    def _embed_captions(self, captions: list[str]) -> Tensor:
        """Unit caption embeddings `[n, D]` (CPU), `batch_size` captions per forward."""
        embeddings = [self.embedder.pooled(chunk).cpu() for chunk in _chunks(captions, self.batch_size)]
        return torch.cat(embeddings) if embeddings else torch.zeros(0, self.embedder.embedding_dim)

    def _embed_frames(self, frames: list[Tensor]) -> Tensor:
        """Unit frame embeddings `[n, E]` (CPU) of middle frames `[3, H, W]`, `batch_size` per forward."""
        embedder = self.frame_embedder
        embeddings = [embedder.embed_frames(torch.stack(chunk)) for chunk in _chunks(frames, self.batch_size)]
        return torch.cat(embeddings) if embeddings else torch.zeros(0, embedder.embed_dim)

    def _merge(self, work: Path, urls: list[str], state: dict[str, Any]) -> CandidateIndex:
        parts = [ShardPart.load(work / state["done"][url]["part"]) for url in urls]
        frames = None
        if self.frame_embedder is not None:
            frames = torch.cat([part.frames for part in parts])
        return CandidateIndex(
            caption_embeddings=torch.cat([part.captions for part in parts]),
            entries=[entry for part in parts for entry in part.entries],
            encoder=state["encoder"],
            probe_embeddings=torch.tensor(state["probe_embeddings"]),
            frame_embeddings=frames,
            frame_encoder=state["frame_encoder"],
            frame_probe_embeddings=(
                None
                if state["frame_probe_embeddings"] is None
                else torch.tensor(state["frame_probe_embeddings"])
            ),
        )


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


# ---- command line -----------------------------------------------------------------------------------
def text_encoder_config(
    name_or_path: str | None, checkpoint: str | None, overrides: Sequence[str]
) -> DictConfig:
    """The text encoder config: from a training checkpoint's run config, a YAML file, or conf/text_encoder/<name>.yaml,
    with `key=value` overrides applied."""
    if checkpoint is not None:
        stored = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("run_config")
        if stored is None:
            raise ValueError(f"{checkpoint} has no stored run config; pass --text-encoder instead")
        config = OmegaConf.create(stored["model"]["text_encoder"])
    else:
        name = name_or_path or "tiny"
        path = Path(name) if Path(name).suffix in (".yaml", ".yml") else TEXT_ENCODER_GROUP / f"{name}.yaml"
        if not path.is_file():
            entries = sorted(p.stem for p in TEXT_ENCODER_GROUP.glob("*.yaml"))
            raise FileNotFoundError(
                f"--text-encoder {name!r}: no {path}; use a YAML file or one of {entries}"
            )
        config = OmegaConf.load(path)
    return OmegaConf.merge(config, OmegaConf.from_dotlist(list(overrides)))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--urls", nargs="+", required=True, help="shards: paths, directories, brace patterns, pipe:"
    )
    parser.add_argument("--out", required=True, type=Path, help="index file to write (.safetensors)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--text-encoder", help="conf/text_encoder entry (tiny, clip_vit_l14, ...) or a YAML file"
    )
    source.add_argument("--checkpoint", help="training checkpoint whose run config names the text encoder")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="text encoder config override, e.g. weights_path=/weights/sd-v1-4.ckpt",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="captions (or frames) per forward")
    parser.add_argument("--device", default="cpu", help="where the encoders run (cpu, cuda)")
    parser.add_argument("--frame-arch", help="open_clip model name for optional frame embeddings (ViT-L-14)")
    parser.add_argument("--frame-weights", help="local open_clip weights for --frame-arch")
    parser.add_argument("--frame-quick-gelu", action="store_true", help="QuickGELU (OpenAI CLIP weights)")
    parser.add_argument(
        "--restart", action="store_true", help="discard the per-shard progress of an earlier run"
    )
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> CandidateIndex:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    encoder = instantiate(text_encoder_config(args.text_encoder, args.checkpoint, args.overrides)).to(
        args.device
    )
    frame_embedder = None
    if args.frame_arch is not None:
        frame_embedder = FrameEmbedder(
            args.frame_arch, args.frame_weights, force_quick_gelu=args.frame_quick_gelu, device=args.device
        )
    builder = IndexBuilder(
        CaptionEmbedder(encoder.eval()),
        batch_size=args.batch_size,
        frame_embedder=frame_embedder,
        progress=not args.no_progress,
    )
    return builder.build(expand_shard_urls(args.urls, "--urls"), args.out, restart=args.restart)


if __name__ == "__main__":
    main()
