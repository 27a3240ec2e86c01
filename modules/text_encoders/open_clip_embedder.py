"""Frozen CLIP text encoders that turn captions into cross-attention context ``[B, 77, D]``.

- :class:`FrozenOpenCLIPEmbedder`: SD 2.x's text encoder, which ART-V uses (ART-V supplementary
  Table 3): open_clip ViT-H-14 text tower, output of the penultimate transformer block followed by
  ``ln_final``, ``[B, 77, 1024]``. Tokens are padded with 0, as ``open_clip.tokenize`` does.
- :class:`FrozenCLIPTextEmbedder`: SD 1.x's text encoder, which SCVideo uses: OpenAI CLIP ViT-L/14
  text model (QuickGELU, ``hidden_act="quick_gelu"`` in transformers' config), last block followed by
  the final LayerNorm (transformers' ``last_hidden_state``), ``[B, 77, 768]``. SD 1.x tokenizes with
  transformers' ``CLIPTokenizer(padding="max_length")``, whose pad token for
  ``openai/clip-vit-large-patch14`` is ``<|endoftext|>``; we therefore pad with the EOT id 49407.

Both run the same computation (all 77 positions feed cross-attention, so padding matters):

    x = token_embedding(tokens) + positional_embedding          # [B, 77, W]
    x = blocks[: L - skip](x, causal mask)                       # skip = 1 for "penultimate", 0 for "last"
    context = ln_final(x)                                        # [B, 77, W]; no pooling, no projection

Tokenization: open_clip's ``SimpleTokenizer`` (its BPE vocabulary ships inside the package). Text is
cleaned with ftfy, HTML-unescaped, whitespace-collapsed and lower-cased; ``[SOT] + BPE + [EOT]`` is
truncated to 77 with the last id forced to EOT. transformers' ``CLIPTokenizer`` yields the same ids
(SOT + first 75 BPE ids + EOT) except that it does not unescape HTML entities such as ``&amp;``.

No weights are downloaded: the network is built from open_clip's bundled config (``pretrained=None``)
and loaded from ``weights_path`` (open_clip, transformers or whole-SD files). Without a file the tower
is randomly initialised from ``init_seed``, identically in every process: the toy CPU runs use such a
random frozen tower, whose embeddings still tell captions apart.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

from modules.checkpoints.safe_load import load_state_dict_file
from modules.checkpoints.strict_load import LoadReport, load_partial
from modules.text_encoders.open_clip_text_tower import OpenCLIPTextTower
from modules.text_encoders.text_weight_layouts import to_open_clip_text_state_dict

log = logging.getLogger(__name__)

# Blocks skipped at the end of the transformer for each output layer (SD 2.x: layer_idx).
SKIPPED_BLOCKS = {"last": 0, "penultimate": 1}
# Tower tensors that exist in open_clip but do not enter the token embeddings; SD 1.x files lack them.
UNUSED_BY_EMBEDDING = frozenset({"text_projection", "logit_scale"})
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@functools.cache
def bpe_tokenizer() -> SimpleTokenizer:
    """open_clip's CLIP BPE tokenizer (vocabulary bundled with open_clip; built once per process)."""
    return SimpleTokenizer()


