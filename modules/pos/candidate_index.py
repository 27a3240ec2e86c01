"""The POS candidate pool index: which videos exist, where they are, and their caption embeddings.

Files (no pickle anywhere):

    index.safetensors       tensors: `caption_embeddings` [N, D] (unit vectors, EOT pooling of the model's text
                            encoder, see caption_embedding.py), `probe_embeddings` [P, D] (the encoder's
                            fingerprint), optionally `frame_embeddings` [N, E] and `frame_probe_embeddings`
                            (CLIP image tower, see frame_embedding.py); metadata `pos_index`: JSON with the format
                            version, the encoder identity, the entry count and the sidecar's SHA-256
    index.entries.jsonl     the sidecar: one JSON object per row, {"key", "caption", "url", "ordinal"}; `url` is the
                            shard and `ordinal` the sample's position in it (tar order), `key` its WebDataset key

Entries live in a sidecar rather than in the safetensors header because the header is limited to 100 MB
(about half a million captions), and a WebVid-size pool is ten million.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

FORMAT = "pos_candidate_index"
VERSION = 1
METADATA_KEY = "pos_index"


class IndexFormatError(ValueError):
    """The file is not a POS index, or its sidecar does not belong to it."""


@dataclass(frozen=True)
class IndexEntry:
    """One candidate video: WebDataset `key`, `caption`, shard `url` and `ordinal` (position in the shard)."""

    key: str
    caption: str
    url: str
    ordinal: int


@dataclass(frozen=True)
class Match:
    """A retrieved candidate: its `row` in the index, its `entry` and its cosine `score`."""

    row: int
    entry: IndexEntry
    score: float


def entries_path(index_path: str | Path) -> Path:
    """`pool/index.safetensors` -> `pool/index.entries.jsonl`."""
    path = Path(index_path)
    return path.with_name(f"{path.stem}.entries.jsonl")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class CandidateIndex:
    """Caption embeddings `[N, D]` of N candidate videos plus where to find each video.

    Attributes:
        caption_embeddings: unit vectors `[N, D]` float32.
        entries: N `IndexEntry`, row-aligned with the embeddings.
        encoder: the text encoder's identity (`CaptionEmbedder.identity`).
        probe_embeddings: `[P, D]` the encoder's probe fingerprint.
        frame_embeddings: optional unit vectors `[N, E]` of each video's frames (CLIP image tower).
        frame_encoder: identity of the frame encoder, when frame embeddings exist.
        frame_probe_embeddings: `[P, E]` CLIP text embeddings of the probe sentences, when frame embeddings exist.
    """

    caption_embeddings: Tensor
    entries: list[IndexEntry]
    encoder: dict[str, Any]
    probe_embeddings: Tensor
    frame_embeddings: Tensor | None = None
    frame_encoder: dict[str, Any] | None = None
    frame_probe_embeddings: Tensor | None = None

    def __post_init__(self) -> None:
        if self.caption_embeddings.ndim != 2 or self.caption_embeddings.shape[0] != len(self.entries):
            raise IndexFormatError(
                f"caption_embeddings {list(self.caption_embeddings.shape)} must be [N, D] with N = "
                f"{len(self.entries)} entries"
            )
        if self.frame_embeddings is not None and self.frame_embeddings.shape[0] != len(self.entries):
            raise IndexFormatError(
                f"frame_embeddings {list(self.frame_embeddings.shape)} must have one row per entry ({len(self.entries)})"
            )

    def __len__(self) -> int:
        return len(self.entries)

    # ---- search -------------------------------------------------------------------------------------
    def search(
        self,
        queries: Tensor,
        top_k: int = 1,
        *,
        frame_queries: Tensor | None = None,
        frame_weight: float = 0.0,
    ) -> list[list[Match]]:
        """The `top_k` best candidates per query, best first.

        score = cos(query, caption) (+ frame_weight * cos(frame_query, frames) when frame_weight > 0).
        queries: unit vectors `[Q, D]`; frame_queries: CLIP text unit vectors `[Q, E]` (needed when frame_weight > 0).
        """
        if len(self) == 0:
            raise IndexFormatError("the candidate index is empty: no video to retrieve <pool>")
        if queries.ndim != 2 or queries.shape[1] != self.caption_embeddings.shape[1]:
            raise ValueError(
                f"queries must be [Q, {self.caption_embeddings.shape[1]}] (the index's embedding width), got "
                f"{list(queries.shape)}"
            )
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k} <pos.top_k>")
        scores = queries.float().cpu() @ self.caption_embeddings.float().T
        if frame_weight > 0:
            if self.frame_embeddings is None or frame_queries is None:
                raise ValueError(
                    "pos.frame_weight > 0 needs an index built with frame embeddings (build_index --frame-arch) "
                    "and the frame encoder at query time <pos.frame_weight>"
                )
            scores = scores + frame_weight * (frame_queries.float().cpu() @ self.frame_embeddings.float().T)
        values, rows = scores.topk(min(top_k, len(self)), dim=1)
        return [
            [
                Match(row=int(r), entry=self.entries[int(r)], score=float(v))
                for v, r in zip(vs, rs, strict=True)
            ]
            for vs, rs in zip(values, rows, strict=True)
        ]

    # ---- files --------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write `path` (safetensors) and its entries sidecar; both appear atomically (written, then renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        sidecar = entries_path(path)
        sidecar_tmp = sidecar.with_name(sidecar.name + ".tmp")
        with sidecar_tmp.open("w", encoding="utf-8") as file:
            for entry in self.entries:
                file.write(json.dumps(asdict(entry), ensure_ascii=False) + "\n")
        tensors = {
            "caption_embeddings": self.caption_embeddings.float().contiguous(),
            "probe_embeddings": self.probe_embeddings.float().contiguous(),
        }
        if self.frame_embeddings is not None:
            tensors["frame_embeddings"] = self.frame_embeddings.float().contiguous()
        if self.frame_probe_embeddings is not None:
            tensors["frame_probe_embeddings"] = self.frame_probe_embeddings.float().contiguous()
        header = {
            "format": FORMAT,
            "version": VERSION,
            "encoder": self.encoder,
            "frame_encoder": self.frame_encoder,
            "num_entries": len(self.entries),
            "entries_file": sidecar.name,
            "entries_sha256": _sha256(sidecar_tmp),
        }
        tensors_tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tensors_tmp), metadata={METADATA_KEY: json.dumps(header)})
        sidecar_tmp.replace(sidecar)
        tensors_tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> CandidateIndex:
        """Read an index written by `save` (checks the format and that the sidecar belongs to it)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"POS index not found: {path} <pool>")
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            if METADATA_KEY not in metadata:
                raise IndexFormatError(f"{path} is not a POS index (no '{METADATA_KEY}' metadata) <pool>")
            tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118 (safe_open has no iter)
        header = json.loads(metadata[METADATA_KEY])
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise IndexFormatError(
                f"{path}: format {header.get('format')!r} version {header.get('version')!r}, expected {FORMAT!r} "
                f"version {VERSION}; rebuild it with `python -m modules.pos.build_index` <pool>"
            )
        sidecar = path.with_name(header["entries_file"])
        if not sidecar.is_file():
            raise FileNotFoundError(f"{path}: its entries file {sidecar} is missing <pool>")
        if _sha256(sidecar) != header["entries_sha256"]:
            raise IndexFormatError(
                f"{sidecar} does not belong to {path} (SHA-256 differs); rebuild the index <pool>"
            )
        entries = read_entries(sidecar)
        if len(entries) != header["num_entries"]:
            raise IndexFormatError(
                f"{sidecar}: {len(entries)} entries, the index says {header['num_entries']}"
            )
        return cls(
            caption_embeddings=tensors["caption_embeddings"],
            entries=entries,
            encoder=header["encoder"],
            probe_embeddings=tensors["probe_embeddings"],
            frame_embeddings=tensors.get("frame_embeddings"),
            frame_encoder=header.get("frame_encoder"),
            frame_probe_embeddings=tensors.get("frame_probe_embeddings"),
        )


def read_entries(path: Path) -> list[IndexEntry]:
    """Entries of a `.entries.jsonl` sidecar, in row order."""
    entries = []
    with path.open(encoding="utf-8") as file:
        for line_number, line in enumerate(file, start=1):
            try:
                entries.append(IndexEntry(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as error:
                raise IndexFormatError(f"{path}:{line_number}: not an index entry ({error})") from error
    return entries
