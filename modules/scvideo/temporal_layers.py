"""The new (non-SD) layers of SCVideo, each initialised as an identity function (Make-A-Video init, which the
SCVideo appendix, Training, follows: "weights and bias are initialized with identity matrix and zero").

- `identity_temporal_conv`: the conv3D of Figure 5(b), a `Conv3d` with kernel (3, 1, 1) over frames, Dirac
  (identity) kernel and zero bias, so it returns its input unchanged at initialisation.
- `zero_output_attention`: a temporal attention (eq. (4)) whose output projection starts at zero; used inside a
  residual branch, the branch adds nothing at initialisation.
- `frame_position_embedding`: sinusoidal frame positions added to the temporal attention's input (the
  appendix does not say how frame order reaches eq. (4); without it, attention over frames is permutation
  equivariant and cannot tell earlier from later frames). We use the fixed sinusoidal embedding of the UNet's
  timestep embedding (cos first, max period 10000) evaluated at frame indices 0..T-1: it has no parameters,
  works for any clip length (no `num_frames_max`), and, since it sits in front of a zero-initialised output
  projection, cannot change the network's output at initialisation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from modules.blocks.attention import Attention
from modules.blocks.timestep_embedding import timestep_embedding

# Kernel (3, 1, 1): three frames, one pixel; "same" padding over time keeps the frame count.
TEMPORAL_KERNEL_SIZE = 3


def identity_temporal_conv(channels: int) -> nn.Conv3d:
    """Conv3d `[B, C, T, H, W] -> [B, C, T, H, W]`, kernel (3, 1, 1), initialised to the identity.

    Weight: Dirac kernel (1 at the centre tap of each channel's own filter, 0 elsewhere); bias: 0.
    Zero padding over time: the first and last frames see a zero neighbour once the kernel is trained.
    """
    conv = nn.Conv3d(
        channels,
        channels,
        kernel_size=(TEMPORAL_KERNEL_SIZE, 1, 1),
        padding=(TEMPORAL_KERNEL_SIZE // 2, 0, 0),
    )
    with torch.no_grad():
        nn.init.dirac_(conv.weight)
        nn.init.zeros_(conv.bias)
    return conv


def zero_output_attention(dim: int, num_heads: int, head_dim: int, dropout: float = 0.0) -> Attention:
    """Self-attention `[N, L, dim] -> [N, L, dim]` whose output projection (`to_out.0`) starts at zero."""
    attention = Attention(dim, None, num_heads, head_dim, dropout)
    with torch.no_grad():
        attention.to_out[0].weight.zero_()
        attention.to_out[0].bias.zero_()
    return attention


def frame_position_embedding(num_frames: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Sinusoidal embedding of frame indices 0..T-1: `[T, dim]` float32 (cos first, max period 10000)."""
    return timestep_embedding(torch.arange(num_frames, device=device), dim)


def require_num_frames(num_frames: int | None, batch: int, who: str) -> int:
    """Check the `num_frames` block kwarg against a frame batch of size `batch` = B * T; returns T."""
    if num_frames is None:
        raise ValueError(
            f"{who}: num_frames is required (call the UNet with num_frames=T and x laid out as [(B T), C, H, W]; "
            "SCVideoDenoiser.forward does this for [B, C, T, H, W] input)"
        )
    if num_frames < 1 or batch % num_frames:
        raise ValueError(f"{who}: the frame batch {batch} is not a multiple of num_frames={num_frames}")
    return num_frames
