"""The SD "linear" DDPM noise schedule with eps-prediction helpers and the k-diffusion sigma grid.

ART-V supplementary Table 4 (1000 timesteps, linear, 0.00085 .. 0.0120, eps-pred); the same schedule as the
SD v1 / v2 configs (ldm `make_beta_schedule("linear")`, sgm `LegacyDDPMDiscretization`).

Precision: the schedule is computed in float64 (as ldm and sgm do) and kept twice:
- float32 buffers `betas`, `alphas_cumprod`, `sigmas` for tensor maths on the model's device (q_sample, the
  eps <-> x0 conversions). They are non-persistent: the schedule is a pure function of the constructor
  arguments, so it is rebuilt from config rather than restored from (or written to) checkpoints.
- float64 CPU tensors `alphas_cumprod_f64`, `sigmas_f64` (plain attributes, not buffers, so that
  `module.to(torch.bfloat16)` cannot round them). Samplers read their per-step scalar coefficients from these.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _per_sample(coefficient: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample coefficient `[B]` to `[B, 1, ..., 1]` so it broadcasts over `like`'s trailing dims."""
    return coefficient.reshape(-1, *([1] * (like.ndim - 1)))


def rescaled_to_terminal_snr(alphas_cumprod: Tensor, terminal_snr: float) -> Tensor:
    """a_t `[N]` (float64) rescaled so that SNR(N - 1) = a / (1 - a) is `terminal_snr`, with a_0 kept: sqrt(a_t) is
    shifted and scaled linearly (Lin et al. 2024, Algorithm 1, which targets SNR 0; a small positive target keeps the
    eps <-> x0 conversions and the sigma grid of the samplers finite)."""
    if not terminal_snr > 0.0:
        raise ValueError(
            f"terminal_snr must be > 0 (the samplers divide by sqrt(a_t)) or null, got {terminal_snr} "
            "<schedule.terminal_snr>"
        )
    root = alphas_cumprod.sqrt()
    first, last = root[0], root[-1]
    target = (terminal_snr / (1.0 + terminal_snr)) ** 0.5
    if not target < first:
        raise ValueError(
            f"terminal_snr {terminal_snr} is not below the first step's SNR {float(first**2 / (1 - first**2)):.4g} "
            "<schedule.terminal_snr>"
        )
    return (target + (root - last) * (first - target) / (first - last)) ** 2


