"""POS candidate pool: index building (resumable, encoder identity), retrieval by caption, reading a candidate back."""

from __future__ import annotations

import json

import pytest
import torch

from datamodules.frame_selection import FrameSelection
from datamodules.toy_shapes import toy_sample_factory
from modules.pos.build_index import IndexBuilder, main, parts_dir
from modules.pos.candidate_index import CandidateIndex, IndexEntry, IndexFormatError, entries_path
from modules.pos.candidate_video import CandidateVideoError, read_candidate_clip
from modules.pos.caption_embedding import CaptionEmbedder, EncoderMismatchError, check_same_encoder
from modules.pos.frame_embedding import FrameEmbedder
from tests.helpers.toy_pool import (
    POOL_FRAMES,
    POOL_SEED,
    POOL_SIZE,
    build_toy_index,
    tiny_text_encoder,
    write_toy_pool,
)

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def test_retrieval_returns_the_exact_caption_match(tmp_path):
    encoder = tiny_text_encoder()
    captions = write_toy_pool(tmp_path / "pool", 8)
    assert len(set(captions)) == 8
    urls = [str(path) for path in sorted((tmp_path / "pool").glob("*.tar"))]
    out = tmp_path / "index.safetensors"
    IndexBuilder(CaptionEmbedder(encoder), batch_size=3, progress=False).build(urls, out)
    index = CandidateIndex.load(out)
    assert [entry.caption for entry in index.entries] == captions
    # queries embedded one at a time (as at sampling time) against captions embedded in batches of 3
    queries = torch.cat([CaptionEmbedder(encoder).pooled([caption]) for caption in captions])
    for caption, matches in zip(captions, index.search(queries, top_k=3), strict=True):
        assert matches[0].entry.caption == caption
        assert matches[0].score == pytest.approx(1.0, abs=1e-4)
        assert matches[1].score < matches[0].score - 1e-3


def test_index_files_round_trip_and_the_sidecar_is_checked(tmp_path):
    out = build_toy_index(tmp_path, count=5)
    index = CandidateIndex.load(out)
    assert len(index) == 5 and index.caption_embeddings.shape == (5, 64)
    torch.testing.assert_close(index.caption_embeddings.norm(dim=1), torch.ones(5))
    assert all(entry.url.endswith(".tar") for entry in index.entries)
    assert [entry.ordinal for entry in index.entries] == [0, 1, 2, 3, 0]
    sidecar = entries_path(out)
    lines = sidecar.read_text().splitlines()
    entry = json.loads(lines[0])
    entry["caption"] = "a tampered caption"
    sidecar.write_text("\n".join([json.dumps(entry), *lines[1:]]) + "\n")
    with pytest.raises(IndexFormatError, match="SHA-256"):
        CandidateIndex.load(out)


