"""ART-V (Weng et al. 2023): auto-regressive text-to-video with masked diffusion, as a `VideoDenoiser`.

Two 2D UNets (ART-V supplementary Table 1), each with a T2I-Adapter branch reading the reference frames:

- Φdynamic: SD 2.1's UNet (320 channels, out 4), initialised from SD 2.1 (`pretrained`), predicts eps_dyn;
- Φmask: the same architecture at 64 channels, head channels 32, out 1, randomly initialised, predicts the mask
  logits; M = sigmoid(.) in [0, 1].

Both read x_t (Table 1 input_shape [4, 80, 80] for both: the noisy target latent, 4 channels), the timestep, the
text (cross-attention, context 1024), the adapter features of the reference frames and, with `anchor_attention`,
the anchor frame's patch tokens (`modules/artv/anchor_attention.py`). The prediction handed to the sampler and to
the eps-MSE loss (Table 4) is the masked composition of `modules/artv/masked_diffusion.py`:
x0_hat = M * z_ref + (1 - M) * x0_dyn, in eps form. Everything is trained end to end with that loss only.

Conditions (`cond`, batch first; see `modules/artv/reference_frames.py` for the layout and its reasons):

    text       [B, 77, D]     text embedding; null value: the empty-prompt embedding
    reference  [B, 3C, h, w]  noise-augmented latents of the two previous frames (adapter input, 2C = 8 = Table 1
                              cin), then the clean previous frame (z_ref); null value: zeros
    anchor     [B, C, h, w]   the global anchor frame's clean latent; null value: zeros

Our interpretations (not stated by the paper; docs/ARCHITECTURE.md, "ART-V: what the paper does not state")
are implemented as listed there: the sigmoid mask and its composition, the adapter input (two reference
latents, noise-augmented: random level in training, a fixed small level at inference), the anchor
cross-attention block that reproduces the published parameter counts and FLOPs, text-to-video's first frame
generated with reference and anchor dropped, and independent dropout of the three conditions (done by
`VideoDiffusionModule` from `condition_dropout`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor

from modules.artv.adapter import T2IAdapter
from modules.artv.anchor_attention import (
    AnchorBlockFactory,
    AnchorSpatialTransformer,
    anchor_tokens,
    is_anchor_parameter,
)
from modules.artv.autoregressive import generate_video
from modules.artv.frame_inversion import PerFrameInversion
from modules.artv.masked_diffusion import masked_eps
from modules.artv.prepared_conditions import (
    ConditionCaching,
    ConditionRows,
    PreparedConditions,
    variant_rows,
)
from modules.artv.reference_frames import (
    NUM_REFERENCE_FRAMES,
    TrainingFrames,
    build_reference,
    draw_training_frame_indices,
    gather_frames,
    has_reference,
    unpack_reference,
)
from modules.blocks.attention import Attention, SpatialTransformer
from modules.checkpoints import (
    UNET_PREFIX,
    LoadReport,
    load_partial,
    load_state_dict_file,
    split_sd_checkpoint,
)
from modules.diffusion.guidance import Guidance
from modules.diffusion.noise_schedule import NoiseSchedule
from modules.diffusion.samplers.base import Sampler
from modules.generation import GeneratedLatents, GenerationAbilities, LatentRequest
from modules.pos.noise_inversion import InversionStrategy
from modules.unet.unet_2d import UNetModel
from modules.video_denoiser import TrainingExample, VideoDenoiser

log = logging.getLogger(__name__)

# Validation examples (eval mode) draw their target frames and augmentation noise from this seed, so val/loss is
# comparable between runs and checkpoints.
VALIDATION_SEED = 20_000


class ARTVDenoiser(VideoDenoiser):
    """Φdynamic + Φmask with their T2I-Adapters and the masked composition; one frame per forward.

    Args:
        dynamic_unet: partial `UNetModel` config of Φdynamic (`${backbone.unet}`; SD 2.1 for the paper); called with
            the anchor block factory.
        mask_unet: partial `UNetModel` config of Φmask (Table 1: mc 64, num_head_channels 32, out_channels 1).
        dynamic_adapter: partial `T2IAdapter` of Φdynamic (Table 1: nums_rb 2, ksize 1, sk, no conv); its
            `channels` (the UNet's level widths, Table 1 [320, 640, 1280, 1280]) and `cin` (2 x latent channels,
            Table 1: 8) are derived here so that they always fit the UNet.
        mask_adapter: partial `T2IAdapter` of Φmask (channels Table 1 [64, 128, 256, 256], derived likewise).
        schedule: the noise schedule (`${schedule}`), for the x0 <-> eps conversions of the composition.
        latent_channels: C, channels of the first stage's latents (4 for SD's AutoencoderKL).
        anchor_attention: add the anchor cross-attention block to every spatial transformer of both UNets
            (needed for Table 1's 1167.69 M / 51.18 M); without it the anchor condition is unused.
        anchor_patch_size: side of the anchor patches (4: 4 x 4 x 4 channels = 64-dim tokens).
        pretrained: SD 2.x checkpoint for Φdynamic (full `.ckpt` / `.safetensors` or a lone UNet file); every
            SD parameter must load (strict for shared parameters); anchor blocks keep their initialisation.
            ART-V is eps-prediction (Table 4): use the 512-px SD 2.1-base weights, not the 768-px v-prediction ones.
        reference_noise_level_train: maximum sigma of the reference noise augmentation in training
            (sigma ~ U(0, max) per sample).
        reference_noise_level_inference: the fixed sigma at inference and validation.
        mask_init_logit: initial bias of Φmask's output conv (its weight starts at zero, as every ldm UNet's
            output conv): M starts at sigmoid(mask_init_logit) everywhere. -4 (M = 0.018) starts the composition
            as Φdynamic alone, so the pretrained model is not disturbed by a half-copied reference at first.
        mask_requires_reference: M = 0 for samples whose reference condition is null (all zeros: dropped in
            training, the eq. (1) null terms, text-to-video's first frame): with no reference there is nothing to
            copy, and x0_hat = x0_dyn. Ours. Without it the null reference is a zero "frame" that Φmask learns to
            copy where the noise hides the content (at high t, x0 = 0 is nearly the best guess), which scales
            Φdynamic's output and gradient by 1 - M ~ 0.03 exactly where the caption decides the frame: measured on
            the toy ART-V, M was 0.95-0.98 on the shape at t >= 800 with the reference dropped, and its text-to-video
            first frame ignored the caption (docs/experiments/2026-11-toy-runs.md).
        first_step_probability: share of training examples whose target is frame 1 (`draw_training_frame_indices`);
            None (the default) draws the target uniformly from frames 1..T-1. Ours.
        cache_conditions: generation computes what its sampler steps share once (per frame: the variant batch of
            the guidance and both adapters' features; per video: the text and anchor keys and values of every
            cross-attention; `modules/artv/prepared_conditions.py`) instead of at every network evaluation. The
            same video either way (within float rounding); False recomputes everything per evaluation. Its parts
            can be set one by one through `condition_caching` (a `ConditionCaching`).
    """

    condition_keys = ("text", "reference", "anchor")
    abilities = GenerationAbilities(model_name="ART-V", first_frame=True, multi_prompt=True, masks=True)

    def __init__(
        self,
        dynamic_unet: Callable[..., UNetModel],
        mask_unet: Callable[..., UNetModel],
        dynamic_adapter: Callable[..., T2IAdapter],
        mask_adapter: Callable[..., T2IAdapter],
        schedule: NoiseSchedule,
        latent_channels: int = 4,
        anchor_attention: bool = True,
        anchor_patch_size: int = 4,
        pretrained: str | None = None,
        reference_noise_level_train: float = 0.1,
        reference_noise_level_inference: float = 0.02,
        mask_init_logit: float = -4.0,
        mask_requires_reference: bool = True,
        first_step_probability: float | None = None,
        cache_conditions: bool = True,
    ) -> None:
        super().__init__()
        if reference_noise_level_train < 0 or reference_noise_level_inference < 0:
            raise ValueError(
                "ARTVDenoiser: reference noise levels must be >= 0, got "
                f"{reference_noise_level_train} / {reference_noise_level_inference} "
                "<model.net.reference_noise_level_train / _inference>"
            )
        if first_step_probability is not None and not 0.0 <= first_step_probability <= 1.0:
            raise ValueError(
                f"ARTVDenoiser: first_step_probability must be in [0, 1] or null, got {first_step_probability} "
                "<model.net.first_step_probability>"
            )
        self.latent_channels = latent_channels
        self.anchor_attention = anchor_attention
        self.anchor_patch_size = anchor_patch_size
        self.anchor_context_dim = latent_channels * anchor_patch_size**2
        self.reference_noise_level_train = reference_noise_level_train
        self.reference_noise_level_inference = reference_noise_level_inference
        self.mask_requires_reference = mask_requires_reference
        self.first_step_probability = first_step_probability
        self.condition_caching = ConditionCaching.switch(cache_conditions)
        factory = AnchorBlockFactory(self.anchor_context_dim) if anchor_attention else None
        self.dynamic_unet = dynamic_unet(block_factory=factory)
        self.mask_unet = mask_unet(block_factory=factory)
        self._check_unets()
        adapter_cin = NUM_REFERENCE_FRAMES * latent_channels
        self.dynamic_adapter = dynamic_adapter(
            channels=self.dynamic_unet.adapter_feature_channels, cin=adapter_cin
        )
        self.mask_adapter = mask_adapter(channels=self.mask_unet.adapter_feature_channels, cin=adapter_cin)
        self.schedule = schedule
        with torch.no_grad():
            self.mask_unet.out[-1].bias.fill_(mask_init_logit)
        self.last_mask: Tensor | None = None
        self.pretrained_report: LoadReport | None = None
        if not anchor_attention:
            log.info(
                "ART-V without the anchor block: the anchor condition is unused <model.net.anchor_attention>"
            )
        if pretrained is not None:
            self.pretrained_report = self.load_pretrained(pretrained)

    def _check_unets(self) -> None:
        for name, unet, out_channels in (
            ("dynamic_unet", self.dynamic_unet, self.latent_channels),
            ("mask_unet", self.mask_unet, 1),
        ):
            if unet.in_channels != self.latent_channels or unet.out_channels != out_channels:
                raise ValueError(
                    f"ARTVDenoiser: {name} must map {self.latent_channels} latent channels (x_t) to {out_channels}, "
                    f"got in_channels={unet.in_channels}, out_channels={unet.out_channels} <model.net.{name}>"
                )
        if self.dynamic_unet.context_dim != self.mask_unet.context_dim:
            raise ValueError(
                "ARTVDenoiser: both UNets read the same text embedding, but context_dim differs "
                f"({self.dynamic_unet.context_dim} vs {self.mask_unet.context_dim}) <model.net.mask_unet.context_dim>"
            )

    def load_pretrained(self, path: str | Path) -> LoadReport:
        """Load SD 2.x UNet weights into Φdynamic: strict for every shared parameter, new ones reported.

        path: a full SD checkpoint (`model.diffusion_model.*` is used) or a UNet-only state dict file.
        """
        state_dict = load_state_dict_file(path)
        if any(key.startswith(UNET_PREFIX) for key in state_dict):
            state_dict = split_sd_checkpoint(state_dict).unet
        report = load_partial(
            self.dynamic_unet,
            state_dict,
            what="ART-V Φdynamic (SD UNet)",
            source=str(path),
            expected_missing=is_anchor_parameter,
        )
        new_elsewhere = {
            "Φdynamic anchor blocks": sum(
                p.numel() for name, p in self.dynamic_unet.named_parameters() if is_anchor_parameter(name)
            ),
            "Φdynamic adapter": sum(p.numel() for p in self.dynamic_adapter.parameters()),
            "Φmask (UNet, adapter)": sum(p.numel() for p in self.mask_unet.parameters())
            + sum(p.numel() for p in self.mask_adapter.parameters()),
        }
        log.info(
            "ART-V: %d SD tensors loaded into Φdynamic; new parameters keep their initialisation: %s",
            len(report.loaded),
            ", ".join(f"{name} {count:,}" for name, count in new_elsewhere.items()),
        )
        return report

    # ---- the eps model ------------------------------------------------------------------------------
    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: dict[str, Tensor] | PreparedConditions,
        *,
        return_mask: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Masked-diffusion eps for one frame.

        Args:
            x_t: noisy latents `[B, C, h, w]`.
            t: DDPM steps, int64 `[B]`.
            cond: {"text": [B, L, D], "reference": [B, 3C, h, w], "anchor": [B, C, h, w]}, prepared here for this
                evaluation; or `PreparedConditions` of B rows, prepared once for many evaluations
                (`prepare_conditions`).
            return_mask: also return M.

        Returns:
            eps `[B, C, h, w]`, and M `[B, 1, h, w]` in [0, 1] when `return_mask` (0 where the reference is null
            and `mask_requires_reference`). M is also kept (detached) in `self.last_mask` for logging.
        """
        if isinstance(cond, PreparedConditions):
            self._check_prepared(x_t, cond)
            prepared = cond
        else:
            self._check_conditions(x_t, cond)
            prepared = self._evaluation_conditions(cond)
        block_kwargs = prepared.block_kwargs()
        eps_dynamic = self.dynamic_unet(
            x_t, t, prepared.text, adapter_features=prepared.dynamic_features, **block_kwargs
        )
        mask_logits = self.mask_unet(
            x_t, t, prepared.text, adapter_features=prepared.mask_features, **block_kwargs
        )
        mask = torch.sigmoid(mask_logits.float())
        if self.mask_requires_reference:
            mask = mask * rearrange(prepared.has_reference.to(mask.dtype), "n -> n 1 1 1")
        eps = masked_eps(self.schedule, x_t, t, eps_dynamic.float(), mask, prepared.reference_frame.float())
        self.last_mask = mask.detach()
        return (eps, mask) if return_mask else eps

    def _evaluation_conditions(self, cond: dict[str, Tensor]) -> PreparedConditions:
        """What the UNets read, computed from the condition dict for one evaluation (no keys and values projected
        ahead: every cross-attention projects its context)."""
        adapter_input, reference_frame = unpack_reference(cond["reference"], self.latent_channels)
        return PreparedConditions(
            text=cond["text"],
            reference_frame=reference_frame,
            has_reference=has_reference(cond["reference"]),
            dynamic_features=self.dynamic_adapter(adapter_input),
            mask_features=self.mask_adapter(adapter_input),
            anchor_tokens=anchor_tokens(cond["anchor"], self.anchor_patch_size)
            if self.anchor_attention
            else None,
            key_values={},
        )

    def _check_prepared(self, x_t: Tensor, prepared: PreparedConditions) -> None:
        if x_t.ndim != 4 or x_t.shape[1] != self.latent_channels or x_t.shape[0] != prepared.batch_size:
            raise ValueError(
                f"ARTVDenoiser: x_t must be one frame [N, {self.latent_channels}, h, w] with the N = "
                f"{prepared.batch_size} rows of the prepared conditions, got {tuple(x_t.shape)}"
            )

    def _check_conditions(self, x_t: Tensor, cond: dict[str, Tensor]) -> None:
        missing = [key for key in self.condition_keys if key not in cond]
        if missing:
            raise KeyError(f"ARTVDenoiser: cond lacks {missing}; it needs {list(self.condition_keys)}")
        if x_t.ndim != 4 or x_t.shape[1] != self.latent_channels:
            raise ValueError(
                f"ARTVDenoiser: x_t must be one frame [B, {self.latent_channels}, h, w], got {tuple(x_t.shape)}"
            )
        if cond["anchor"].shape != x_t.shape:
            raise ValueError(
                f"ARTVDenoiser: cond['anchor'] must have x_t's shape {tuple(x_t.shape)}, got "
                f"{tuple(cond['anchor'].shape)}"
            )

    # ---- conditions prepared once for many evaluations (generation) ----------------------------------
    @contextmanager
    def conditions_per_evaluation(self) -> Iterator[None]:
        """Within the block, generation caches nothing: every evaluation gets the condition dict (for callers that
        rewrite each evaluation's conditions, e.g. POS's hybrid text)."""
        previous = self.condition_caching
        self.condition_caching = ConditionCaching.switch(False)
        try:
            yield
        finally:
            self.condition_caching = previous

    def text_attentions(self) -> list[Attention]:
        """Every cross-attention layer of both UNets that reads the text."""
        return [
            layer
            for unet in (self.dynamic_unet, self.mask_unet)
            for module in unet.modules()
            if isinstance(module, SpatialTransformer)
            for layer in module.context_attentions()
        ]

    def anchor_attentions(self) -> list[Attention]:
        """Every cross-attention layer of both UNets that reads the anchor tokens (none without anchor blocks)."""
        return [
            layer
            for unet in (self.dynamic_unet, self.mask_unet)
            for module in unet.modules()
            if isinstance(module, AnchorSpatialTransformer)
            for layer in module.anchor_attentions()
        ]

    def prepare_text(self, text: Tensor, null_text: Tensor, *, project: bool) -> ConditionRows:
        """A prompt's text `[B, L, D]` and the empty prompt `[1, L, D]` as rows `[B + 1, L, D]`; with `project`, the
        keys and values of every text cross-attention of both UNets on them (once per video or prompt)."""
        rows = torch.cat([text, null_text.to(text)])
        key_values = (
            {layer: layer.project_context(rows) for layer in self.text_attentions()} if project else {}
        )
        return ConditionRows(rows, key_values)

    def prepare_anchor(self, anchor: Tensor, *, project: bool) -> ConditionRows:
        """An anchor frame `[B, C, h, w]` and its null value (zeros, as `null_condition`) as rows `[B + 1, C, h, w]`,
        with their patch tokens when the UNets have anchor blocks, and with `project` the keys and values of every
        anchor block on them (once per anchor frame)."""
        rows = torch.cat([anchor, torch.zeros_like(anchor[:1])])
        if not self.anchor_attention:
            return ConditionRows(rows)
        tokens = anchor_tokens(rows, self.anchor_patch_size)
        key_values = (
            {layer: layer.project_context(tokens) for layer in self.anchor_attentions()} if project else {}
        )
        return ConditionRows(rows, key_values, tokens)

    def prepare_conditions(
        self,
        text: ConditionRows,
        reference: Tensor,
        anchor: ConditionRows,
        dropped_keys: Sequence[tuple[str, ...]],
    ) -> PreparedConditions:
        """The conditions of one sampler run, for every evaluation of it: the guidance's variants (`dropped_keys`,
        `Guidance.dropped_keys`) stacked along the batch, `[V * B]` rows, variant v in rows v*B .. (v+1)*B - 1.

        text, anchor: `prepare_text` / `prepare_anchor` rows (B + 1, made once per video); reference: this frame's
        `[B, 3C, h, w]`. Both adapters run once, on the B + 1 distinct reference rows (full and null); every tensor
        of the stacked batch, keys and values included, is picked from the B + 1 rows of its condition.
        """
        batch = text.batch_size
        unknown = sorted({key for keys in dropped_keys for key in keys} - set(self.condition_keys))
        if unknown or anchor.batch_size != batch or reference.ndim != 4 or reference.shape[0] != batch:
            raise ValueError(
                f"ARTVDenoiser.prepare_conditions: need variants dropping only {list(self.condition_keys)} (got "
                f"{list(dropped_keys)}) and B = {batch} rows of text, anchor and reference (got anchor "
                f"{anchor.batch_size}, reference {tuple(reference.shape)})"
            )
        reference_rows = torch.cat([reference, torch.zeros_like(reference[:1])])
        adapter_input, reference_frame = unpack_reference(reference_rows, self.latent_channels)
        rows = {key: variant_rows(dropped_keys, key, batch, reference.device) for key in self.condition_keys}

        def pick(key: str, values: Tensor) -> Tensor:
            return values.index_select(0, rows[key])

        return PreparedConditions(
            text=pick("text", text.values),
            reference_frame=pick("reference", reference_frame),
            has_reference=pick("reference", has_reference(reference_rows)),
            dynamic_features=[pick("reference", feature) for feature in self.dynamic_adapter(adapter_input)],
            mask_features=[pick("reference", feature) for feature in self.mask_adapter(adapter_input)],
            anchor_tokens=None if anchor.tokens is None else pick("anchor", anchor.tokens),
            key_values={
                **{layer: kv.index_select(rows["text"]) for layer, kv in text.key_values.items()},
                **{layer: kv.index_select(rows["anchor"]) for layer, kv in anchor.key_values.items()},
            },
        )

    # ---- training -----------------------------------------------------------------------------------
    def training_frame_indices(self, batch: int, num_frames: int) -> Tensor:
        """Per clip the anchor (frame 0), the references k-2 (clamped at 0) and k-1, and the target k, `[B, 4]`:
        k ~ U{1..T-1}, or k = 1 with probability `first_step_probability`; seeded in eval mode, so validation
        examples are reproducible. At most 4 distinct frames of a clip are ever encoded."""
        generator = None if self.training else torch.Generator().manual_seed(VALIDATION_SEED)
        return draw_training_frame_indices(batch, num_frames, generator, self.first_step_probability)

    def training_example(self, latents: Tensor, frame_indices: Tensor | None = None) -> TrainingExample:
        """One target frame per clip with its reference and anchor conditions.

        latents: the clean latents of the frames `frame_indices` lists, `[B, C, 4, h, w]`, or, with frame_indices
        None, whole clips `[B, C, T, h, w]` (T >= 2, sampled at 8 fps, Table 4) from which they are drawn here.
        Returns x0 `[B, C, h, w]` (frame k) and cond {"reference": [B, 3C, h, w], "anchor": [B, C, h, w]}
        (frames k-2 and k-1, noise-augmented at a random level in training mode and at the inference level in
        eval mode; anchor: frame 0).
        """
        if latents.ndim != 5:
            raise ValueError(
                f"ART-V training_example: latents must be [B, C, T, h, w], got {tuple(latents.shape)}"
            )
        batch = latents.shape[0]
        if frame_indices is None:
            frame_indices = self.training_frame_indices(batch, latents.shape[2])
            latents = gather_frames(latents, frame_indices)
        if self.training:
            noise_generator = None
            levels = torch.rand(batch) * self.reference_noise_level_train
        else:
            noise_generator = torch.Generator(device=latents.device).manual_seed(VALIDATION_SEED)
            levels = torch.full((batch,), self.reference_noise_level_inference)
        frames = TrainingFrames.from_latents(latents)
        reference = build_reference(frames.earlier_reference, frames.previous_frame, levels, noise_generator)
        return TrainingExample(x0=frames.target, cond={"reference": reference, "anchor": frames.anchor})

    # ---- generation ---------------------------------------------------------------------------------
    def generate(self, sampler: Sampler, guidance: Guidance, request: LatentRequest) -> GeneratedLatents:
        """Auto-regressive generation, one frame at a time for the whole batch (`modules/artv/autoregressive.py`):
        text-to-video, text+image-to-video from `request.first_frame` (a clean latent `[B, C, h, w]`, frame 0 and the
        anchor) and multi-prompt videos (one text per segment). Returns latents `[B, C, T, h, w]` and masks
        `[B, 1, T, h, w]`."""
        return generate_video(self, sampler, guidance, request)

    def inversion_strategy(self, *, all_frames: bool) -> InversionStrategy:
        """POS inverts frame by frame, frame 0 only or every frame (`all_frames`)."""
        return PerFrameInversion(all_frames)
