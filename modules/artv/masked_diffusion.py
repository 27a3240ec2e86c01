"""Masked diffusion: compose the dynamic prediction with the reference frame through a predicted mask.

ART-V's masked diffusion "implicitly learns which information can be drawn from reference images rather than
network predictions" (abstract); the supplementary (section 3, Fig. 1) shows the mask: high values are copied
from the reference frame, low values (motion) are predicted by Φdynamic. The formula is our interpretation
(not stated by the paper; docs/ARCHITECTURE.md, "ART-V: what the paper does not state"):

    M       = sigmoid(Φmask(...))                       in [0, 1], one value per latent pixel
    x0_dyn  = (x_t - sqrt(1 - a_t) eps_dyn) / sqrt(a_t)  Φdynamic's x0 estimate
    x0_hat  = M * z_ref + (1 - M) * x0_dyn               z_ref: the previous frame's clean latent
    eps     = (x_t - sqrt(a_t) x0_hat) / sqrt(1 - a_t)   what the sampler and the eps-MSE loss see

Substituting x0_dyn, the eps form is the same blend of two eps predictions,

    eps = M * eps_ref + (1 - M) * eps_dyn,   eps_ref = (x_t - sqrt(a_t) z_ref) / sqrt(1 - a_t),

which is how it is computed: it never divides Φdynamic's output by sqrt(a_t) (0.068 at t = 999).
"""

from __future__ import annotations

from torch import Tensor

from modules.diffusion.noise_schedule import NoiseSchedule


def masked_eps(
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: Tensor,
    eps_dynamic: Tensor,
    mask: Tensor,
    reference_frame: Tensor,
) -> Tensor:
    """The eps of x0_hat = M * z_ref + (1 - M) * x0_dyn.

    Args:
        schedule: the noise schedule (a_t).
        x_t: noisy latents `[B, C, h, w]`.
        t: DDPM steps, int64 `[B]`.
        eps_dynamic: Φdynamic's eps `[B, C, h, w]`.
        mask: M in [0, 1], `[B, 1, h, w]` (broadcast over channels).
        reference_frame: z_ref, the previous frame's clean latent `[B, C, h, w]` (zeros when the reference
            condition is dropped).

    Returns:
        eps `[B, C, h, w]`.
    """
    # eps_ref = (x_t - sqrt(a_t) z_ref) / sqrt(1 - a_t): the noise that x_t would carry if x0 were z_ref
    eps_reference = schedule.predict_eps_from_x0(x_t, t, reference_frame)
    # eps = M * eps_ref + (1 - M) * eps_dyn  <=>  x0_hat = M * z_ref + (1 - M) * x0_dyn
    return mask * eps_reference + (1.0 - mask) * eps_dynamic


def masked_x0(
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: Tensor,
    eps_dynamic: Tensor,
    mask: Tensor,
    reference_frame: Tensor,
) -> Tensor:
    """x0_hat = M * z_ref + (1 - M) * x0_dyn, computed literally (for tests and visualisation).

    Shapes as `masked_eps`; returns `[B, C, h, w]`.
    """
    x0_dynamic = schedule.predict_x0_from_eps(x_t, t, eps_dynamic)
    return mask * reference_frame + (1.0 - mask) * x0_dynamic
