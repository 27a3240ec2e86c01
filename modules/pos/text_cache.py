"""Text embeddings computed once per prompt: the context that conditions the UNet and the pooled retrieval vector
come out of the same forward and are kept for every later use of the prompt (retrieval, inversion, sampling,
further seeds)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from modules.pos.caption_embedding import CaptionEmbedder, EncodedText


class TextEmbeddingCache:
    """Encode prompts with the model's text encoder, each distinct prompt once.

    Each prompt is encoded alone (batch of one), so its embedding does not depend on which other prompts share a
    call and equals `VideoDiffusionModule.encode_text([prompt])` bit for bit.

    Args:
        embedder: the model's text encoder with EOT pooling.
        device: where the cached contexts are kept (the model's device).
    """

    def __init__(self, embedder: CaptionEmbedder, device: torch.device | str) -> None:
        self.embedder = embedder
        self.device = torch.device(device)
        self._cache: dict[str, EncodedText] = {}
        self.encoder_calls = 0

    def encode(self, prompts: Sequence[str]) -> EncodedText:
        """context `[B, L, D]` (on `device`) and pooled `[B, D]` for the prompts, in order."""
        for prompt in dict.fromkeys(prompts):
            if prompt not in self._cache:
                encoded = self.embedder.encode([prompt])
                self.encoder_calls += 1
                self._cache[prompt] = EncodedText(
                    context=encoded.context.to(self.device), pooled=encoded.pooled
                )
        rows = [self._cache[prompt] for prompt in prompts]
        return EncodedText(
            context=torch.cat([row.context for row in rows]), pooled=torch.cat([row.pooled for row in rows])
        )