class NoiseSchedule(nn.Module):
    """SD linear schedule: betas = linspace(sqrt(start), sqrt(end), N) ** 2, alphas_cumprod = cumprod(1 - betas).

    Known values (N = 1000): alphas_cumprod[0] = 0.99915, alphas_cumprod[999] = 0.0046601,
    sigma_max = 14.6146, sigma_min = 0.02917 where sigma(t) = sqrt((1 - a_t) / a_t).

    Args:
        num_timesteps: number of DDPM steps N (ART-V supplementary Table 4: 1000).
        linear_start: first beta (Table 4: 0.00085).
        linear_end: last beta (Table 4: 0.0120).
        terminal_snr: None keeps the schedule; a number rescales it so that SNR(N - 1) equals it (Lin et al. 2024,
            "Common Diffusion Noise Schedules and Sample Steps are Flawed", Algorithm 1: sqrt(a_t) shifted and scaled
            so that sqrt(a_0) is kept and sqrt(a_{N-1}) becomes the target). Near zero it makes the last training
            step (almost) pure noise, as sampling's first step is. Not used by either paper.
    """

    betas: Tensor
    alphas_cumprod: Tensor
    sigmas: Tensor

    def __init__(
        self,
        num_timesteps: int = 1000,
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        terminal_snr: float | None = None,
    ):
        super().__init__()
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be >= 2, got {num_timesteps} <schedule.num_timesteps>")
        if not 0.0 < linear_start <= linear_end < 1.0:
            raise ValueError(
                "expected 0 < linear_start <= linear_end < 1, got "
                f"linear_start={linear_start}, linear_end={linear_end} <schedule.linear_start/linear_end>"
            )
        self.num_timesteps = num_timesteps
        self.linear_start = linear_start
        self.linear_end = linear_end
        self.terminal_snr = terminal_snr

        # betas = linspace(sqrt(beta_start), sqrt(beta_end), N) ** 2, in float64 like ldm / sgm
        betas = (
            torch.linspace(
                linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64, device="cpu"
            )
            ** 2
        )
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if terminal_snr is not None:
            alphas_cumprod = rescaled_to_terminal_snr(alphas_cumprod, terminal_snr)
            betas = 1.0 - alphas_cumprod / torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        # sigma(t) = sqrt((1 - a_t) / a_t): the k-diffusion noise level of DDPM step t
        sigmas = ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()

        self.alphas_cumprod_f64 = alphas_cumprod
        self.sigmas_f64 = sigmas
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.register_buffer("sigmas", sigmas.float(), persistent=False)

    def extra_repr(self) -> str:
        text = f"num_timesteps={self.num_timesteps}, linear_start={self.linear_start}, linear_end={self.linear_end}"
        return text if self.terminal_snr is None else f"{text}, terminal_snr={self.terminal_snr}"

    def _alpha_cumprod(self, t: Tensor, like: Tensor) -> Tensor:
        """a_t for int64 timesteps `[B]`, shaped `[B, 1, ..., 1]` against `like` `[B, ...]`, on like's device; or
        one step per frame, t `[B, T]` against a video `like` `[B, C, T, h, w]`, shaped `[B, 1, T, 1, 1]`."""
        per_frame = t.ndim == 2 and like.ndim == 5 and tuple(t.shape) == (like.shape[0], like.shape[2])
        if t.dtype != torch.int64 or not (per_frame or (t.ndim == 1 and t.shape[0] == like.shape[0])):
            raise ValueError(
                f"timesteps must be an int64 tensor of shape [B] = [{like.shape[0]}] (DDPM indices "
                f"0..{self.num_timesteps - 1}), or [B, T] for a video [B, C, T, h, w], got dtype {t.dtype} and "
                f"shape {list(t.shape)} for data of shape {list(like.shape)}"
            )
        alphas_cumprod = self.alphas_cumprod.to(like.device)[t.to(like.device)]
        if per_frame:
            return alphas_cumprod[:, None, :, None, None]
        return _per_sample(alphas_cumprod, like)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Diffuse clean data to step t: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps.

        x0, noise: `[B, ...]` (e.g. `[B, C, T, H, W]`); t: int64 `[B]`, or `[B, T]` (a step per frame) for video.
        Returns x_t `[B, ...]`, computed in at least float32.
        """
        a_t = self._alpha_cumprod(t, x0)
        return a_t.sqrt() * x0 + (1.0 - a_t).sqrt() * noise

    def predict_x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t). x_t, eps: `[B, ...]`; t: int64 `[B]` (or `[B, T]`)."""
        a_t = self._alpha_cumprod(t, x_t)
        return (x_t - (1.0 - a_t).sqrt() * eps) / a_t.sqrt()

    def eps_from_v(self, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """eps = sqrt(a_t) v + sqrt(1 - a_t) x_t for a v-prediction (Salimans & Ho 2022: v = sqrt(a_t) eps -
        sqrt(1 - a_t) x0). x_t, v: `[B, ...]`; t: int64 `[B]` (or `[B, T]`)."""
        a_t = self._alpha_cumprod(t, x_t)
        return a_t.sqrt() * v + (1.0 - a_t).sqrt() * x_t

    def predict_eps_from_x0(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t). x_t, x0: `[B, ...]`; t: int64 `[B]` (or `[B, T]`)."""
        a_t = self._alpha_cumprod(t, x_t)
        return (x_t - a_t.sqrt() * x0) / (1.0 - a_t).sqrt()

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """sigma of DDPM steps t (int64, any shape) from the float32 grid, on t's device."""
        return self.sigmas.to(t.device)[t]

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Index of the nearest grid sigma, as sgm's `DiscreteDenoiser.sigma_to_idx` snaps a continuous sigma.

        sigma: any shape. float64 input is compared against the float64 grid, anything else against the
        float32 grid (in float32). Returns int64 of sigma's shape, on sigma's device.
        """
        if sigma.dtype == torch.float64:
            grid = self.sigmas_f64.to(sigma.device)
        else:
            grid = self.sigmas.to(sigma.device)
            sigma = sigma.float()
        return (sigma.unsqueeze(-1) - grid).abs().argmin(dim=-1)
