"""SCVideo's video UNet: SD's `UNetModel` built through a block factory that inflates it to video.

`UNetModel(..., block_factory=SCVideoBlockFactory())` keeps SD's layout and every SD state-dict key, with
- every ResBlock -> `VideoResBlock` (SD ResBlock + `temporal_conv`),
- every transformer block inside the SpatialTransformers -> `SparseSpatialTemporalBlock` (SD block with
  sparse causal `attn1` + `norm_temp1/attn_temp1/norm_temp2/attn_temp2`).
The UNet is run on `[(B T), C, H, W]` with the block kwarg `num_frames=T` (see
`scvideo_denoiser.SCVideoDenoiser.forward`).

Parameter groups, by the module names in a parameter's key:
- new parameters (absent from SD checkpoints, identity-initialised): `NEW_MODULE_NAMES`;
- the paper's trainable set ("We only optimize 3D temporal convolution and all the attention modules",
  SCVideo appendix, Training): `PAPER_TRAINABLE_MODULE_NAMES`. "Attention module" is read as ldm's attention
  layer, i.e. the q/k/v/out projections of `attn1` (sparse causal attention, pretrained), `attn2` (cross
  attention, pretrained), `attn_temp1`/`attn_temp2` (new), plus the temporal attentions' own pre-norms
  `norm_temp1`/`norm_temp2` (new layers with no pretrained value, so they are trained with their attention).
  The pretrained pre-norms `norm1`/`norm2`/`norm3`, the feed-forward, the SpatialTransformer's GroupNorm and
  proj_in/proj_out, the ResBlocks and the timestep embedding stay frozen.
"""

from __future__ import annotations

from modules.blocks.attention import SpatialTransformer
from modules.blocks.block_kinds import ContextBlock, TimestepBlock
from modules.scvideo.sst_transformer_block import SparseSpatialTemporalBlock
from modules.scvideo.video_res_block import VideoResBlock
from modules.unet.block_factory import UNetBlockFactory

NEW_MODULE_NAMES = ("temporal_conv", "norm_temp1", "attn_temp1", "norm_temp2", "attn_temp2")
PAPER_TRAINABLE_MODULE_NAMES = ("attn1", "attn2", *NEW_MODULE_NAMES)


def _names_module(key: str, module_names: tuple[str, ...]) -> bool:
    return any(part in module_names for part in key.split("."))


def is_new_parameter(key: str) -> bool:
    """Whether a UNet state-dict key belongs to a layer SCVideo adds to SD (e.g. `...temporal_conv.weight`)."""
    return _names_module(key, NEW_MODULE_NAMES)


def is_paper_trainable(key: str) -> bool:
    """Whether a UNet parameter is in the paper's trainable set (temporal convs and all attention modules)."""
    return _names_module(key, PAPER_TRAINABLE_MODULE_NAMES)


class SCVideoBlockFactory(UNetBlockFactory):
    """Builds SCVideo's video blocks in place of SD's 2D blocks (docs/ARCHITECTURE.md, UNet extension hooks)."""

    def res_block(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        dropout: float,
        use_checkpoint: bool,
    ) -> TimestepBlock:
        """SD ResBlock + temporal conv: `[(B T), channels, H, W] -> [(B T), out_channels, H, W]`."""
        return VideoResBlock(
            channels, emb_channels, out_channels, dropout=dropout, use_checkpoint=use_checkpoint
        )

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
        """SD SpatialTransformer whose transformer blocks are SS-T blocks: `[(B T), C, H, W]` -> same."""
        return SpatialTransformer(
            channels,
            num_heads,
            head_dim,
            depth=depth,
            context_dim=context_dim,
            use_linear=use_linear,
            use_checkpoint=use_checkpoint,
            transformer_block_class=SparseSpatialTemporalBlock,
        )
