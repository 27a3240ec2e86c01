"""The numeric precision of generation (the top-level keys `inference_precision` and `allow_tf32`;
conf/inference/default.yaml), read alike by sample.py, eval.py and the training sample logger.

bf16 / fp16 run the networks under `torch.autocast`: matmuls and convolutions in the low-precision dtype, the weights
and the sampler's state in float32. GroupNorm and LayerNorm compute in float32 whatever autocast does
(modules/blocks/normalization.py), and attention's softmax runs in float32 (the naive backend casts explicitly; the
SDPA kernels accumulate in float32), as in training. The decoded video comes back in float32.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class InferencePrecision:
    """How generation computes.

    Args:
        precision: "fp32" (no autocast), "bf16" (autocast to bfloat16; CUDA or CPU) or "fp16" (autocast to float16;
            CUDA only).
        allow_tf32: on CUDA, TF32 tensor cores for float32 matmuls and cuDNN convolutions (Ampere and later).
    """

    precision: str = "fp32"
    allow_tf32: bool = True

    def __post_init__(self) -> None:
        if self.precision not in AUTOCAST_DTYPES:
            raise ValueError(
                f"inference_precision must be one of {tuple(AUTOCAST_DTYPES)}, got {self.precision!r} "
                "<inference_precision>"
            )

    def check(self, device: torch.device) -> None:
        """Refuse, before any work, a precision the device cannot run."""
        if self.precision == "fp16" and device.type != "cuda":
            raise ValueError(
                f"inference_precision=fp16 needs a CUDA device, got {device.type}; use bf16 or fp32 on the CPU "
                "<inference_precision>"
            )

    @contextmanager
    def applied(self, device: torch.device) -> Iterator[None]:
        """Within the block, generation on `device` runs at this precision (TF32 switches restored afterwards)."""
        self.check(device)
        dtype = AUTOCAST_DTYPES[self.precision]
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = self.allow_tf32
            torch.backends.cudnn.allow_tf32 = self.allow_tf32
        try:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def inference_precision(config: Mapping[str, Any]) -> InferencePrecision:
    """The top-level `inference_precision` and `allow_tf32` of an entry point's config as an `InferencePrecision`;
    a missing key: its default."""
    return InferencePrecision(
        precision=str(config.get("inference_precision", "fp32")),
        allow_tf32=bool(config.get("allow_tf32", True)),
    )