class FrozenOpenCLIPEmbedder(nn.Module):
    """Caption encoder for cross-attention: ``list[str] -> [B, max_length, output_dim]``.

    Args:
        arch: open_clip model name (``"ViT-H-14"``) or config mapping (tiny test configs).
        layer: ``"penultimate"`` (SD 2.x) or ``"last"`` (SD 1.x).
        max_length: token positions; must equal the tower's context length (77).
        weights_path: local weight file (open_clip, transformers or whole-SD layout); ``None`` keeps
            the seeded random initialisation.
        freeze: eval mode forever, no gradients.
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` weights; the output has this dtype.
        pad_with_eot: pad with the EOT id (transformers' CLIPTokenizer, SD 1.x) instead of 0
            (open_clip, SD 2.x).
        quick_gelu: override the config's activation (``True`` for OpenAI CLIP weights).
        init_seed: seed of the random initialisation (used before any weights are loaded).

    Attributes:
        output_dim: ``D`` of the output ``[B, max_length, D]`` (the tower's width).
        model: the :class:`OpenCLIPTextTower`; its state dict is SD's ``cond_stage_model.model.*``.
    """

    def __init__(
        self,
        arch: str | Mapping[str, Any] = "ViT-H-14",
        layer: str = "penultimate",
        max_length: int = 77,
        weights_path: str | Path | None = None,
        freeze: bool = True,
        dtype: str = "float32",
        pad_with_eot: bool = False,
        quick_gelu: bool | None = None,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        if layer not in SKIPPED_BLOCKS:
            raise ValueError(f"layer must be one of {sorted(SKIPPED_BLOCKS)}, got {layer!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            self.model = OpenCLIPTextTower.from_config(arch, quick_gelu=quick_gelu)
        if max_length != self.model.context_length:
            raise ValueError(
                f"max_length={max_length} must equal the text tower's context length "
                f"{self.model.context_length} (its positional embedding has that many rows)"
            )
        num_blocks = len(self.model.transformer.resblocks)
        if num_blocks <= SKIPPED_BLOCKS[layer]:
            raise ValueError(
                f"layer={layer!r} needs at least {SKIPPED_BLOCKS[layer] + 1} blocks, got {num_blocks}"
            )
        self.layer = layer
        self.max_length = max_length
        self.output_dim = self.model.width
        self.frozen = freeze
        tokenizer = bpe_tokenizer()
        if self.model.token_embedding.num_embeddings < tokenizer.vocab_size:
            raise ValueError(
                f"text_cfg.vocab_size={self.model.token_embedding.num_embeddings} is smaller than the CLIP BPE "
                f"vocabulary ({tokenizer.vocab_size} ids); use vocab_size {tokenizer.vocab_size}"
            )
        self.sot_token_id = tokenizer.sot_token_id
        self.eot_token_id = tokenizer.eot_token_id
        self.pad_token_id = self.eot_token_id if pad_with_eot else 0

        self.weights_path = None if weights_path is None else str(weights_path)
        if weights_path is not None:
            self.load_weights(weights_path)
        else:
            log.info("%s: no weights_path, random text tower (init_seed=%d)", type(self).__name__, init_seed)
        self.model.to(DTYPES[dtype])
        if freeze:
            self.model.requires_grad_(False)
            self.train(False)

    def train(self, mode: bool = True) -> FrozenOpenCLIPEmbedder:
        """Frozen encoders stay in eval mode whatever ``mode`` says (dropout-free and deterministic)."""
        return super().train(False if self.frozen else mode)

    def load_weights(self, path: str | Path) -> LoadReport:
        """Load the tower from a local file (any layout accepted by :meth:`load_pretrained_state_dict`)."""
        return self.load_pretrained_state_dict(load_state_dict_file(path), source=str(path))

    def load_pretrained_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], *, source: str = "<in-memory state dict>"
    ) -> LoadReport:
        """Load open_clip or transformers text weights, strictly except for unused tensors.

        Every tensor that shapes the embedding must be present with the right shape. ``text_projection``
        and ``logit_scale`` are absent from SD 1.x's ``CLIPTextModel``; they keep their initial values
        and are reported as "not in checkpoint, unused".

        Args:
            state_dict: open_clip (full CLIP or text tower) or transformers (``CLIPTextModel``,
                with or without ``text_model.``) names, optionally with SD prefixes.
            source: file name for messages.

        Raises:
            StateDictMismatchError: missing, unexpected or mis-shaped tensors.
            ValueError: unrecognised layout.
        """
        tensors, layout = to_open_clip_text_state_dict(state_dict, source=source)
        report = load_partial(
            self.model,
            tensors,
            what=f"{type(self).__name__} text tower ({layout} layout)",
            source=source,
            expected_missing=UNUSED_BY_EMBEDDING.__contains__,
        )
        for key in report.missing:
            log.info("%s: '%s' not in checkpoint, unused by the embedding (keeps its init)", source, key)
        return report

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions to token ids ``[B, max_length]`` (int64, CPU): SOT, BPE ids, EOT, padding."""
        if isinstance(texts, str):
            raise TypeError("tokenize expects a list of captions, got a single string")
        tokenizer = bpe_tokenizer()
        rows = []
        for text in texts:
            ids = [self.sot_token_id, *tokenizer.encode(text), self.eot_token_id]
            if len(ids) > self.max_length:
                ids = [*ids[: self.max_length - 1], self.eot_token_id]
            rows.append(ids + [self.pad_token_id] * (self.max_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), self.max_length)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, max_length]`` to context ``[B, max_length, output_dim]``."""
        if tokens.ndim != 2 or tokens.shape[1] != self.max_length:
            raise ValueError(f"tokens must be [B, {self.max_length}], got {list(tokens.shape)}")
        tower = self.model
        tokens = tokens.to(tower.token_embedding.weight.device)
        x = tower.token_embedding(tokens) + tower.positional_embedding
        blocks = tower.transformer.resblocks
        for block in blocks[: len(blocks) - SKIPPED_BLOCKS[self.layer]]:
            x = block(x, attn_mask=tower.attn_mask)
        return tower.ln_final(x)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions to context ``[B, max_length, output_dim]`` (no caching: the caller caches)."""
        return self.encode_tokens(self.tokenize(texts))


class FrozenCLIPTextEmbedder(FrozenOpenCLIPEmbedder):
    """SD 1.x / SCVideo text encoder: OpenAI CLIP ViT-L/14 text model, last layer, ``[B, 77, 768]``.

    Same as :class:`FrozenOpenCLIPEmbedder` with SD 1.x's choices: QuickGELU (transformers
    ``hidden_act="quick_gelu"``), output after the last block and the final LayerNorm, EOT padding.
    Loads the ``cond_stage_model.transformer.text_model.*`` weights of SD 1.x checkpoints.
    """

    def __init__(
        self,
        arch: str | Mapping[str, Any] = "ViT-L-14",
        layer: str = "last",
        max_length: int = 77,
        weights_path: str | Path | None = None,
        freeze: bool = True,
        dtype: str = "float32",
        pad_with_eot: bool = True,
        quick_gelu: bool | None = True,
        init_seed: int = 0,
    ) -> None:
        super().__init__(
            arch=arch,
            layer=layer,
            max_length=max_length,
            weights_path=weights_path,
            freeze=freeze,
            dtype=dtype,
            pad_with_eot=pad_with_eot,
            quick_gelu=quick_gelu,
            init_seed=init_seed,
        )
