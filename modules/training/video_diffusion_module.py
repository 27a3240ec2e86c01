"""The LightningModule shared by SCVideo and ART-V: latent video diffusion with eps-prediction.

Everything model-specific (what a training example is, which conditions exist, how a video is generated)
lives in the `VideoDenoiser` passed as `net`; this module owns the frozen first stage and text encoder,
the noise schedule, the eps-MSE loss, condition dropout, the EMA of the trainable weights, optimisation,
non-finite-loss handling and logging.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from lightning.pytorch.strategies import Strategy
from torch import Tensor, nn
from torch.optim import Optimizer

from datamodules.clip_batches import select_samples
from modules.autoencoder.frame_chunks import map_frame_chunks
from modules.checkpoints.frozen_weights import (
    FINGERPRINT_KEY,
    FrozenWeightsFingerprint,
    check_frozen_weights,
    fingerprint_frozen_weights,
)
from modules.checkpoints.sd_checkpoint import load_sd_checkpoint
from modules.diffusion.noise_schedule import NoiseSchedule
from modules.generation import GeneratedLatents, GenerationRequest, GenerationResult, LatentRequest
from modules.training.condition_dropout import drop_conditions
from modules.training.ema import ExponentialMovingAverage
from modules.training.fsdp import (
    clean_parameter_name,
    full_parameters,
    loads_checkpoint_weights_itself,
    sharded_root,
)
from modules.video_denoiser import VideoDenoiser

log = logging.getLogger(__name__)

FROZEN_PREFIXES = ("first_stage.", "text_encoder.")


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive non-finite losses."""


