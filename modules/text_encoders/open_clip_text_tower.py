"""open_clip's CLIP text tower without the visual tower, built from an open_clip model config.

SD 2.x's ``FrozenOpenCLIPEmbedder`` creates an open_clip ``CLIP`` and deletes ``model.visual``; what
remains (``cond_stage_model.model.*`` in its checkpoints) is this module: token and positional
embeddings, the transformer, ``ln_final``, ``text_projection``, ``logit_scale`` and the causal
``attn_mask`` (a non-persistent buffer). The submodules are open_clip's own (``TextTransformer``'s
parts), so parameter names, shapes and initialisation are open_clip's; the visual tower is never
allocated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import open_clip
import torch
from open_clip.transformer import LayerNorm, QuickGELU, TextTransformer
from torch import nn

# CLIP's initial temperature, 1 / 0.07 (Radford et al. 2021, sec. 2.5), as open_clip's CLIP sets it.
INITIAL_LOGIT_SCALE = math.log(1 / 0.07)
# The plain CLIP text transformer that SD uses; other open_clip text options change the network.
SUPPORTED_TEXT_CFG_KEYS = frozenset({"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"})


def resolve_open_clip_config(arch: str | Mapping[str, Any]) -> dict[str, Any]:
    """The ``{"embed_dim", "quick_gelu", "text_cfg"}`` part of an open_clip model config.

    Args:
        arch: an open_clip model name (``"ViT-H-14"``, ``"ViT-L-14-quickgelu"``; the config ships
            with open_clip, nothing is downloaded) or a config mapping with ``embed_dim`` and
            ``text_cfg`` (and optionally ``quick_gelu``), e.g. a tiny test config.

    Raises:
        ValueError: unknown model name, missing fields, or text options other than the plain
            CLIP text transformer's.
    """
    if isinstance(arch, str):
        config = open_clip.get_model_config(arch)
        if config is None:
            raise ValueError(
                f"Unknown open_clip architecture {arch!r}; use a name from open_clip.list_models() "
                "(e.g. 'ViT-H-14', 'ViT-L-14') or a config mapping with 'embed_dim' and 'text_cfg'."
            )
    else:
        config = arch
    if "embed_dim" not in config or "text_cfg" not in config:
        raise ValueError(
            f"open_clip config for {arch!r} needs 'embed_dim' and 'text_cfg'; got {sorted(config)}"
        )
    text_cfg = {key: config["text_cfg"][key] for key in config["text_cfg"]}
    unsupported = sorted(set(text_cfg) - SUPPORTED_TEXT_CFG_KEYS)
    if unsupported or config.get("custom_text", False):
        raise ValueError(
            f"open_clip config {arch!r} uses text options {unsupported or ['custom_text']} that SD's text "
            f"encoder does not have; supported text_cfg keys: {sorted(SUPPORTED_TEXT_CFG_KEYS)}"
        )
    return {
        "embed_dim": int(config["embed_dim"]),
        "quick_gelu": bool(config.get("quick_gelu", False)),
        "text_cfg": text_cfg,
    }


class OpenCLIPTextTower(nn.Module):
    """open_clip ``CLIP`` minus ``visual``: the state dict SD 2.x stores under ``cond_stage_model.model.``.

    Attributes:
        token_embedding: ``nn.Embedding(vocab_size, width)``.
        positional_embedding: ``[context_length, width]``.
        transformer: open_clip ``Transformer`` (batch first, ``resblocks``).
        ln_final: final LayerNorm.
        text_projection: ``[width, embed_dim]``; CLIP's pooled-feature projection, unused by SD.
        logit_scale: scalar CLIP temperature, unused by SD.
        attn_mask: ``[context_length, context_length]`` additive causal mask (non-persistent).
    """

    def __init__(self, embed_dim: int, text_cfg: Mapping[str, Any], quick_gelu: bool = False) -> None:
        super().__init__()
        text = TextTransformer(
            context_length=int(text_cfg["context_length"]),
            vocab_size=int(text_cfg["vocab_size"]),
            width=int(text_cfg["width"]),
            heads=int(text_cfg["heads"]),
            layers=int(text_cfg["layers"]),
            mlp_ratio=float(text_cfg.get("mlp_ratio", 4.0)),
            output_dim=embed_dim,
            act_layer=QuickGELU if quick_gelu else nn.GELU,
            norm_layer=LayerNorm,
        )
        # Same attribute order as open_clip's CLIP, hence the same state-dict order.
        self.transformer = text.transformer
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.register_buffer("attn_mask", text.attn_mask, persistent=False)
        self.logit_scale = nn.Parameter(torch.full((), INITIAL_LOGIT_SCALE))

    @classmethod
    def from_config(cls, arch: str | Mapping[str, Any], quick_gelu: bool | None = None) -> OpenCLIPTextTower:
        """Build from an open_clip model name or config mapping (see :func:`resolve_open_clip_config`).

        ``quick_gelu`` overrides the config's activation (OpenAI CLIP weights need ``True``).
        """
        config = resolve_open_clip_config(arch)
        activation = config["quick_gelu"] if quick_gelu is None else quick_gelu
        return cls(config["embed_dim"], config["text_cfg"], quick_gelu=activation)

    @property
    def context_length(self) -> int:
        """Number of token positions (77 for every CLIP text tower SD uses)."""
        return self.positional_embedding.shape[0]

    @property
    def width(self) -> int:
        """Transformer width = output dimension of the token embeddings."""
        return self.positional_embedding.shape[1]
