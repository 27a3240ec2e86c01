"""SCVideo attention: sparse causal attention (eq. (2)) and the SS-T block (Figure 5(b)) on tiny sizes."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange, repeat

from modules.blocks.attention import Attention, BasicTransformerBlock, attention_backend
from modules.scvideo import (
    SparseCausalAttention,
    SparseSpatialTemporalBlock,
    is_new_parameter,
    sparse_causal_tokens,
)

DIM, HEADS, HEAD_DIM, CONTEXT_DIM = 32, 2, 16, 8
NUM_FRAMES, NUM_TOKENS = 5, 6


def _frames(num_videos: int = 2, num_frames: int = NUM_FRAMES) -> torch.Tensor:
    """Random tokens `[(B T), L, DIM]`."""
    return torch.randn(num_videos * num_frames, NUM_TOKENS, DIM)


def _identical_frames(num_videos: int = 2, num_frames: int = NUM_FRAMES) -> torch.Tensor:
    """Each video repeats one random frame: `[(B T), L, DIM]`."""
    return repeat(torch.randn(num_videos, NUM_TOKENS, DIM), "b l c -> (b t) l c", t=num_frames)


def _by_frame(tokens: torch.Tensor, num_frames: int = NUM_FRAMES) -> torch.Tensor:
    return rearrange(tokens, "(b t) l c -> b t l c", t=num_frames)


def _with_temporal_output(block: SparseSpatialTemporalBlock) -> SparseSpatialTemporalBlock:
    """Give the zero-initialised temporal output projections random values (a 'trained' block)."""
    with torch.no_grad():
        for attention in (block.attn_temp1, block.attn_temp2):
            attention.to_out[0].weight.normal_(std=0.2)
            attention.to_out[0].bias.normal_(std=0.2)
    return block


def test_sparse_causal_tokens_are_first_and_previous_frame():
    tokens = repeat(torch.arange(NUM_FRAMES, dtype=torch.float32), "t -> (b t) l c", b=2, l=3, c=4)
    gathered = _by_frame(sparse_causal_tokens(tokens, NUM_FRAMES))
    assert gathered.shape == (2, NUM_FRAMES, 6, 4)
    for frame in range(NUM_FRAMES):
        assert torch.all(gathered[:, frame, :3] == 0)  # [f_1; ...]
        assert torch.all(gathered[:, frame, 3:] == max(frame - 1, 0))  # [...; f_{i-1}], clamped at f_1


@pytest.mark.parametrize("changed_frame", range(NUM_FRAMES))
def test_frame_output_depends_only_on_first_previous_and_own_frame(changed_frame):
    attention = SparseCausalAttention(DIM, HEADS, HEAD_DIM)
    x = _frames()
    out = _by_frame(attention(x, num_frames=NUM_FRAMES))
    changed = _by_frame(x.clone())
    changed[0, changed_frame] += torch.randn(NUM_TOKENS, DIM)
    out_changed = _by_frame(attention(rearrange(changed, "b t l c -> (b t) l c"), num_frames=NUM_FRAMES))

    for frame in range(NUM_FRAMES):
        moved = not torch.allclose(out_changed[0, frame], out[0, frame], atol=1e-6)
        depends = changed_frame in (0, frame - 1, frame)
        assert moved == depends, f"frame {frame} after changing frame {changed_frame}"
        if frame < changed_frame:  # causality
            assert torch.equal(out_changed[0, frame], out[0, frame])
    assert torch.equal(out_changed[1], out[1])  # the other video is untouched


def test_first_frame_and_identical_frames_equal_spatial_self_attention():
    sparse = SparseCausalAttention(DIM, HEADS, HEAD_DIM)
    spatial = Attention(DIM, None, HEADS, HEAD_DIM)
    spatial.load_state_dict(sparse.state_dict())  # same keys as SD's attn1

    x = _identical_frames()
    torch.testing.assert_close(sparse(x, num_frames=NUM_FRAMES), spatial(x), atol=1e-6, rtol=0)

    distinct = _frames()
    out, reference = _by_frame(sparse(distinct, num_frames=NUM_FRAMES)), _by_frame(spatial(distinct))
    torch.testing.assert_close(out[:, 0], reference[:, 0], atol=1e-6, rtol=0)  # frame 1 attends to [f_1; f_1]
    assert not torch.allclose(out[:, 1:], reference[:, 1:], atol=1e-3)


def test_sparse_causal_attention_sdpa_matches_naive_backend():
    attention = SparseCausalAttention(DIM, HEADS, HEAD_DIM)
    x = _frames()
    with attention_backend("naive"):
        naive = attention(x, num_frames=NUM_FRAMES)
    torch.testing.assert_close(attention(x, num_frames=NUM_FRAMES), naive, atol=1e-5, rtol=1e-5)


def test_sparse_causal_attention_rejects_a_batch_that_is_not_whole_clips():
    with pytest.raises(ValueError, match="num_frames"):
        SparseCausalAttention(DIM, HEADS, HEAD_DIM)(_frames(num_videos=1, num_frames=5), num_frames=3)


def test_sst_block_keeps_sd_keys_and_equals_sd_block_on_identical_frames():
    block = SparseSpatialTemporalBlock(DIM, HEADS, HEAD_DIM, context_dim=CONTEXT_DIM)
    sd_block = BasicTransformerBlock(DIM, HEADS, HEAD_DIM, context_dim=CONTEXT_DIM)
    shared = {key: value for key, value in block.state_dict().items() if not is_new_parameter(key)}
    sd_block.load_state_dict(shared, strict=True)
    new_modules = {key.split(".")[0] for key in block.state_dict() if is_new_parameter(key)}
    assert new_modules == {"norm_temp1", "attn_temp1", "norm_temp2", "attn_temp2"}

    x = _identical_frames()
    context = repeat(torch.randn(2, 7, CONTEXT_DIM), "b l d -> (b t) l d", t=NUM_FRAMES)
    out = block(x, context, num_frames=NUM_FRAMES)
    torch.testing.assert_close(out, sd_block(x, context), atol=1e-5, rtol=0)


def test_temporal_attention_is_bidirectional_so_the_block_is_not_causal():
    block = _with_temporal_output(SparseSpatialTemporalBlock(DIM, HEADS, HEAD_DIM, context_dim=CONTEXT_DIM))
    context = torch.randn(2 * NUM_FRAMES, 7, CONTEXT_DIM)
    x = _frames()
    changed = _by_frame(x.clone())
    changed[:, -1] += torch.randn(NUM_TOKENS, DIM)
    out = _by_frame(block(x, context, num_frames=NUM_FRAMES))
    out_changed = _by_frame(block(rearrange(changed, "b t l c -> (b t) l c"), context, num_frames=NUM_FRAMES))
    assert not torch.allclose(out_changed[:, 0], out[:, 0], atol=1e-5)


def test_frame_position_embedding_tells_identical_frames_apart():
    block = SparseSpatialTemporalBlock(DIM, HEADS, HEAD_DIM, context_dim=CONTEXT_DIM)
    x = _identical_frames()
    context = repeat(torch.randn(2, 7, CONTEXT_DIM), "b l d -> (b t) l d", t=NUM_FRAMES)
    at_init = _by_frame(block(x, context, num_frames=NUM_FRAMES))
    assert torch.allclose(at_init[:, 0], at_init[:, -1], atol=1e-6)
    trained = _by_frame(_with_temporal_output(block)(x, context, num_frames=NUM_FRAMES))
    # identical inputs and per-frame layers: only the frame positions can make the frames differ
    assert not torch.allclose(trained[:, 0], trained[:, -1], atol=1e-4)


def test_sst_block_requires_num_frames():
    block = SparseSpatialTemporalBlock(DIM, HEADS, HEAD_DIM, context_dim=CONTEXT_DIM)
    with pytest.raises(ValueError, match="num_frames is required"):
        block(_frames(), torch.randn(2 * NUM_FRAMES, 7, CONTEXT_DIM))
