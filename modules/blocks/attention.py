"""Attention layers of the SD UNet: Attention, GEGLU FeedForward, BasicTransformerBlock, SpatialTransformer.

Parameter names follow ldm/sgm (`to_q`, `to_k`, `to_v`, `to_out.0`, `ff.net.0.proj`, `ff.net.2`, `norm1..3`,
`attn1` self-attention, `attn2` cross-attention, `proj_in`/`proj_out`), so the SD checkpoints load with strict
key matching.

Two attention implementations compute softmax(Q K^T / sqrt(d)) V:
- "sdpa" (default): `torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels on GPU),
- "naive": explicit scores and softmax, both in float32 (autocast disabled), processed in chunks of
  (batch x head) slices so that one score matrix holds at most `NAIVE_MAX_SCORE_ELEMENTS` elements; used as a
  reference in tests and as the baseline in bench/bench_unet.py.
Select one with `set_attention_backend(name)` or, scoped, `with attention_backend("naive"): ...`.

A cross-attention whose context stays the same over many calls (a sampler run's text, ART-V's anchor frame) can
have its keys and values projected once (`Attention.project_context` -> `KeyValue`) and handed back on every call
(`Attention.forward(..., key_value=...)`; through the UNet as the block kwarg `context_key_values`, a mapping from
each cross-attention layer to its `KeyValue`). Without them every call projects its context, as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from modules.blocks.block_kinds import ContextBlock
from modules.blocks.checkpointing import checkpointed_call
from modules.blocks.normalization import LayerNorm32, group_norm, zero_module

ATTENTION_BACKENDS = ("sdpa", "naive")
# 2**26 float32 scores = 256 MiB per chunk; the 768-px SD 2.1 UNet's 9216 x 9216 score matrix (85 M elements)
# is then computed one (batch, head) slice at a time.
NAIVE_MAX_SCORE_ELEMENTS = 2**26

_active_backend = "sdpa"


def set_attention_backend(name: str) -> None:
    """Select the attention implementation used by every `dot_product_attention` call ("sdpa" or "naive")."""
    global _active_backend
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; expected one of {ATTENTION_BACKENDS}")
    _active_backend = name


def get_attention_backend() -> str:
    """The attention implementation currently in use."""
    return _active_backend


@contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Use attention backend `name` inside the `with` block and restore the previous one afterwards."""
    previous = get_attention_backend()
    set_attention_backend(name)
    try:
        yield
    finally:
        set_attention_backend(previous)


