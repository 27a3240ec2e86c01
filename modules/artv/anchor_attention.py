"""Anchor-frame cross-attention: one extra transformer block in every spatial transformer of an ART-V UNet.

Our interpretation (not stated by the paper; docs/ARCHITECTURE.md, "ART-V: what the paper does not state").
ART-V conditions every frame on a "global anchor frame", but the supplementary does not say how. UNet +
T2I-Adapter gives 942.75 M (Φdynamic) and 41.88 M (Φmask) parameters, not Table 1's 1167.69 M / 51.18 M, and
misses Table 2's FLOPs. Both totals are reproduced by one extra `BasicTransformerBlock` after the SD blocks of
every `SpatialTransformer`, whose cross-attention reads a 64-dimensional context. We read that context as the
anchor frame: its latent `[B, 4, h, w]` cut into 4x4 patches, each patch flattened to 4 * 16 = 64 values, one
cross-attention token per patch (`[B, (h/4)(w/4), 64]`), used as they are (no learned embedding, no position
code). The paper-size configs enable the block; `anchor_attention: false` removes it.

New parameters live under `*.anchor_block.*` so that every SD parameter keeps its key. The block's three output
projections start at zero, so a fresh anchor block is the identity and an SD-initialised Φdynamic starts out
computing exactly the SD UNet (plus adapter features).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from einops import rearrange
from torch import Tensor

from modules.blocks.attention import Attention, BasicTransformerBlock, KeyValue, SpatialTransformer
from modules.blocks.block_kinds import ContextBlock
from modules.blocks.normalization import zero_module
from modules.unet.block_factory import UNetBlockFactory

ANCHOR_KEY_MARKER = ".anchor_block."


def anchor_tokens(anchor: Tensor, patch_size: int) -> Tensor:
    """Cut the anchor latent into non-overlapping patches, one token each.

    anchor: `[B, C, h, w]` with h and w divisible by `patch_size` -> `[B, (h/p)(w/p), C p^2]`
    (ART-V paper size: C = 4, p = 4, so 64-dimensional tokens).
    """
    if anchor.ndim != 4 or anchor.shape[-2] % patch_size or anchor.shape[-1] % patch_size:
        raise ValueError(
            f"anchor_tokens: anchor must be [B, C, h, w] with h and w divisible by the patch size {patch_size} "
            f"<model.net.anchor_patch_size>, got {tuple(anchor.shape)}"
        )
    return rearrange(anchor, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


def is_anchor_parameter(key: str) -> bool:
    """True for state-dict keys of the anchor blocks (the parameters an SD checkpoint does not have)."""
    return ANCHOR_KEY_MARKER in key


class AnchorSpatialTransformer(SpatialTransformer):
    """SD's SpatialTransformer plus `anchor_block`: self-attention, cross-attention to the anchor tokens and a
    feed-forward on the same `[N, h*w, inner_dim]` tokens, after the SD transformer blocks.

    x: `[N, C, H, W]`, context: `[N, L, context_dim]` (text), `anchor_context` keyword: `[N, La, anchor_context_dim]`
    -> `[N, C, H, W]`.

    Args:
        anchor_context_dim: width of the anchor tokens (C_latent * patch_size^2; 64 at paper size).
        the rest: as `SpatialTransformer`.
    """

    def __init__(
        self,
        in_channels: int,
        num_heads: int,
        head_dim: int,
        depth: int,
        context_dim: int | None,
        use_linear: bool,
        use_checkpoint: bool,
        anchor_context_dim: int,
    ) -> None:
        super().__init__(
            in_channels,
            num_heads,
            head_dim,
            depth=depth,
            context_dim=context_dim,
            use_linear=use_linear,
            use_checkpoint=use_checkpoint,
        )
        self.anchor_context_dim = anchor_context_dim
        self.anchor_block = BasicTransformerBlock(
            self.inner_dim, num_heads, head_dim, context_dim=anchor_context_dim, use_checkpoint=use_checkpoint
        )
        for output_projection in (
            self.anchor_block.attn1.to_out,
            self.anchor_block.attn2.to_out,
            self.anchor_block.ff.net[2],
        ):
            zero_module(output_projection)

    def anchor_attentions(self) -> list[Attention]:
        """The attention layer that reads the anchor tokens (`anchor_block.attn2`): its keys and values depend on the
        anchor frame alone, so they may be projected once for every frame that shares the anchor."""
        return [self.anchor_block.attn2]

    def transform_tokens(
        self,
        tokens: Tensor,
        context: Tensor | None,
        *,
        anchor_context: Tensor | None = None,
        context_key_values: Mapping[Attention, KeyValue] | None = None,
        **block_kwargs: Any,
    ) -> Tensor:
        """tokens `[N, h*w, inner_dim]` -> SD blocks (text) -> anchor block (anchor tokens) -> same shape.

        context_key_values: projected contexts per cross-attention layer (text layers of the SD blocks, the anchor
        block's `attn2`), used where given instead of projecting `context` / `anchor_context` again."""
        if anchor_context is None or anchor_context.shape[-1] != self.anchor_context_dim:
            got = None if anchor_context is None else tuple(anchor_context.shape)
            raise ValueError(
                f"AnchorSpatialTransformer: needs anchor_context=[N, L, {self.anchor_context_dim}] (the anchor "
                f"frame's patch tokens, `anchor_tokens`), got {got}"
            )
        tokens = super().transform_tokens(
            tokens, context, context_key_values=context_key_values, **block_kwargs
        )
        return self.anchor_block(tokens, anchor_context, context_key_values=context_key_values)


class AnchorBlockFactory(UNetBlockFactory):
    """Builds SD's 2D blocks, with `AnchorSpatialTransformer` for every spatial transformer.

    Args:
        anchor_context_dim: width of the anchor tokens (64 at paper size: 4 latent channels x 4 x 4 patches).
    """

    def __init__(self, anchor_context_dim: int) -> None:
        if anchor_context_dim < 1:
            raise ValueError(f"AnchorBlockFactory: anchor_context_dim must be >= 1, got {anchor_context_dim}")
        self.anchor_context_dim = anchor_context_dim

    def spatial_transformer(
        self,
        channels: int,
        num_heads: int,
        head_dim: int,
        depth: int,
        context_dim: int | None,
        use_linear: bool,
        use_checkpoint: bool,
    ) -> ContextBlock:
        return AnchorSpatialTransformer(
            channels,
            num_heads,
            head_dim,
            depth,
            context_dim,
            use_linear,
            use_checkpoint,
            anchor_context_dim=self.anchor_context_dim,
        )
