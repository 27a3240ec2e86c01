"""Sparse causal self-attention, SCVideo appendix eq. (2) (from Tune-A-Video).

Queries come from frame i, keys and values from the concatenation [f_1; f_{i-1}] of the first frame and the
previous frame (the index i-1 is clamped at frame 1, so frame 1 attends to [f_1; f_1]). The projections are
the pretrained spatial self-attention's (`attn1.to_q/to_k/to_v/to_out` of SD), so this module keeps exactly
the state-dict keys of `modules.blocks.attention.Attention`.

Two properties follow from eq. (2) and are tested (tests/test_scvideo_attention.py):
- For frame 1, and for every frame of a video whose frames are identical, the keys are one frame's tokens
  duplicated: softmax over [k; k] gives each token half the weight twice, so the result equals ordinary
  spatial self-attention (the SD per-frame output).
- Causality: the output for frame i depends on frames 1, i-1 and i only, never on a later frame.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from modules.blocks.attention import Attention, dot_product_attention


def sparse_causal_tokens(tokens: Tensor, num_frames: int) -> Tensor:
    """Gather the key/value tokens of eq. (2) for every frame.

    tokens: `[(B T), L, C]` (frames of one video consecutive) -> `[(B T), 2 L, C]`, where frame i gets
    [tokens of frame 1; tokens of frame max(i - 1, 1)].
    """
    frames = rearrange(tokens, "(b t) l c -> b t l c", t=num_frames)
    first = frames[:, :1].expand(-1, num_frames, -1, -1)
    previous_index = (torch.arange(num_frames, device=tokens.device) - 1).clamp(min=0)
    previous = frames[:, previous_index]
    return rearrange(torch.cat([first, previous], dim=2), "b t l c -> (b t) l c")


class SparseCausalAttention(Attention):
    """Spatial self-attention with keys/values from the first and the previous frame (eq. (2)).

    x: `[(B T), L, query_dim]` (the h*w tokens of every frame, frames of one video consecutive) ->
    `[(B T), L, query_dim]`. Keys and values are projected once per frame and then gathered, which equals
    projecting the concatenation [f_1; f_{i-1}] because the projections act token by token.
    """

    def __init__(self, query_dim: int, num_heads: int = 8, head_dim: int = 64, dropout: float = 0.0) -> None:
        super().__init__(query_dim, None, num_heads, head_dim, dropout)

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        if x.shape[0] % num_frames:
            raise ValueError(
                f"SparseCausalAttention: the batch axis ({x.shape[0]}) must be (B T) with T = num_frames = "
                f"{num_frames}"
            )
        query = self.to_q(x)
        # Q = W^Q f_i, K = W^K [f_1; f_{i-1}], V = W^V [f_1; f_{i-1}]  (eq. (2))
        key = sparse_causal_tokens(self.to_k(x), num_frames)
        value = sparse_causal_tokens(self.to_v(x), num_frames)
        query, key, value = (
            rearrange(projection, "n l (heads d) -> n heads l d", heads=self.num_heads)
            for projection in (query, key, value)
        )
        out = dot_product_attention(query, key, value)
        return self.to_out(rearrange(out, "n heads l d -> n l (heads d)"))
