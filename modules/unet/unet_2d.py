"""Stable Diffusion compatible 2D UNet (ldm/sgm "openaimodel" layout) with extension hooks.

The layout, hyperparameter names and state-dict keys are those of ldm's `UNetModel`, so the UNet of an SD 1.x
or 2.x checkpoint (keys after stripping `model.diffusion_model.`) loads with strict matching:

    time_embed.{0,2}                      Linear(mc -> 4 mc), SiLU, Linear(4 mc -> 4 mc)
    input_blocks.0.0                      conv3x3(in_channels -> mc)
    input_blocks.i                        [ResBlock, SpatialTransformer?] per res block, Downsample between levels
    middle_block.{0,1,2}                  ResBlock, SpatialTransformer, ResBlock
    output_blocks.i                       [ResBlock(ch + skip), SpatialTransformer?, Upsample?]
    out.{0,2}                             GroupNorm, SiLU, conv3x3(mc -> out_channels) (zero-initialised)

A SpatialTransformer follows every res block at downsampling rates `ds` listed in `attention_resolutions`.
Blocks come from a `UNetBlockFactory` (see `modules/unet/block_factory.py`) so that video (SCVideo) and
anchor (ART-V) variants change block types without changing these keys. See docs/ARCHITECTURE.md,
"UNet extension hooks".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from modules.blocks.normalization import group_norm, zero_module
from modules.blocks.resnet import TimestepEmbedSequential
from modules.blocks.timestep_embedding import timestep_embedding
from modules.unet.block_factory import UNetBlockFactory


class UNetModel(nn.Module):
    """Latent-diffusion UNet predicting eps.

    Args:
        in_channels: latent channels of x (4 for SD).
        out_channels: channels of the prediction (4 for SD eps; 1 for ART-V's mask network).
        model_channels: base width `mc` (320 for SD).
        attention_resolutions: downsampling rates (1, 2, 4, ...) whose res blocks get a SpatialTransformer.
        num_res_blocks: res blocks per level in the encoder (the decoder has one more per level).
        channel_mult: width multiplier of each level; len(channel_mult) levels, len - 1 downsamplings.
        num_heads: attention heads per transformer (head_dim = channels // num_heads); SD 1.x: 8.
        num_head_channels: channels per head (num_heads = channels // num_head_channels); SD 2.x: 64.
            Exactly one of num_heads / num_head_channels must be set (the other -1).
        transformer_depth: BasicTransformerBlocks per SpatialTransformer.
        context_dim: width of the cross-attention context (768 SD 1.x, 1024 SD 2.x); None makes `attn2`
            a second self-attention.
        use_linear_in_transformer: Linear proj_in/proj_out (SD 2.x) instead of 1x1 convs (SD 1.x).
        dropout: dropout inside the res blocks.
        use_checkpoint: gradient checkpointing per res block and transformer block.
        block_factory: builds the blocks; None means `UNetBlockFactory()` (SD's 2D blocks).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        model_channels: int,
        attention_resolutions: Sequence[int],
        num_res_blocks: int,
        channel_mult: Sequence[int],
        num_heads: int = -1,
        num_head_channels: int = -1,
        transformer_depth: int = 1,
        context_dim: int | None = None,
        use_linear_in_transformer: bool = False,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
        block_factory: UNetBlockFactory | None = None,
    ) -> None:
        super().__init__()
        if (num_heads == -1) == (num_head_channels == -1):
            raise ValueError(
                "UNetModel: set exactly one of num_heads (SD 1.x: 8) and num_head_channels (SD 2.x: 64), "
                f"the other to -1; got num_heads={num_heads}, num_head_channels={num_head_channels}"
            )
        factory = UNetBlockFactory() if block_factory is None else block_factory
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.model_channels = model_channels
        self.attention_resolutions = tuple(int(rate) for rate in attention_resolutions)
        self.num_res_blocks = num_res_blocks
        self.channel_mult = tuple(int(mult) for mult in channel_mult)
        self.num_heads = num_heads
        self.num_head_channels = num_head_channels
        self.context_dim = context_dim
        self.use_checkpoint = use_checkpoint
        emb_channels = 4 * model_channels

        def transformer(channels: int) -> nn.Module:
            heads, head_dim = self._head_layout(channels)
            return factory.spatial_transformer(
                channels,
                heads,
                head_dim,
                transformer_depth,
                context_dim,
                use_linear_in_transformer,
                use_checkpoint,
            )

        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, emb_channels),
            nn.SiLU(),
            nn.Linear(emb_channels, emb_channels),
        )

        # Encoder. `skip_channels` records what each input block stores for the decoder.
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, kernel_size=3, padding=1))]
        )
        skip_channels = [model_channels]
        # Index of the last res block of each level (before its downsample): where T2I-Adapter adds features.
        self.adapter_block_indices: list[int] = []
        channels = model_channels
        rate = 1
        for level, mult in enumerate(self.channel_mult):
            for _ in range(num_res_blocks):
                layers = [
                    factory.res_block(channels, emb_channels, mult * model_channels, dropout, use_checkpoint)
                ]
                channels = mult * model_channels
                if rate in self.attention_resolutions:
                    layers.append(transformer(channels))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(channels)
            self.adapter_block_indices.append(len(self.input_blocks) - 1)
            if level != len(self.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(factory.downsample(channels)))
                skip_channels.append(channels)
                rate *= 2
        self.adapter_feature_channels = [mult * model_channels for mult in self.channel_mult]

        self.middle_block = TimestepEmbedSequential(
            factory.res_block(channels, emb_channels, channels, dropout, use_checkpoint),
            transformer(channels),
            factory.res_block(channels, emb_channels, channels, dropout, use_checkpoint),
        )

        # Decoder: one more res block per level than the encoder, each concatenating one skip.
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for index in range(num_res_blocks + 1):
                skip = skip_channels.pop()
                layers = [
                    factory.res_block(
                        channels + skip, emb_channels, mult * model_channels, dropout, use_checkpoint
                    )
                ]
                channels = mult * model_channels
                if rate in self.attention_resolutions:
                    layers.append(transformer(channels))
                if level != 0 and index == num_res_blocks:
                    layers.append(factory.upsample(channels))
                    rate //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            group_norm(channels),
            nn.SiLU(),
            zero_module(nn.Conv2d(channels, out_channels, kernel_size=3, padding=1)),
        )

    def _head_layout(self, channels: int) -> tuple[int, int]:
        """(num_heads, head_dim) of a transformer at `channels`, as ldm derives it."""
        if self.num_head_channels == -1:
            return self.num_heads, channels // self.num_heads
        return channels // self.num_head_channels, self.num_head_channels

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Switch gradient checkpointing on every block that supports it (has a `use_checkpoint` flag)."""
        for module in self.modules():
            if hasattr(module, "use_checkpoint"):
                module.use_checkpoint = enabled

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor | None = None,
        *,
        adapter_features: Sequence[Tensor] | None = None,
        **block_kwargs: Any,
    ) -> Tensor:
        """Predict eps.

        Args:
            x: noisy latents `[N, in_channels, H, W]`, H and W divisible by 2 ** (len(channel_mult) - 1).
            timesteps: DDPM step indices `[N]` (int64, 0..999).
            context: cross-attention tokens `[N, L, context_dim]` (required when built with a context_dim).
            adapter_features: T2I-Adapter features, one per level, `[N, mc * channel_mult[level], H / 2**level,
                W / 2**level]`; feature `level` is added to h after the last res block of that level (input block
                i with (i + 1) % 3 == 0 for num_res_blocks = 2, as in T2I-Adapter), before the downsample, so the
                sum is what the skip connection stores. Nothing is added in the middle or decoder blocks.
            block_kwargs: passed to every res block and spatial transformer (2D blocks ignore them).

        Returns:
            `[N, out_channels, H, W]`.
        """
        self._check_inputs(x, timesteps, context, adapter_features)
        time_features = timestep_embedding(timesteps, self.model_channels)
        emb = self.time_embed(time_features.to(self.time_embed[0].weight.dtype))
        injections = dict(zip(self.adapter_block_indices, adapter_features or (), strict=False))

        skips = []
        hidden = x
        for index, block in enumerate(self.input_blocks):
            hidden = block(hidden, emb, context, **block_kwargs)
            if index in injections:
                hidden = hidden + self._checked_feature(injections[index], hidden, index)
            skips.append(hidden)
        hidden = self.middle_block(hidden, emb, context, **block_kwargs)
        for block in self.output_blocks:
            hidden = torch.cat([hidden, skips.pop()], dim=1)
            hidden = block(hidden, emb, context, **block_kwargs)
        return self.out(hidden)

    def _check_inputs(
        self,
        x: Tensor,
        timesteps: Tensor,
        context: Tensor | None,
        adapter_features: Sequence[Tensor] | None,
    ) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNetModel: x must be [N, {self.in_channels}, H, W], got {tuple(x.shape)}")
        factor = 2 ** (len(self.channel_mult) - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"UNetModel: latent size {tuple(x.shape[-2:])} must be divisible by {factor} "
                f"(2 ** (len(channel_mult) - 1)); choose a resolution accordingly"
            )
        if timesteps.shape != (x.shape[0],):
            raise ValueError(
                f"UNetModel: timesteps must have shape [N] = [{x.shape[0]}], got {tuple(timesteps.shape)}"
            )
        if self.context_dim is not None and context is None:
            raise ValueError(f"UNetModel: built with context_dim={self.context_dim}, so context is required")
        if adapter_features is not None and len(adapter_features) != len(self.channel_mult):
            raise ValueError(
                f"UNetModel: adapter_features needs one feature per level ({len(self.channel_mult)}, "
                f"channels {self.adapter_feature_channels}), got {len(adapter_features)}"
            )

    def _checked_feature(self, feature: Tensor, hidden: Tensor, block_index: int) -> Tensor:
        if feature.shape != hidden.shape:
            level = self.adapter_block_indices.index(block_index)
            raise ValueError(
                f"UNetModel: adapter_features[{level}] must have shape {tuple(hidden.shape)} "
                f"(added after input block {block_index}), got {tuple(feature.shape)}"
            )
        return feature
