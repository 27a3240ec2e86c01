"""AutoencoderKL (tiny config) and the pixel-space first stage: shapes, posterior sampling, scaling,
frame-chunked video encode/decode and size validation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from modules.autoencoder.autoencoder_kl import AutoencoderKL
from modules.autoencoder.pixel_space import PixelUnshuffleAutoencoder
from modules.autoencoder.vae_blocks import VAEAttentionBlock


def tiny_autoencoder(**overrides: Any) -> AutoencoderKL:
    torch.manual_seed(0)
    arguments: dict[str, Any] = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, resolution=16)
    arguments.update(overrides)
    return AutoencoderKL(**arguments).eval()


def images(batch: int = 2, size: int = 16, seed: int = 0) -> Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_tiny_autoencoder_shapes_and_attributes() -> None:
    model = tiny_autoencoder(attn_resolutions=(16,))
    assert (model.latent_channels, model.downsample_factor) == (4, 2)
    # attention after each res block at 16 px: 1 in the encoder level 0, 2 in the decoder level 0, plus mids.
    assert sum(isinstance(m, VAEAttentionBlock) for m in model.modules()) == 5
    assert len(model.encoder.down[0].attn) == 1 and len(model.decoder.up[0].attn) == 2
    with torch.no_grad():
        latents = model.encode(images())
        assert latents.shape == (2, 4, 8, 8)
        assert model.decode(latents).shape == (2, 3, 16, 16)
        assert model.decode(torch.randn(1, 4, 5, 3)).shape == (1, 3, 10, 6)


def test_encode_mean_and_sample() -> None:
    model = tiny_autoencoder()
    x = images()
    with torch.no_grad():
        mean, logvar = model.posterior_moments(x).chunk(2, dim=1)
        deterministic = model.encode(x, sample=False)
        first = model.encode(x, generator=torch.Generator().manual_seed(5))
        again = model.encode(x, generator=torch.Generator().manual_seed(5))
        other = model.encode(x, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(deterministic, 0.18215 * mean, atol=0, rtol=0)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    # sample = scale * (mean + exp(logvar / 2) * noise), noise drawn from the generator in latent shape.
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(first, 0.18215 * (mean + torch.exp(0.5 * logvar) * noise))


def test_latent_scale_is_undone_by_decode() -> None:
    unit = tiny_autoencoder(scale_factor=1.0)
    scaled = tiny_autoencoder(scale_factor=0.18215)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(scaled.encode(x, sample=False), 0.18215 * unit.encode(x, sample=False))
        reconstruction = unit.decode(unit.encode(x, sample=False))
        torch.testing.assert_close(scaled.decode(scaled.encode(x, sample=False)), reconstruction)


def test_chunked_video_encode_decode_equals_unchunked() -> None:
    model = tiny_autoencoder()
    video = torch.rand(2, 3, 5, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        whole = model.encode_video(video, chunk_size=100, generator=torch.Generator().manual_seed(3))
        for chunk_size in (1, 3):
            chunked = model.encode_video(
                video, chunk_size=chunk_size, generator=torch.Generator().manual_seed(3)
            )
            torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=0)
        assert whole.shape == (2, 4, 5, 8, 8)
        # Frame (b, t) of the latent video is the encoding of frame (b, t) of the input.
        means = model.encode_video(video, chunk_size=4, sample=False)
        torch.testing.assert_close(
            means[1, :, 3], model.encode(video[1:2, :, 3], sample=False)[0], atol=1e-6, rtol=0
        )
        decoded_whole = model.decode_video(whole, chunk_size=100)
        decoded_chunked = model.decode_video(whole, chunk_size=2)
    assert decoded_whole.shape == (2, 3, 5, 16, 16)
    torch.testing.assert_close(decoded_chunked, decoded_whole, atol=1e-6, rtol=0)


def test_video_encode_never_processes_more_than_chunk_size_frames() -> None:
    model = tiny_autoencoder()
    seen: list[int] = []
    original = model.posterior_moments

    def recording_moments(frames: Tensor) -> Tensor:
        seen.append(frames.shape[0])
        return original(frames)

    model.posterior_moments = recording_moments
    with torch.no_grad():
        model.encode_video(torch.zeros(2, 3, 7, 16, 16), chunk_size=4)
    assert seen == [4, 4, 4, 2]


def test_pixel_space_autoencoder_is_exactly_invertible() -> None:
    model = PixelUnshuffleAutoencoder(factor=2)
    assert (model.latent_channels, model.downsample_factor) == (12, 2)
    assert list(model.parameters()) == []
    video = torch.rand(2, 3, 4, 8, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = model.encode_video(video, chunk_size=3)
    assert latents.shape == (2, 12, 4, 4, 3)
    # A pure rearrangement of the pixels: same multiset of values, and decode inverts it exactly.
    assert torch.equal(latents.flatten().sort().values, video.flatten().sort().values)
    assert torch.equal(model.decode_video(latents, chunk_size=5), video)
    # Each latent pixel holds one 2x2 patch: channel c * 4 + 2 * i + j is pixel (2y + i, 2x + j) of channel c.
    assert latents[1, 2 * 4 + 2 * 1 + 0, 3, 2, 1].item() == video[1, 2, 3, 5, 2].item()
    halved = PixelUnshuffleAutoencoder(factor=2, scale_factor=0.5)
    frames = video[:, :, 0]
    assert torch.equal(halved.encode(frames), 0.5 * model.encode(frames))
    assert torch.equal(halved.decode(halved.encode(frames)), frames)


@pytest.mark.parametrize(
    "build", [tiny_autoencoder, lambda: PixelUnshuffleAutoencoder(factor=2)], ids=["kl", "pixel"]
)
def test_indivisible_frame_size_is_a_clear_error(build: Callable[[], torch.nn.Module]) -> None:
    model = build()
    with pytest.raises(ValueError, match=r"15x16 is not divisible .* factor 2.*`resolution`"):
        model.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match="not divisible"):
        model.encode_video(torch.zeros(1, 3, 2, 16, 9))


def test_bf16_autocast_encode_decode_runs() -> None:
    model = tiny_autoencoder()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        reconstruction = model.decode(model.encode(images(), sample=False))
    assert reconstruction.shape == (2, 3, 16, 16)
    assert torch.isfinite(reconstruction.float()).all()


def test_pixel_space_shift_and_scale_standardise_and_invert():
    model = PixelUnshuffleAutoencoder(factor=2, scale_factor=4.0, shift_factor=-0.9)
    video = torch.full((1, 3, 2, 4, 4), -0.9)
    video[:, :, :, :2, :2] = -0.4
    latents = model.encode_video(video)
    assert latents.min().item() == pytest.approx(0.0, abs=1e-6)
    assert latents.max().item() == pytest.approx(2.0, abs=1e-6)
    torch.testing.assert_close(model.decode_video(latents), video)
