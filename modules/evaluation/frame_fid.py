"""Frame FID: FID (Heusel et al. 2017) between the frames of generated and of real videos.

Computed by `torchmetrics.image.fid.FrechetInceptionDistance` with a custom feature network (any
`nn.Module` mapping frames `[N, 3, H, W]` in [0, 1] to features `[N, D]`; no torch-fidelity needed).
The default network is :class:`InceptionV3Features`: torchvision's Inception-v3 with a local ImageNet
weight file, 2048-d pool features of frames resized to 299 x 299 (bilinear).

Note that FID with torchvision's Inception-v3 weights differs from FID with the TF "pt_inception-2015-12-05"
weights that pytorch-fid / torch-fidelity use for published image FIDs; compare numbers computed with the
same network. Make-A-Video (sec. 4.1) reports this metric on MSR-VTT as "FID" of frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from einops import rearrange
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance

from modules.checkpoints.safe_load import load_state_dict_file
from modules.checkpoints.strict_load import load_strict
from modules.evaluation.video_metric import MissingWeightsError, check_video_batch, resolve_device

INCEPTION_SIZE = 299
INCEPTION_FEATURES = 2048


class InceptionV3Features(nn.Module):
    """Inception-v3 pool features: frames `[N, 3, H, W]` in [0, 1] -> `[N, 2048]`.

    Args:
        weights_path: torchvision's ImageNet state dict (`inception_v3_google-0cc3c7bd.pth`, auxiliary
            classifier included) or a `.safetensors` copy with the same keys.
        random_init_ok: allow `weights_path=None` (random network; tests only).

    The torchvision weights were converted from Google's TF model, which expects inputs in [-1, 1]; frames
    are therefore mapped to 2 x - 1 (what torchvision's `transform_input` does to ImageNet-normalised input).
    """

    num_features = INCEPTION_FEATURES

    def __init__(self, weights_path: str | None, random_init_ok: bool = False) -> None:
        super().__init__()
        if weights_path is None and not random_init_ok:
            raise MissingWeightsError(
                "frame FID needs Inception-v3 weights: set "
                "metrics.frame_fid.feature_extractor.weights_path=/path/to/inception_v3_google-0cc3c7bd.pth "
                "<metrics.frame_fid>"
            )
        network = torchvision.models.inception_v3(
            weights=None, aux_logits=True, transform_input=False, init_weights=weights_path is None
        )
        if weights_path is not None:
            load_strict(
                network, load_state_dict_file(weights_path), what="Inception-v3", source=str(weights_path)
            )
        network.fc = nn.Identity()
        self.network = network.eval()
        self.weights_path = weights_path

    def train(self, mode: bool = True) -> InceptionV3Features:
        """Always eval mode (BatchNorm statistics and no auxiliary head), whatever the caller asks."""
        return super().train(False)

    def forward(self, frames: Tensor) -> Tensor:
        """`[N, 3, H, W]` in [0, 1] -> `[N, 2048]`."""
        images = F.interpolate(
            frames.float(), size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False
        )
        return self.network(2.0 * images - 1.0)


def select_frames(videos: Tensor, frames_per_video: int | None) -> Tensor:
    """`[B, T, C, H, W]` -> frames `[B * K, C, H, W]`: all T frames, or K evenly spaced ones."""
    if frames_per_video is not None:
        if not 1 <= frames_per_video <= videos.shape[1]:
            raise ValueError(
                f"metrics.frame_fid.frames_per_video={frames_per_video} must be in 1..{videos.shape[1]} "
                "(the frames per clip)"
            )
        indices = torch.linspace(0, videos.shape[1] - 1, frames_per_video).round().long()
        videos = videos[:, indices]
    return rearrange(videos, "b t c h w -> (b t) c h w")


class FrameFID:
    """FID between frames of generated and real videos (implements `VideoMetric`).

    Args:
        feature_extractor: `nn.Module` frames `[N, 3, H, W]` in [0, 1] -> `[N, D]`; give it a
            `num_features` attribute, else torchmetrics probes it with one `input_img_size` image.
        frames_per_video: frames taken from each clip (evenly spaced); None = all.
        frames_per_forward: frames per feature-network call (memory bound; does not change the result).
        input_img_size: probe image size `(C, H, W)` when the network has no `num_features`.
        device: where the network runs.
    """

    needs_real = True

    def __init__(
        self,
        feature_extractor: nn.Module,
        *,
        frames_per_video: int | None = None,
        frames_per_forward: int = 64,
        input_img_size: Sequence[int] = (3, INCEPTION_SIZE, INCEPTION_SIZE),
        device: str | torch.device = "cpu",
    ) -> None:
        self.feature_extractor = feature_extractor.eval()
        self.frames_per_video = frames_per_video
        self.frames_per_forward = frames_per_forward
        self.device = resolve_device(device)
        self.metric = FrechetInceptionDistance(
            feature=self.feature_extractor, normalize=True, input_img_size=tuple(input_img_size)
        ).to(self.device)

    @torch.inference_mode()
    def _update(self, videos: Tensor, real: bool) -> None:
        check_video_batch(videos, "frame FID")
        frames = (select_frames(videos, self.frames_per_video).float().clamp(-1.0, 1.0) + 1.0) / 2.0
        for chunk in frames.split(self.frames_per_forward):
            self.metric.update(chunk.to(self.device), real=real)

    def update_generated(self, videos: Tensor, prompts: Sequence[str]) -> None:
        self._update(videos, real=False)

    def update_real(self, videos: Tensor) -> None:
        self._update(videos, real=True)

    def compute(self) -> dict[str, float]:
        return {"frame_fid": float(self.metric.compute())}

    def settings(self) -> dict[str, Any]:
        weights_path = getattr(self.feature_extractor, "weights_path", None)
        return {
            "network": type(self.feature_extractor).__name__,
            "weights": str(Path(weights_path).name) if weights_path else "none given (random or built-in)",
            "frames_per_video": self.frames_per_video if self.frames_per_video is not None else "all",
            "real_frames": int(self.metric.real_features_num_samples),
            "generated_frames": int(self.metric.fake_features_num_samples),
        }
