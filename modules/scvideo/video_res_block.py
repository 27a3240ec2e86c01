"""SD's residual block followed by SCVideo's temporal convolution (appendix section 1, Figure 5(b):
"the input feature subsequently passes through a conv2D and conv3D").

Where the conv3D goes. Figure 5(b) draws one conv2D box followed by one conv3D box in front of the
attention blocks, and the appendix says we "only optimize 3D temporal convolution", i.e. the conv2D part is
the frozen pretrained resnet. We therefore read the conv2D box as a whole SD ResBlock and put one
`Conv3d` with kernel (3, 1, 1) after it (`temporal_conv`), rather than one after each of the ResBlock's two
inner 3x3 convs (Make-A-Video's per-conv placement):
- the pretrained block, including its inner residual path, stays exactly SD's;
- one temporal conv per block mixes neighbouring frames once per UNet stage (input, middle and output
  blocks alike), at the block's output width;
- with the identity (Dirac) initialisation the block equals SD's ResBlock frame by frame.
"""

from __future__ import annotations

from typing import Any

from einops import rearrange
from torch import Tensor

from modules.blocks.resnet import ResBlock
from modules.scvideo.temporal_layers import identity_temporal_conv, require_num_frames


class VideoResBlock(ResBlock):
    """ResBlock (pretrained, SD keys) then a temporal conv (new key `temporal_conv`).

    x: `[(B T), channels, H, W]`, emb: `[(B T), emb_channels]`, block kwarg `num_frames=T` ->
    `[(B T), out_channels, H, W]`.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__(channels, emb_channels, out_channels, dropout, use_checkpoint)
        self.temporal_conv = identity_temporal_conv(self.out_channels)

    def _forward(
        self, x: Tensor, emb: Tensor, *, num_frames: int | None = None, **block_kwargs: Any
    ) -> Tensor:
        frames = require_num_frames(num_frames, x.shape[0], type(self).__name__)
        hidden = super()._forward(x, emb)
        video = rearrange(hidden, "(b t) c h w -> b c t h w", t=frames)
        return rearrange(self.temporal_conv(video), "b c t h w -> (b t) c h w")
