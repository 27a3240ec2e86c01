"""Caption and prompt embeddings for retrieval, from the model's own frozen text encoder.

Pooling (our choice; the POS abstract does not say how captions are compared): the L2-normalised hidden state
at the end-of-text (EOT) token of the encoder's output, i.e. of the context `[B, 77, D]` that conditions the
UNet. Under CLIP's causal mask the EOT token is the first position that has seen the whole caption, which is
why CLIP pools there; padding and the start token (identical for every caption) are left out. For SD 1.x
(last layer + final LayerNorm) it is CLIP's pooled text feature before the projection. Retrieval compares these
vectors by cosine similarity.

The same pooled vector comes out of the forward that produces the prompt's context for sampling, so a prompt is
encoded once (`TextEmbeddingCache`). The index records which encoder embedded its captions (`encoder_identity`:
architecture facts plus the pooled embeddings of fixed probe sentences); at query time the model's encoder must
reproduce both, otherwise cosine scores would compare unrelated spaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

POOLING = "eot_token_of_context"
PROBE_SENTENCES = (
    "a red circle moving left",
    "a panda is playing guitar in the bar",
    "an astronaut is riding a horse in the space",
)
# what the pooling needs from a text encoder (FrozenOpenCLIPEmbedder's API)
TOKEN_API = ("tokenize", "encode_tokens", "eot_token_id", "output_dim")
# probe embeddings are unit vectors; encoders that differ give cosines far below this
PROBE_MIN_COSINE = 0.999


class EncoderMismatchError(ValueError):
    """The index was built with another text encoder than the model's."""


def _require_token_api(text_encoder: nn.Module) -> None:
    missing = [name for name in TOKEN_API if not hasattr(text_encoder, name)]
    if missing:
        raise TypeError(
            f"POS retrieval pools at the EOT token and needs a text encoder with {list(TOKEN_API)} "
            f"(modules.text_encoders.FrozenOpenCLIPEmbedder); {type(text_encoder).__name__} lacks {missing}"
        )


def eot_pool(context: Tensor, tokens: Tensor, eot_token_id: int) -> Tensor:
    """L2-normalised context at the first EOT token: context `[N, L, D]`, tokens `[N, L]` -> `[N, D]` float32."""
    is_eot = tokens.to(context.device) == eot_token_id
    if not bool(is_eot.any(dim=1).all()):
        raise ValueError(
            "eot_pool: a token row has no EOT token; tokens must come from the encoder's tokenize"
        )
    # argmax returns the first maximum: the first EOT (SD 1.x pads with EOT, so later ones are padding)
    positions = is_eot.int().argmax(dim=1)
    pooled = context[torch.arange(context.shape[0], device=context.device), positions]
    return F.normalize(pooled.float(), dim=-1)


@dataclass(frozen=True)
class EncodedText:
    """context `[N, L, D]` (what conditions the UNet) and pooled `[N, D]` (unit vectors, for retrieval)."""

    context: Tensor
    pooled: Tensor


class CaptionEmbedder:
    """Encode captions with the model's frozen text encoder: context and EOT-pooled embedding in one forward.

    Args:
        text_encoder: a `FrozenOpenCLIPEmbedder` (or anything with its tokenize / encode_tokens API).
    """

    def __init__(self, text_encoder: nn.Module) -> None:
        _require_token_api(text_encoder)
        self.text_encoder = text_encoder
        self.embedding_dim = int(text_encoder.output_dim)

    @torch.no_grad()
    def encode(self, captions: Sequence[str]) -> EncodedText:
        """Captions -> context `[N, L, D]` (as `text_encoder(captions)` returns it) and pooled `[N, D]`."""
        tokens = self.text_encoder.tokenize(list(captions))
        context = self.text_encoder.encode_tokens(tokens)
        return EncodedText(context=context, pooled=eot_pool(context, tokens, self.text_encoder.eot_token_id))

    def pooled(self, captions: Sequence[str]) -> Tensor:
        """Unit caption embeddings `[N, D]` float32."""
        return self.encode(captions).pooled

    def identity(self) -> dict[str, Any]:
        """What must be equal between index build and query (the probe embeddings come separately)."""
        encoder = self.text_encoder
        tower = getattr(encoder, "model", None)
        blocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
        return {
            "class": f"{type(encoder).__module__}.{type(encoder).__qualname__}",
            "pooling": POOLING,
            "layer": getattr(encoder, "layer", None),
            "max_length": getattr(encoder, "max_length", None),
            "pad_token_id": getattr(encoder, "pad_token_id", None),
            "width": getattr(tower, "width", None),
            "num_blocks": None if blocks is None else len(blocks),
        }

    def probe_embeddings(self) -> Tensor:
        """Pooled embeddings `[P, D]` of `PROBE_SENTENCES`: a fingerprint of the encoder's weights."""
        return self.pooled(PROBE_SENTENCES).cpu()


def check_same_encoder(
    stored_identity: dict[str, Any], stored_probes: Tensor, embedder: CaptionEmbedder, index_path: str
) -> None:
    """Raise EncoderMismatchError unless `embedder` is the encoder the index at `index_path` was built with."""
    identity = embedder.identity()
    differing = {key: (stored_identity.get(key), value) for key, value in identity.items()}
    differing = {key: pair for key, pair in differing.items() if pair[0] != pair[1]}
    if differing:
        details = ", ".join(f"{key}: index {old!r} vs model {new!r}" for key, (old, new) in differing.items())
        raise EncoderMismatchError(
            f"{index_path} was built with another text encoder than the model's ({details}); rebuild it with "
            "`python -m modules.pos.build_index` and the model's text_encoder config <pool>"
        )
    probes = embedder.probe_embeddings()
    if stored_probes.shape != probes.shape:
        raise EncoderMismatchError(
            f"{index_path}: probe embeddings {list(stored_probes.shape)} vs the model's {list(probes.shape)}; "
            "rebuild the index with the model's text encoder <pool>"
        )
    cosines = (stored_probes.float() * probes.float()).sum(dim=-1)
    if bool((cosines < PROBE_MIN_COSINE).any()):
        raise EncoderMismatchError(
            f"{index_path} was built with a text encoder of the same architecture but other weights (probe "
            f"cosines {[round(c, 4) for c in cosines.tolist()]}, expected >= {PROBE_MIN_COSINE}); rebuild it with "
            "the model's text encoder weights <pool>"
        )
