"""Fréchet distance: closed forms, a scipy reference, near-singular covariances, streaming statistics."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from modules.evaluation.frechet_distance import (
    FeatureStatistics,
    frechet_distance,
    frechet_distance_of_fits,
    trace_sqrt_product,
)


def _scipy_reference(mean_a, cov_a, mean_b, cov_b) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 sqrtm(S_a S_b)), real part, as pytorch-fid/StyleGAN-V compute it."""
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    return float(np.real(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * root)))


def _random_covariance(rng: np.random.Generator, dimension: int, samples: int) -> np.ndarray:
    features = rng.standard_normal((samples, dimension)) @ rng.standard_normal((dimension, dimension))
    return np.cov(features, rowvar=False)


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array, dtype=np.float64))


def test_diagonal_covariances_match_the_closed_form():
    # diagonal S: d^2 = ||mu_a - mu_b||^2 + sum_i (sqrt(s_a,i) - sqrt(s_b,i))^2
    mean_a, mean_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    variance_a, variance_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(variance_a) - np.sqrt(variance_b)) ** 2)
    got = frechet_distance(_t(mean_a), _t(np.diag(variance_a)), _t(mean_b), _t(np.diag(variance_b)))
    assert got == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(1.0 + 6.25 + 4.0 + 1.0)


def test_commuting_covariances_match_the_closed_form():
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    eigen_a, eigen_b = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    cov_a = rotation @ np.diag(eigen_a) @ rotation.T
    cov_b = rotation @ np.diag(eigen_b) @ rotation.T
    mean_a, mean_b = rng.standard_normal(6), rng.standard_normal(6)
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(eigen_a) - np.sqrt(eigen_b)) ** 2)
    got = frechet_distance(_t(mean_a), _t(cov_a), _t(mean_b), _t(cov_b))
    assert got == pytest.approx(expected, rel=1e-10)


def test_general_covariances_match_scipy_sqrtm():
    rng = np.random.default_rng(1)
    cov_a, cov_b = _random_covariance(rng, 16, 200), _random_covariance(rng, 16, 200)
    mean_a, mean_b = rng.standard_normal(16), rng.standard_normal(16)
    got = frechet_distance(_t(mean_a), _t(cov_a), _t(mean_b), _t(cov_b))
    assert got == pytest.approx(_scipy_reference(mean_a, cov_a, mean_b, cov_b), rel=1e-8)


def test_same_gaussian_has_zero_distance_and_never_goes_negative():
    rng = np.random.default_rng(2)
    cov = _random_covariance(rng, 32, 20)  # rank 19 < 32: singular
    mean = rng.standard_normal(32)
    got = frechet_distance(_t(mean), _t(cov), _t(mean), _t(cov))
    assert 0.0 <= got < 1e-8 * np.trace(cov)


def test_rank_deficient_covariances_stay_real_and_match_scipy_real_part():
    # fewer samples than dimensions on both sides (the usual small-FVD situation): sqrtm of the singular
    # product picks up imaginary round-off; our eigh route is real by construction
    rng = np.random.default_rng(3)
    cov_a, cov_b = _random_covariance(rng, 48, 30), _random_covariance(rng, 48, 25)
    mean_a, mean_b = rng.standard_normal(48), rng.standard_normal(48)
    got = frechet_distance(_t(mean_a), _t(cov_a), _t(mean_b), _t(cov_b))
    assert np.isfinite(got)
    assert got == pytest.approx(_scipy_reference(mean_a, cov_a, mean_b, cov_b), rel=1e-6)


def test_trace_sqrt_product_tolerates_negative_round_off_eigenvalues():
    rng = np.random.default_rng(4)
    basis = rng.standard_normal((10, 3))
    cov = basis @ basis.T - 1e-12 * np.eye(10)  # PSD up to round-off, with eigenvalues slightly below 0
    assert np.linalg.eigvalsh(cov).min() < 0
    value = trace_sqrt_product(_t(cov), _t(cov))
    assert value == pytest.approx(np.trace(cov), rel=1e-6)


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="covariance_b"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(4))


def test_streaming_statistics_equal_numpy_on_offset_features():
    rng = np.random.default_rng(5)
    # a large common offset breaks naive sum-of-squares accumulation; the pairwise update keeps precision
    features = rng.standard_normal((257, 12)) * 0.01 + 1.0e5
    statistics = FeatureStatistics()
    for chunk in np.array_split(features, [1, 50, 51, 200]):
        statistics.update(torch.from_numpy(chunk))
    fit = statistics.fit()
    assert fit.count == 257
    np.testing.assert_allclose(fit.mean.numpy(), features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(fit.covariance.numpy(), np.cov(features, rowvar=False), rtol=1e-6, atol=1e-12)


def test_statistics_refuse_wrong_shapes_and_too_few_samples():
    statistics = FeatureStatistics(4)
    with pytest.raises(ValueError, match="expected 4"):
        statistics.update(torch.zeros(2, 5))
    statistics.update(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="at least 2"):
        statistics.fit()


def test_distance_of_sampled_gaussians_approaches_the_true_distance():
    # FD of fitted Gaussians is a biased estimate; with many samples it approaches the true value
    generator = torch.Generator().manual_seed(6)
    real, fake = FeatureStatistics(), FeatureStatistics()
    real.update(torch.randn(20000, 4, generator=generator, dtype=torch.float64))
    fake.update(torch.randn(20000, 4, generator=generator, dtype=torch.float64) * 2.0 + 1.0)
    # true: ||1||^2 * 4 + 4 * (1 - 2)^2 = 8
    assert frechet_distance_of_fits(real.fit(), fake.fit()) == pytest.approx(8.0, rel=0.05)