def test_build_resumes_from_per_shard_progress(tmp_path, monkeypatch):
    write_toy_pool(tmp_path / "pool", count=8, per_shard=2)
    urls = [str(path) for path in sorted((tmp_path / "pool").glob("*.tar"))]
    assert len(urls) == 4
    out = tmp_path / "index.safetensors"
    builder = IndexBuilder(CaptionEmbedder(tiny_text_encoder()), progress=False)
    embedded: list[str] = []
    original = IndexBuilder._embed_shard

    def interrupted(self, url):
        if len(embedded) == 2:
            raise KeyboardInterrupt
        embedded.append(url)
        return original(self, url)

    monkeypatch.setattr(IndexBuilder, "_embed_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        builder.build(urls, out)
    progress = json.loads((parts_dir(out) / "progress.json").read_text())
    assert sorted(progress["done"]) == urls[:2]
    assert not out.exists()

    embedded.clear()
    monkeypatch.setattr(
        IndexBuilder, "_embed_shard", lambda self, url: embedded.append(url) or original(self, url)
    )
    resumed = builder.build(urls, out)
    assert embedded == urls[2:]  # finished shards are not embedded again
    assert not parts_dir(out).exists()
    fresh = IndexBuilder(CaptionEmbedder(tiny_text_encoder()), progress=False).build(
        urls, tmp_path / "fresh.safetensors"
    )
    assert resumed.entries == fresh.entries
    torch.testing.assert_close(resumed.caption_embeddings, fresh.caption_embeddings)


def test_resuming_with_other_urls_or_another_encoder_is_refused(tmp_path):
    write_toy_pool(tmp_path / "pool", count=4, per_shard=2)
    urls = [str(path) for path in sorted((tmp_path / "pool").glob("*.tar"))]
    out = tmp_path / "index.safetensors"
    work = parts_dir(out)
    work.mkdir()
    embedder = CaptionEmbedder(tiny_text_encoder())
    state = {
        "urls": urls,
        "encoder": embedder.identity(),
        "probe_embeddings": embedder.probe_embeddings().tolist(),
        "frame_encoder": None,
        "frame_probe_embeddings": None,
        "done": {},
    }
    (work / "progress.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="other shard URLs"):
        IndexBuilder(embedder, progress=False).build(urls[:1], out)
    with pytest.raises(ValueError, match="--restart"):
        IndexBuilder(CaptionEmbedder(tiny_text_encoder(init_seed=1)), progress=False).build(urls, out)
    rebuilt = IndexBuilder(CaptionEmbedder(tiny_text_encoder(init_seed=1)), progress=False).build(
        urls, out, restart=True
    )
    assert len(rebuilt) == 4


def test_an_index_of_another_text_encoder_is_rejected(tmp_path):
    index = CandidateIndex.load(build_toy_index(tmp_path, count=2))
    check_same_encoder(index.encoder, index.probe_embeddings, CaptionEmbedder(tiny_text_encoder()), "index")
    with pytest.raises(EncoderMismatchError, match="other weights"):
        check_same_encoder(
            index.encoder, index.probe_embeddings, CaptionEmbedder(tiny_text_encoder(init_seed=5)), "index"
        )
    other_layer = tiny_text_encoder()
    other_layer.layer = "last"
    with pytest.raises(EncoderMismatchError, match="layer"):
        check_same_encoder(index.encoder, index.probe_embeddings, CaptionEmbedder(other_layer), "index")


def test_command_line_builds_an_index_with_a_text_encoder_config(tmp_path):
    write_toy_pool(tmp_path / "pool", count=3)
    out = tmp_path / "cli" / "index.safetensors"
    index = main(
        [
            "--urls",
            str(tmp_path / "pool"),
            "--out",
            str(out),
            "--text-encoder",
            "tiny",
            "--set",
            "init_seed=0",
            "--no-progress",
        ]
    )
    assert out.is_file() and entries_path(out).is_file() and len(index) == 3
    check_same_encoder(index.encoder, index.probe_embeddings, CaptionEmbedder(tiny_text_encoder()), str(out))


def test_samples_without_caption_or_video_are_skipped(tmp_path):
    from tests.helpers.data_shards import sample_members, write_raw_shard

    make_sample = toy_sample_factory(POOL_SEED, "val", POOL_SIZE, POOL_FRAMES, 8.0)
    video = make_sample(0, "k").video
    shard = write_raw_shard(
        tmp_path / "pool" / "00000.tar",
        sample_members("a", video, "a red circle moving left")
        + sample_members("b", video, None)
        + sample_members("c", None, "a blue square moving up")
        + sample_members("d", video, "a green triangle moving down"),
    )
    unusable = write_raw_shard(tmp_path / "pool" / "00001.tar", sample_members("e", None, "a caption"))
    index = IndexBuilder(CaptionEmbedder(tiny_text_encoder()), progress=False).build(
        [str(shard), str(unusable)], tmp_path / "i.safetensors"
    )
    assert [(entry.key, entry.ordinal) for entry in index.entries] == [("a", 0), ("d", 3)]
    assert index.caption_embeddings.shape == (2, 64)


def test_a_candidate_clip_is_read_back_in_the_sampling_layout(tmp_path):
    index = CandidateIndex.load(build_toy_index(tmp_path, count=4))
    entry = index.entries[2]
    clip = read_candidate_clip(entry, FrameSelection(8, frame_stride=1), height=16, width=16)
    assert clip.shape == (8, 3, 16, 16) and clip.min() >= -1.0 and clip.max() <= 1.0
    assert clip.amax() > 0.0  # the coloured shape is there
    moved = IndexEntry(key="nonexistent", caption=entry.caption, url=entry.url, ordinal=entry.ordinal)
    with pytest.raises(CandidateVideoError, match="changed since the index was built"):
        read_candidate_clip(moved, FrameSelection(8, frame_stride=1), height=16, width=16)
    with pytest.raises(CandidateVideoError, match=r"too short|needs"):
        read_candidate_clip(entry, FrameSelection(8, frame_stride=4), height=16, width=16)


def test_frame_embeddings_are_stored_and_can_weigh_in_the_ranking(tmp_path):
    write_toy_pool(tmp_path / "pool", count=4)
    urls = [str(path) for path in sorted((tmp_path / "pool").glob("*.tar"))]
    frames = FrameEmbedder(TINY_CLIP, None, random_init_ok=True)
    out = tmp_path / "index.safetensors"
    IndexBuilder(CaptionEmbedder(tiny_text_encoder()), frame_embedder=frames, progress=False).build(urls, out)
    index = CandidateIndex.load(out)
    assert index.frame_embeddings.shape == (4, 32)
    torch.testing.assert_close(index.frame_probe_embeddings, frames.probe_embeddings())
    query = CaptionEmbedder(tiny_text_encoder()).pooled([index.entries[1].caption])
    frame_query = frames.embed_texts([index.entries[1].caption])
    caption_only = index.search(query, top_k=4)[0]
    combined = index.search(query, top_k=4, frame_queries=frame_query, frame_weight=0.5)[0]
    expected = {m.row: m.score for m in caption_only}
    frame_scores = (frame_query @ index.frame_embeddings.T)[0]
    for match in combined:
        assert match.score == pytest.approx(
            expected[match.row] + 0.5 * float(frame_scores[match.row]), abs=1e-5
        )