class VideoDiffusionModule(L.LightningModule):
    """Train and sample a latent video diffusion model.

    Args:
        net: the model-specific denoiser (SCVideo, ART-V).
        first_stage: frozen autoencoder with `encode_video` / `decode_video` (`[B, 3, T, H, W]` <-> latents).
        text_encoder: frozen text encoder, `list[str] -> [B, 77, D]`.
        schedule: the noise schedule (SD linear, 1000 steps).
        optimizer: partial optimizer, called with the trainable parameters.
        lr_scheduler: partial LR scheduler called with the optimizer, stepped every optimizer step; or None.
        sampler: partial sampler, called with `schedule=`.
        guidance: guidance object (CFG, ART-V eq. (1)).
        condition_dropout: per-condition drop probability in training, e.g. {"text": 0.1}.
        ema_decay: EMA decay of the trainable weights, or None for no EMA.
        ema_use_num_updates: ldm-style EMA warm-up (see `ExponentialMovingAverage`).
        vae_chunk_frames: frames per first-stage call, so memory does not grow with clip length.
        max_consecutive_nonfinite: stop with an error after this many non-finite losses in a row.
        min_snr_gamma: None for the papers' plain eps-MSE (SD, ART-V Table 4); a number gamma weights each sample's
            eps-MSE by min(SNR(t), gamma) / SNR(t) (Min-SNR-gamma, Hang et al. 2023), which caps the weight of the
            low-noise steps that dominate eps-MSE gradients; used by the from-scratch toy runs.
        objective: "eps" for eps-MSE (both papers); "v" for v-MSE (Salimans & Ho 2022), computed as the eps-MSE
            weighted by 1 / a_t = (1 + SNR) / SNR, which is the v-MSE whatever the net outputs: it weighs every step's
            x0 error by 1 + SNR, so the high-noise steps, where only the caption can say what the video does, count.
            With `min_snr_gamma` the x0 weight becomes min(1 + SNR, 1 + gamma): low-noise steps capped as Min-SNR caps
            them, weight 1 kept on the noisiest steps (Hang et al.'s v form, min(SNR, gamma) / (SNR + 1), would give
            the pure-noise steps weight 0). Used with `net.prediction="v"` by the from-scratch SCVideo toy.
        high_noise_fraction: share of each batch's samples whose DDPM step is drawn uniformly from
            [high_noise_from, N) instead of [0, N) (0: uniform over all steps, both papers). No loss reweighting: the
            noisiest steps, where only the caption tells what a clip does, get more of the training.
        high_noise_from: first DDPM step of that high-noise range.
        first_frame_lead_fraction: share of each batch's clips whose first frame is noised less than the rest: its
            DDPM step is drawn uniformly from [0, t], t being the step of the clip's other frames (0: one step per
            clip, both papers). The later frames must then follow a legible first frame the way the caption says,
            which a clip noised as one never asks where its own frames show the motion. Needs a net that takes one
            step per frame (`VideoDenoiser.per_frame_steps`: SCVideo).
        pretrained: a full SD checkpoint; its first stage (and its text encoder, unless the text encoder was
            given its own `weights_path`) are loaded with strict key matching. The net loads its UNet part itself.
    """

    def __init__(
        self,
        net: VideoDenoiser,
        first_stage: nn.Module,
        text_encoder: nn.Module,
        schedule: NoiseSchedule,
        optimizer: Callable[..., Optimizer],
        lr_scheduler: Callable[[Optimizer], Any] | None,
        sampler: Callable[..., Any],
        guidance: Any,
        condition_dropout: dict[str, float],
        ema_decay: float | None = 0.9999,
        ema_use_num_updates: bool = True,
        vae_chunk_frames: int = 8,
        max_consecutive_nonfinite: int = 10,
        pretrained: str | None = None,
        min_snr_gamma: float | None = None,
        objective: str = "eps",
        high_noise_fraction: float = 0.0,
        high_noise_from: int = 900,
        first_frame_lead_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be > 0 or null, got {min_snr_gamma} <model.min_snr_gamma>")
        if objective not in ("eps", "v"):
            raise ValueError(f"model.objective must be eps or v, got {objective!r}")
        if not 0.0 <= high_noise_fraction <= 1.0:
            raise ValueError(f"model.high_noise_fraction must be in [0, 1], got {high_noise_fraction}")
        if not 0 <= high_noise_from < schedule.num_timesteps:
            raise ValueError(
                f"model.high_noise_from must be a DDPM step in [0, {schedule.num_timesteps}), got {high_noise_from}"
            )
        if not 0.0 <= first_frame_lead_fraction <= 1.0:
            raise ValueError(
                f"model.first_frame_lead_fraction must be in [0, 1], got {first_frame_lead_fraction}"
            )
        if first_frame_lead_fraction > 0 and not net.per_frame_steps:
            raise ValueError(
                f"model.first_frame_lead_fraction={first_frame_lead_fraction} needs one DDPM step per frame, which "
                f"{type(net).__name__} does not take (its `per_frame_steps` is False); set it to 0"
            )
        if pretrained is not None:
            own_text_weights = getattr(text_encoder, "weights_path", None) is not None
            load_sd_checkpoint(
                pretrained, first_stage=first_stage, text_encoder=None if own_text_weights else text_encoder
            )
        self.net = net
        self.first_stage = first_stage.requires_grad_(False).eval()
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.schedule = schedule
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.sampler = sampler(schedule=schedule)
        self.guidance = guidance
        self.condition_dropout = dict(condition_dropout)
        self.vae_chunk_frames = vae_chunk_frames
        self.max_consecutive_nonfinite = max_consecutive_nonfinite
        self.min_snr_gamma = min_snr_gamma
        self.objective = objective
        self.high_noise_fraction = high_noise_fraction
        self.high_noise_from = high_noise_from
        self.first_frame_lead_fraction = first_frame_lead_fraction
        self.net.configure_trainable()
        self.ema = (
            ExponentialMovingAverage(self.net.trainable_named_parameters(), ema_decay, ema_use_num_updates)
            if ema_decay is not None
            else None
        )
        self.frozen_net_keys, self.frozen_fingerprint = self.fingerprint_frozen_net()
        self.run_config: dict[str, Any] | None = None
        self._null_text: Tensor | None = None
        self._window_finite: Tensor | None = None  # all losses of the current accumulation window finite
        self._consecutive_nonfinite = 0
        self.register_buffer("skipped_nonfinite_steps", torch.zeros((), dtype=torch.long))
        # base of the per-batch training seeds (drawn from the run's seeded RNG; kept in checkpoints)
        self.training_seed = int(torch.randint(0, 2**62, (), device="cpu").item())

    # ---- frozen parts -------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> VideoDiffusionModule:
        super().train(mode)
        self.first_stage.eval()
        self.text_encoder.eval()
        return self

    @torch.no_grad()
    def encode_video(self, video: Tensor) -> Tensor:
        """Pixels `[B, T, 3, H, W]` in [-1, 1] -> scaled latents `[B, C, T, h, w]`."""
        return self.first_stage.encode_video(
            rearrange(video, "b t c h w -> b c t h w"), chunk_size=self.vae_chunk_frames
        )

    @torch.no_grad()
    def clip_latents(self, batch: dict[str, Any], frame_indices: Tensor | None) -> Tensor:
        """Scaled latents `[B, C, F, h, w]` of the frames `frame_indices` `[B, F]` (all T when None) of each clip.

        From video shards the batch holds pixels `video` `[B, T, 3, H, W]`: each distinct listed frame is
        encoded once, to the first stage's posterior moments. From latent shards (datamodules/latent_shards.py) it
        holds those moments already, `moments` `[B, T, M, h, w]`, and nothing is encoded. Either way the latents
        are then drawn from the moments alike, so both give the same loss for the same clip and seed.
        """
        if "moments" in batch:
            moments = batch["moments"].float()
            if frame_indices is not None:
                moments = moments[torch.arange(moments.shape[0])[:, None], frame_indices.to(moments.device)]
        else:
            moments = self.encode_moments(batch["video"], frame_indices)
        return self.first_stage.sample_latent(rearrange(moments, "b f m h w -> b m f h w"), True, None)

    @torch.no_grad()
    def encode_moments(self, video: Tensor, frame_indices: Tensor | None) -> Tensor:
        """Pixels `[B, T, 3, H, W]` -> first-stage posterior moments `[B, F, M, h, w]` of the frames `frame_indices`
        `[B, F]` (all T when None); a frame listed twice in a clip is encoded once."""
        batch, num_frames = video.shape[:2]
        if frame_indices is None:  # every frame, each once: no gather
            moments = map_frame_chunks(
                self.first_stage.posterior_moments,
                rearrange(video, "b t c h w -> b c t h w"),
                self.vae_chunk_frames,
            )
            return rearrange(moments, "b m t h w -> b t m h w")
        flat = (torch.arange(batch)[:, None] * num_frames + frame_indices.cpu()).flatten()
        distinct, inverse = torch.unique(flat, return_inverse=True)
        frames = rearrange(video, "b t c h w -> (b t) c h w")[distinct.to(video.device)]
        moments = map_frame_chunks(
            self.first_stage.posterior_moments,
            rearrange(frames, "n c h w -> 1 c n h w"),
            self.vae_chunk_frames,
        )
        moments = rearrange(moments, "1 m n h w -> n m h w")[inverse.to(moments.device)]
        return rearrange(moments, "(b f) m h w -> b f m h w", b=batch)

    @torch.no_grad()
    def decode_video(self, latents: Tensor) -> Tensor:
        """Latents `[B, C, T, h, w]` -> pixels `[B, T, 3, H, W]` clamped to [-1, 1]."""
        video = self.first_stage.decode_video(latents, chunk_size=self.vae_chunk_frames)
        return rearrange(video, "b c t h w -> b t c h w").clamp(-1.0, 1.0)

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> Tensor:
        """Captions -> text embeddings `[B, 77, D]`."""
        return self.text_encoder(list(captions)).to(self.device)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Tensor:
        """Prompts -> text embeddings `[B, 77, D]`, each distinct prompt encoded alone, so that a prompt's embedding
        does not depend on the others of its batch (a video made in a batch is the video made alone)."""
        distinct = {prompt: self.encode_text([prompt]) for prompt in dict.fromkeys(prompts)}
        return torch.cat([distinct[prompt] for prompt in prompts])

    def null_text(self) -> Tensor:
        """Embedding of the empty prompt `[1, 77, D]`, the null text condition (cached)."""
        if self._null_text is None or self._null_text.device != self.device:
            self._null_text = self.encode_text([""])
        return self._null_text

    # ---- training -----------------------------------------------------------------------------------
    def diffusion_loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> Tensor:
        """eps-prediction MSE (ART-V supplementary Table 4; SCVideo follows SD), Min-SNR-weighted per sample when
        `min_snr_gamma` is set, or the v-MSE (`objective="v"`)."""
        clips = batch["moments"] if "moments" in batch else batch["video"]  # [B, T, ...]
        frame_indices = self.net.training_frame_indices(clips.shape[0], clips.shape[1])
        example = self.net.training_example(self.clip_latents(batch, frame_indices), frame_indices)
        # latent shards may carry the frozen text encoder's output already (encode_latents --text-embeddings)
        text = (
            batch["text_embedding"].float()
            if "text_embedding" in batch
            else self.encode_text(batch["caption"])
        )
        cond = {"text": text, **example.cond}
        if self.training:
            cond = drop_conditions(
                cond, self.net.null_condition(cond, self.null_text()), self.condition_dropout
            )
        x0 = example.x0
        t = self.draw_timesteps(x0.shape[0], generator)
        if self.first_frame_lead_fraction > 0:
            t = self.lead_first_frame(t, x0.shape[2], generator)
        noise = (
            torch.randn(x0.shape, generator=generator, device="cpu").to(x0)
            if generator
            else torch.randn_like(x0)
        )
        t = t.to(self.device)
        x_t = self.schedule.q_sample(x0, t, noise)
        eps = self.net(x_t, t, cond)
        if self.min_snr_gamma is None and self.objective == "eps":
            return F.mse_loss(eps.float(), noise.float())
        error = (eps.float() - noise.float()).pow(2)
        if t.ndim == 2:  # one step per frame: each frame's error weighted at its own step
            per_frame = rearrange(error, "b c t h w -> b t (c h w)").mean(2)
            return (self.loss_weights(t) * per_frame).mean()
        per_sample = error.flatten(1).mean(1)
        return (self.loss_weights(t) * per_sample).mean()

    def draw_timesteps(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """DDPM steps of one training batch `[B]` (int64, CPU): uniform over [0, N), except that a share
        `high_noise_fraction` of the samples draws from [high_noise_from, N)."""
        num_timesteps = self.schedule.num_timesteps
        t = torch.randint(0, num_timesteps, (batch_size,), generator=generator, device="cpu")
        if self.high_noise_fraction > 0:
            high = torch.randint(
                self.high_noise_from, num_timesteps, (batch_size,), generator=generator, device="cpu"
            )
            pick = torch.rand(batch_size, generator=generator, device="cpu") < self.high_noise_fraction
            t = torch.where(pick, high, t)
        return t

    def lead_first_frame(
        self, t: Tensor, num_frames: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Clip steps `[B]` -> per-frame steps `[B, T]` (int64, CPU): every frame at its clip's step t, except the
        first frame of a share `first_frame_lead_fraction` of the clips, drawn uniformly from [0, t]."""
        frames = t[:, None].repeat(1, num_frames)
        lead = torch.rand(t.shape[0], generator=generator, device="cpu") < self.first_frame_lead_fraction
        first = (torch.rand(t.shape[0], generator=generator, device="cpu") * (t + 1)).long().clamp(max=t)
        frames[:, 0] = torch.where(lead, first, t)
        return frames

    def loss_weights(self, t: Tensor) -> Tensor:
        """Per-sample weights of eps-MSE for DDPM steps `t` `[B]` -> `[B]` (or per frame, `[B, T]` -> `[B, T]`), i.e.
        x0-MSE weights divided by SNR(t): min(SNR, gamma) / SNR (Min-SNR-gamma); for `objective="v"` (1 + SNR) / SNR
        = 1 / a_t (the v-MSE), or min(1 + SNR, 1 + gamma) / SNR with `min_snr_gamma`."""
        alphas_cumprod = self.schedule.alphas_cumprod[t].float()
        snr = alphas_cumprod / (1.0 - alphas_cumprod)
        if self.objective == "v":
            if self.min_snr_gamma is None:
                return 1.0 / alphas_cumprod
            return (1.0 + snr).clamp(max=1.0 + self.min_snr_gamma) / snr
        return snr.clamp(max=self.min_snr_gamma) / snr

    @contextmanager
    def training_randomness(self) -> Iterator[None]:
        """Seed every random draw of one training batch (timesteps, noise, condition dropout, the net's own
        choices) from (training seed, rank, batch index across epochs), restoring the global RNG afterwards.

        A resumed run therefore draws exactly what an uninterrupted one would, whatever else used the global
        RNG in between (dataloader seeds, validation, sampling callbacks), and DDP ranks draw different noise.
        """
        batch_index = self.trainer.fit_loop.total_batch_idx
        seed = np.random.SeedSequence([self.training_seed, self.global_rank, batch_index]).generate_state(
            1, dtype=np.uint64
        )
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed[0]))
            yield

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        with self.training_randomness():
            loss = self.diffusion_loss(batch)
        # whether every micro-batch of this accumulation window had a finite loss; decided in `optimizer_step`
        finite = torch.isfinite(loss.detach())
        self._window_finite = finite if self._window_finite is None else self._window_finite & finite
        batch_size = len(batch["caption"])
        self.log(
            "train/loss",
            torch.nan_to_num(loss.detach(), nan=0.0, posinf=0.0, neginf=0.0),
            prog_bar=True,
            batch_size=batch_size,
        )
        self.log("train/skipped_nonfinite", self.skipped_nonfinite_steps.float(), batch_size=batch_size)
        return loss

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        """Run the window's last forward/backward, then step unless any micro-batch of the accumulation window
        had a non-finite loss on any rank (one decision per optimizer step, the same on every rank); the EMA follows
        every optimizer step here, before any `on_train_batch_end` hook, so a checkpoint written there
        (ModelCheckpoint, PreemptionCheckpoint) holds weights and EMA of the same step."""
        optimizer_closure()
        window_finite = self._window_finite is None or bool(self._window_finite)
        self._window_finite = None
        if not self.trainer.strategy.reduce_boolean_decision(window_finite, all=True):
            self.skip_nonfinite_step(optimizer)
            return
        self._consecutive_nonfinite = 0
        optimizer.step()
        self.update_ema(self.trainer.strategy)

    def skip_nonfinite_step(self, optimizer: Optimizer) -> None:
        """Drop the window's gradients instead of stepping; stop after `max_consecutive_nonfinite` in a row."""
        optimizer.zero_grad(set_to_none=True)
        self.skipped_nonfinite_steps += 1
        self._consecutive_nonfinite += 1
        log.warning(
            "non-finite loss at step %d: skipping the optimizer step (%d in a row, limit %d "
            "<model.max_consecutive_nonfinite>)",
            self.global_step,
            self._consecutive_nonfinite,
            self.max_consecutive_nonfinite,
        )
        if self._consecutive_nonfinite >= self.max_consecutive_nonfinite:
            raise NonFiniteLossError(
                f"{self._consecutive_nonfinite} consecutive non-finite losses (limit "
                f"model.max_consecutive_nonfinite={self.max_consecutive_nonfinite}); lower the learning rate "
                "or check the data"
            )

    def update_ema(self, strategy: Strategy | None) -> None:
        """One EMA step of the trainable weights; under FSDP from the full parameters (modules/training/fsdp.py),
        which every rank must join."""
        if self.ema is None:
            return
        with full_parameters(strategy):
            self.ema.update([(clean_parameter_name(n), p) for n, p in self.net.trainable_named_parameters()])

    def configure_gradient_clipping(
        self,
        optimizer: Optimizer,
        gradient_clip_val: int | float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Lightning's clipping (`trainer.gradient_clip_val`, `gradient_clip_algorithm`), except by norm under FSDP:
        there the norm is of the whole gradient, all ranks' slices together, through the root FSDP module's
        `clip_grad_norm_` (every rank joins), which Lightning's FSDP precision plugin does not do."""
        root = sharded_root(self.trainer.strategy)
        if root is None or not gradient_clip_val or gradient_clip_algorithm == "value":
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        root.clip_grad_norm_(gradient_clip_val)

    @contextmanager
    def ema_weights(self) -> Iterator[None]:
        """The EMA weights in the net for the block (validation, sample videos), the training weights restored on
        exit; without EMA the training weights. Under FSDP every rank must enter it (modules/training/fsdp.py)."""
        if self.ema is None:
            yield
            return
        strategy = self._trainer.strategy if self._trainer is not None else None
        named = [(clean_parameter_name(n), p) for n, p in self.net.trainable_named_parameters()]
        with self.ema.swapped_in(named, whole=partial(full_parameters, strategy, writeback=True)):
            yield

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """eps-MSE of the batch's real samples: the padding that evens out the ranks' validation batches (`valid`
        False, datamodules/clip_batches.py) is left out; a batch of padding alone still runs the net, as every rank
        must, and weighs 0 in `val/loss`, the mean over all real samples of all ranks."""
        # a fixed generator per batch makes val/loss comparable between runs and checkpoints
        generator = torch.Generator().manual_seed(10_000 + batch_idx)
        valid = batch.get("valid")
        real = len(batch["caption"]) if valid is None else int(valid.sum())
        if 0 < real < len(batch["caption"]):
            batch = select_samples(batch, valid)
        loss = self.diffusion_loss(batch, generator=generator)
        logged = loss if real else torch.zeros_like(loss)
        self.log("val/loss", logged, prog_bar=True, sync_dist=True, batch_size=real)
        return loss

    def configure_optimizers(self) -> Any:
        params = [p for _, p in self.net.trainable_named_parameters()]
        if not params:
            raise ValueError("the model has no trainable parameters; check model.net's trainable set")
        optimizer = self.optimizer_factory(params=params)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---- sampling -----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Videos `[B, T, 3, H, W]` in [-1, 1] for a request (prompts, size, per-video generators, optional first
        frame, multi-prompt segments, initial noise; modules/generation.py), checked against the net's declared
        abilities before any work; with `return_masks` also the mask video, with `return_latents` the latents."""
        self.net.abilities.check_request(request)
        latent_size = self.latent_size(request.height, request.width)
        first_latent = None
        if request.first_frame is not None:
            first_latent = self.encode_video(request.first_frame[:, None].to(self.device))[:, :, 0]
        grid = request.prompt_grid()
        texts = [self.encode_prompts([row[segment] for row in grid]) for segment in range(len(grid[0]))]
        generated = self.net.generate(
            self.sampler,
            self.guidance,
            LatentRequest(
                texts=texts,
                null_text=self.null_text(),
                num_frames=request.frames_per_video,
                latent_size=latent_size,
                generators=request.generators,
                first_frame=first_latent,
                initial_noise=request.initial_noise,
                progress=request.progress,
            ),
        )
        return self.decode_result(request, generated)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the latents of `height x width` pixels; refuses sizes the first stage cannot encode."""
        factor = self.first_stage.downsample_factor
        if height % factor or width % factor:
            raise ValueError(
                f"resolution {height}x{width} is not divisible by the autoencoder's factor {factor} <resolution>"
            )
        return height // factor, width // factor

    def decode_result(self, request: GenerationRequest, generated: GeneratedLatents) -> GenerationResult:
        """The request's result from the net's latents: the decoded video in float32, and what else it asks for."""
        return GenerationResult(
            video=self.decode_video(generated.latents).float(),
            masks=self.mask_video(generated.masks) if request.return_masks else None,
            latents=generated.latents if request.return_latents else None,
        )

    def mask_video(self, masks: Tensor) -> Tensor:
        """Masks `[B, 1, T, h, w]` in [0, 1] -> a grey video `[B, T, 3, H, W]` in [-1, 1] at pixel size."""
        factor = self.first_stage.downsample_factor
        frames = rearrange(masks.float(), "b one t h w -> (b t) one h w")
        frames = F.interpolate(frames, scale_factor=factor, mode="nearest")
        return repeat(frames * 2.0 - 1.0, "(b t) one h w -> b t (three one) h w", b=masks.shape[0], three=3)

    # ---- checkpoints --------------------------------------------------------------------------------
    def fingerprint_frozen_net(self) -> tuple[frozenset[str], FrozenWeightsFingerprint | None]:
        """The state-dict keys of the net's frozen parameters that checkpoints may leave out, and their fingerprint:
        both empty / None unless the net rebuilds every frozen parameter from files (`frozen_weight_files`) and holds
        real tensors (not the meta device). Called once at build, before any strategy wraps or shards the net."""
        files = self.net.frozen_weight_files()
        frozen = [(f"net.{name}", p) for name, p in self.net.named_parameters() if not p.requires_grad]
        if not files or not frozen or any(p.is_meta for _, p in frozen):
            return frozenset(), None
        return frozenset(key for key, _ in frozen), fingerprint_frozen_weights(frozen, files)

    def leaves_out(self, key: str, checkpoint: Mapping[str, Any]) -> bool:
        """Whether a non-FSDP `checkpoint` of this model leaves out state-dict `key` because the model rebuilds it:
        the frozen encoders, and the frozen net weights when the checkpoint carries their fingerprint."""
        return key.startswith(FROZEN_PREFIXES) or (
            FINGERPRINT_KEY in checkpoint and key in self.frozen_net_keys
        )

    def check_frozen_weights(self, checkpoint: Mapping[str, Any], source: str = "the checkpoint") -> None:
        """Refuse a checkpoint that left out frozen net weights other than those this model was built with."""
        check_frozen_weights(checkpoint.get(FINGERPRINT_KEY), self.frozen_fingerprint, source)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """What the model rebuilds from its own source stays out of every checkpoint but FSDP ones (Lightning's FSDP
        strategy loads those itself, strictly, before `on_load_checkpoint`): the frozen encoders, and the frozen net
        weights loaded from `backbone.pretrained` (SCVideo's `trainable: paper`), stored as a fingerprint."""
        state = checkpoint["state_dict"]
        if not loads_checkpoint_weights_itself(self.trainer.strategy):
            if self.frozen_fingerprint is not None:
                checkpoint[FINGERPRINT_KEY] = self.frozen_fingerprint.to_checkpoint()
            for key in [k for k in state if self.leaves_out(k, checkpoint)]:
                del state[key]
        if self.run_config is not None:
            checkpoint["run_config"] = self.run_config
        checkpoint["training_seed"] = self.training_seed
        checkpoint["consecutive_nonfinite"] = self._consecutive_nonfinite

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.training_seed = int(checkpoint.get("training_seed", self.training_seed))
        self._consecutive_nonfinite = int(checkpoint.get("consecutive_nonfinite", 0))
        state = checkpoint.get("state_dict")
        if state is None:  # an FSDP checkpoint: the strategy has loaded every weight itself
            return
        self.check_frozen_weights(checkpoint)
        for key, value in self.state_dict().items():
            if self.leaves_out(key, checkpoint):
                state.setdefault(key, value)
