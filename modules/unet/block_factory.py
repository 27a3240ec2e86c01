"""The block factory through which `UNetModel` builds its blocks: the UNet extension hook.

`UNetModel` owns the openaimodel *layout* (which block goes where, channel bookkeeping, skip connections,
the timestep embedding, adapter injection); the factory owns the *block types*. The default factory builds
Stable Diffusion's 2D blocks. A model variant subclasses the factory and overrides only the methods whose
blocks change; the UNet puts the returned module at the same position, so every pretrained SD parameter keeps
its state-dict key (e.g. `input_blocks.1.0.in_layers.2.weight`) and strict loading of an SD checkpoint still
works. New parameters must live under new attribute names inside the returned blocks (e.g. a video res
block that subclasses `ResBlock` and adds `self.temporal_conv`, giving `input_blocks.1.0.temporal_conv.*`).

Contracts for the returned modules:

- `res_block(...)` returns a `TimestepBlock` (normally a `ResBlock` subclass); it is called as
  `block(x [N, C, H, W], emb [N, E], **block_kwargs) -> [N, out_channels, H, W]`.
- `spatial_transformer(...)` returns a `ContextBlock` (normally a `SpatialTransformer`, possibly with a custom
  `transformer_block_class` or an overridden `transform_tokens`); it is called as
  `block(x [N, C, H, W], context [N, L, D] | None, **block_kwargs) -> [N, C, H, W]`.
- `downsample`/`upsample` return plain modules called as `block(x)`.
- `block_kwargs` are the extra keyword arguments given to `UNetModel.forward` (e.g. `num_frames=T` with
  `x` laid out as `[(B T), C, H, W]`, or `anchor_context=[N, L, 64]`). Every block receives all of them and must
  accept and ignore the ones it does not use (`**block_kwargs`).
- Blocks that support gradient checkpointing expose a boolean attribute `use_checkpoint`;
  `UNetModel.set_gradient_checkpointing` sets it on every submodule that has one.

The two variants, in outline (implemented in modules/scvideo/video_unet.py and
modules/artv/anchor_attention.py):

    class SCVideoBlockFactory(UNetBlockFactory):          # SCVideo appendix section 1
        def res_block(self, channels, emb_channels, out_channels, dropout, use_checkpoint):
            return VideoResBlock(channels, emb_channels, out_channels, dropout, use_checkpoint)
            # VideoResBlock(ResBlock): adds self.temporal_conv; _forward(x, emb, *, num_frames, **kw)
        def spatial_transformer(self, channels, num_heads, head_dim, depth, context_dim, use_linear,
                                use_checkpoint):
            return SpatialTransformer(channels, num_heads, head_dim, depth, context_dim, use_linear,
                                      use_checkpoint=use_checkpoint,
                                      transformer_block_class=SparseSpatialTemporalBlock)
            # SparseSpatialTemporalBlock(BasicTransformerBlock): keeps attn1/attn2/ff/norm1..3, adds temporal
            # attention; _forward(x, context, *, num_frames, **kw)

    class AnchorBlockFactory(UNetBlockFactory):            # ART-V anchor cross-attention (our reading)
        def spatial_transformer(self, channels, num_heads, head_dim, depth, context_dim, use_linear,
                                use_checkpoint):
            return AnchorSpatialTransformer(channels, num_heads, head_dim, depth, context_dim, use_linear,
                                            use_checkpoint=use_checkpoint, anchor_context_dim=64)
            # AnchorSpatialTransformer(SpatialTransformer): adds self.anchor_block = BasicTransformerBlock(
            #   self.inner_dim, ..., context_dim=64); transform_tokens(tokens, context, *, anchor_context, **kw)
            #   runs super().transform_tokens(...) then self.anchor_block(tokens, anchor_context)
"""

from __future__ import annotations

from torch import nn

from modules.blocks.attention import SpatialTransformer
from modules.blocks.block_kinds import ContextBlock, TimestepBlock
from modules.blocks.resnet import Downsample, ResBlock, Upsample


class UNetBlockFactory:
    """Builds Stable Diffusion's 2D UNet blocks. Subclass and override methods to change block types."""

    def res_block(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        dropout: float,
        use_checkpoint: bool,
    ) -> TimestepBlock:
        """A residual block `[N, channels, H, W] -> [N, out_channels, H, W]` reading the timestep embedding."""
        return ResBlock(channels, emb_channels, out_channels, dropout=dropout, use_checkpoint=use_checkpoint)

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
        """A spatial transformer `[N, channels, H, W] -> [N, channels, H, W]` reading the text context."""
        return SpatialTransformer(
            channels,
            num_heads,
            head_dim,
            depth=depth,
            context_dim=context_dim,
            use_linear=use_linear,
            use_checkpoint=use_checkpoint,
        )

    def downsample(self, channels: int) -> nn.Module:
        """Halve the resolution: `[N, C, H, W] -> [N, C, H/2, W/2]`."""
        return Downsample(channels)

    def upsample(self, channels: int) -> nn.Module:
        """Double the resolution: `[N, C, H, W] -> [N, C, 2H, 2W]`."""
        return Upsample(channels)
