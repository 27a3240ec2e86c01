"""The Sparse Spatial-Temporal (SS-T) attention block of SCVideo (appendix section 1, Figure 5(b)).

It replaces SD's `BasicTransformerBlock` inside every `SpatialTransformer`. Order of the residual branches,
each with a pre-LayerNorm:

    x = x + SCAttn(norm1(x))                          eq. (2), pretrained `attn1` weights, sparse causal
    x = x + CrossAttn(norm2(x), text)                 eq. (3), pretrained `attn2`
    x = x + TempAttn1(norm_temp1(x) + pos)            eq. (4) over frames, new (`attn_temp1`)
    x = x + TempAttn2(norm_temp2(x) + pos)            eq. (4) over frames, new (`attn_temp2`)
    x = x + FF(norm3(x))                              pretrained `ff`

The first four follow Figure 5(b) (SCAttn -> spatial cross attention -> two temporal attentions). We keep
the feed-forward, with its pretrained weights, as the block's last branch, as the SD block does; Figure 5(b)
does not show it. (Tune-A-Video instead runs its single temporal attention after the feed-forward.) `pos` is
the sinusoidal frame-position embedding (`temporal_layers.frame_position_embedding`).

Temporal attention is bidirectional: every frame attends to every frame at the same spatial position. So only
the sparse causal attention is causal; the block and the whole video UNet are not.

At initialisation the temporal attentions' output projections are zero, so the block equals SD's block with
sparse causal self-attention; for a video of identical frames it equals SD's block frame by frame.
"""

from __future__ import annotations

from typing import Any

from einops import rearrange
from torch import Tensor

from modules.blocks.attention import BasicTransformerBlock
from modules.blocks.normalization import LayerNorm32
from modules.scvideo.sparse_causal_attention import SparseCausalAttention
from modules.scvideo.temporal_layers import (
    frame_position_embedding,
    require_num_frames,
    zero_output_attention,
)


class SparseSpatialTemporalBlock(BasicTransformerBlock):
    """SS-T block on the tokens of every frame: `[(B T), H*W, dim] -> [(B T), H*W, dim]`.

    Keeps SD's submodules and names (`attn1`, `attn2`, `ff`, `norm1..3`; `attn1` becomes a
    `SparseCausalAttention` with the same parameters) and adds `norm_temp1`, `attn_temp1`, `norm_temp2`,
    `attn_temp2`. The temporal attentions use the spatial attention's head layout (num_heads x head_dim).
    Called with the block kwarg `num_frames=T` (frames of one video consecutive on the batch axis).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int,
        context_dim: int | None = None,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__(dim, num_heads, head_dim, context_dim, dropout, use_checkpoint)
        self.attn1 = SparseCausalAttention(dim, num_heads, head_dim, dropout)
        self.norm_temp1 = LayerNorm32(dim)
        self.attn_temp1 = zero_output_attention(dim, num_heads, head_dim, dropout)
        self.norm_temp2 = LayerNorm32(dim)
        self.attn_temp2 = zero_output_attention(dim, num_heads, head_dim, dropout)

    def _forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        num_frames: int | None = None,
        **block_kwargs: Any,
    ) -> Tensor:
        frames = require_num_frames(num_frames, x.shape[0], type(self).__name__)
        x = x + self.attn1(self.norm1(x), num_frames=frames)
        x = x + self.attn2(self.norm2(x), context)
        x = self._temporal_attention(x, frames)
        return x + self.ff(self.norm3(x))

    def _temporal_attention(self, x: Tensor, num_frames: int) -> Tensor:
        """Both temporal attentions of eq. (4): F'' = RS(F; (b h w), f, c). `[(B T), L, C]` -> same."""
        num_tokens = x.shape[1]
        tokens = rearrange(x, "(b t) l c -> (b l) t c", t=num_frames)
        position = frame_position_embedding(num_frames, self.dim, tokens.device).to(tokens.dtype)
        tokens = tokens + self.attn_temp1(self.norm_temp1(tokens) + position)
        tokens = tokens + self.attn_temp2(self.norm_temp2(tokens) + position)
        return rearrange(tokens, "(b l) t c -> (b t) l c", l=num_tokens)