def naive_attention(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """softmax(Q K^T / sqrt(d)) V with float32 scores and softmax.

    query: `[..., Lq, d]`, key: `[..., Lk, d]`, value: `[..., Lk, dv]` -> `[..., Lq, dv]` in value's dtype.
    """
    batch_shape = query.shape[:-2]
    query_len, key_len = query.shape[-2], key.shape[-2]
    queries = query.reshape(-1, query_len, query.shape[-1])
    keys = key.reshape(-1, key_len, key.shape[-1])
    values = value.reshape(-1, key_len, value.shape[-1])
    scale = query.shape[-1] ** -0.5
    slices_per_chunk = max(1, NAIVE_MAX_SCORE_ELEMENTS // (query_len * key_len))
    outputs = []
    with torch.autocast(device_type=query.device.type, enabled=False):
        for start in range(0, queries.shape[0], slices_per_chunk):
            stop = start + slices_per_chunk
            scores = torch.bmm(queries[start:stop].float(), keys[start:stop].float().transpose(1, 2)) * scale
            weights = scores.softmax(dim=-1).to(values.dtype)
            outputs.append(torch.bmm(weights, values[start:stop]))
    return torch.cat(outputs).reshape(*batch_shape, query_len, value.shape[-1])


def dot_product_attention(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """Multi-head attention core with the active backend. q/k/v: `[N, heads, L, d]` -> `[N, heads, Lq, d]`."""
    if _active_backend == "naive":
        return naive_attention(query, key, value)
    return F.scaled_dot_product_attention(query, key, value)


@dataclass(frozen=True)
class KeyValue:
    """The projected keys and values of an attention's context, `[N, heads, Lk, head_dim]` each."""

    key: Tensor
    value: Tensor

    def index_select(self, rows: Tensor) -> KeyValue:
        """The keys and values of rows `rows` (int64 `[N']`) -> `[N', heads, Lk, head_dim]` each."""
        return KeyValue(self.key.index_select(0, rows), self.value.index_select(0, rows))


class Attention(nn.Module):
    """Multi-head (cross-)attention, ldm's `CrossAttention`.

    x: `[N, Lq, query_dim]`; context: `[N, Lk, context_dim]` or None (self-attention on x) -> `[N, Lq, query_dim]`.
    """

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None = None,
        num_heads: int = 8,
        head_dim: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner_dim = num_heads * head_dim
        context_dim = query_dim if context_dim is None else context_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def project_context(self, context: Tensor) -> KeyValue:
        """Keys and values of a context `[N, Lk, context_dim]` -> `[N, heads, Lk, head_dim]` each."""
        key, value = (
            rearrange(projection, "n l (heads d) -> n heads l d", heads=self.num_heads)
            for projection in (self.to_k(context), self.to_v(context))
        )
        return KeyValue(key, value)

    def forward(
        self, x: Tensor, context: Tensor | None = None, *, key_value: KeyValue | None = None
    ) -> Tensor:
        """x `[N, Lq, query_dim]` attends to context `[N, Lk, context_dim]` (None: to x itself), or, when given, to
        `key_value` (`project_context(context)` computed once for a context that many calls share; context is then
        not read). -> `[N, Lq, query_dim]`."""
        query = rearrange(self.to_q(x), "n l (heads d) -> n heads l d", heads=self.num_heads)
        if key_value is None:
            key_value = self.project_context(x if context is None else context)
        out = dot_product_attention(query, key_value.key, key_value.value)
        return self.to_out(rearrange(out, "n heads l d -> n l (heads d)"))


class GEGLU(nn.Module):
    """Gated GELU projection: `proj` to 2 * dim_out, out = a * gelu(gate). `[N, L, dim_in] -> [N, L, dim_out]`."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: Tensor) -> Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with 4x expansion: `net.0` GEGLU(dim -> 4 dim), `net.1` dropout, `net.2` Linear back."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner_dim = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner_dim), nn.Dropout(dropout), nn.Linear(inner_dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention, feed-forward; each pre-LayerNorm and residual. `[N, L, dim]`.

    Subclasses (video or anchor blocks) keep these submodules so SD weights load, add their own, and
    override `_forward(x, context, **block_kwargs)`; `forward` wraps it in gradient checkpointing.
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
        super().__init__()
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.use_checkpoint = use_checkpoint
        self.attn1 = Attention(dim, None, num_heads, head_dim, dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = Attention(dim, context_dim, num_heads, head_dim, dropout)
        self.norm1 = LayerNorm32(dim)
        self.norm2 = LayerNorm32(dim)
        self.norm3 = LayerNorm32(dim)

    def forward(self, x: Tensor, context: Tensor | None = None, **block_kwargs: Any) -> Tensor:
        """x: `[N, L, dim]`; context: `[N, Lc, context_dim]` or None -> `[N, L, dim]`."""
        return checkpointed_call(self._forward, x, context, enabled=self.use_checkpoint, **block_kwargs)

    def _forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        context_key_values: Mapping[Attention, KeyValue] | None = None,
        **block_kwargs: Any,
    ) -> Tensor:
        """context_key_values: projected contexts per cross-attention layer; `attn2` uses its entry when there is
        one (`SpatialTransformer.context_attentions`), else projects `context` itself."""
        key_value = None if context_key_values is None else context_key_values.get(self.attn2)
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context, key_value=key_value)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(ContextBlock):
    """ldm's SpatialTransformer: GroupNorm, proj_in, transformer blocks over the h*w tokens, proj_out, residual.

    x: `[N, C, H, W]`, context: `[N, L, context_dim]` -> `[N, C, H, W]`. SD 1.x uses 1x1 convs for
    proj_in/proj_out (`use_linear=False`), SD 2.x Linear layers (`use_linear=True`). proj_out starts at zero,
    so a fresh block is the identity.

    Extension points: `transformer_block_class` builds each of the `depth` blocks
    (`cls(dim, num_heads, head_dim, context_dim=..., dropout=..., use_checkpoint=...)`), and
    `transform_tokens(tokens, context, **block_kwargs)` is the token-space body a subclass may extend (e.g. run
    an extra anchor block after the SD blocks).
    """

    def __init__(
        self,
        in_channels: int,
        num_heads: int,
        head_dim: int,
        depth: int = 1,
        context_dim: int | None = None,
        use_linear: bool = False,
        dropout: float = 0.0,
        use_checkpoint: bool = False,
        transformer_block_class: type[BasicTransformerBlock] = BasicTransformerBlock,
    ) -> None:
        super().__init__()
        inner_dim = num_heads * head_dim
        self.in_channels = in_channels
        self.inner_dim = inner_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.context_dim = context_dim
        self.use_linear = use_linear
        self.norm = group_norm(in_channels, eps=1e-6)
        if use_linear:
            self.proj_in: nn.Module = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            transformer_block_class(
                inner_dim,
                num_heads,
                head_dim,
                context_dim=context_dim,
                dropout=dropout,
                use_checkpoint=use_checkpoint,
            )
            for _ in range(depth)
        )
        if use_linear:
            self.proj_out: nn.Module = zero_module(nn.Linear(inner_dim, in_channels))
        else:
            self.proj_out = zero_module(nn.Conv2d(inner_dim, in_channels, kernel_size=1))

    def forward(self, x: Tensor, context: Tensor | None = None, **block_kwargs: Any) -> Tensor:
        height, width = x.shape[-2:]
        hidden = self.norm(x)
        if not self.use_linear:
            hidden = self.proj_in(hidden)
        tokens = rearrange(hidden, "n c h w -> n (h w) c")
        if self.use_linear:
            tokens = self.proj_in(tokens)
        tokens = self.transform_tokens(tokens, context, **block_kwargs)
        if self.use_linear:
            tokens = self.proj_out(tokens)
        hidden = rearrange(tokens, "n (h w) c -> n c h w", h=height, w=width)
        if not self.use_linear:
            hidden = self.proj_out(hidden)
        return x + hidden

    def context_attentions(self) -> list[Attention]:
        """The attention layers that read `context` (each block's `attn2`): their keys and values depend on the
        context alone, so they may be projected once for many calls. Empty without a context_dim (`attn2` is then a
        second self-attention)."""
        if self.context_dim is None:
            return []
        return [block.attn2 for block in self.transformer_blocks]

    def transform_tokens(self, tokens: Tensor, context: Tensor | None, **block_kwargs: Any) -> Tensor:
        """Run the transformer blocks on tokens `[N, H*W, inner_dim]`; returns the same shape."""
        for block in self.transformer_blocks:
            tokens = block(tokens, context, **block_kwargs)
        return tokens
