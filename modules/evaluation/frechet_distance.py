"""Fréchet distance between two Gaussians fitted to feature sets (the maths of FID and FVD).

    d^2 = ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))

(Heusel et al. 2017, "GANs trained by a two time-scale update rule", eq. (6); Unterthiner et al. 2018
use the same distance on I3D features for FVD.)

The trace of the matrix square root is computed without `scipy.linalg.sqrtm`. For symmetric positive
semi-definite S_a and S_b, S_a S_b is similar to the symmetric PSD matrix M = S_a^(1/2) S_b S_a^(1/2)
(conjugate by S_a^(1/2)), so

    tr((S_a S_b)^(1/2)) = sum_i sqrt(lambda_i(M)),

with S_a^(1/2) and the eigenvalues lambda_i(M) from `eigh` (symmetric eigensolver) and tiny negative
round-off eigenvalues clipped to 0. This is real by construction: the complex parts that `sqrtm` returns
for near-singular covariances (fewer samples than feature dimensions, the usual case for a few hundred
clips and 400-2048-d features) never arise, and no `eps * I` offset is needed.

Statistics are accumulated batch by batch in float64 with Chan et al.'s pairwise update of the mean and
the centred sum of squares (numerically stable, unlike accumulating raw second moments). The covariance
is the unbiased one (divided by N - 1), as `numpy.cov`, pytorch-fid and torchmetrics compute it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class GaussianFit:
    """Mean `[D]` and covariance `[D, D]` (float64) of `count` feature vectors."""

    mean: Tensor
    covariance: Tensor
    count: int


class FeatureStatistics:
    """Running mean and covariance of feature vectors `[N, D]`, fed batch by batch.

    Args:
        num_features: D, or None to take it from the first batch.
    """

    def __init__(self, num_features: int | None = None) -> None:
        self.num_features = num_features
        self.count = 0
        self._mean: Tensor | None = None
        self._centred_squares: Tensor | None = None  # sum_i (x_i - mean)(x_i - mean)^T, [D, D]

    def update(self, features: Tensor) -> None:
        """Add a batch of feature vectors `[N, D]` (any float dtype, any device)."""
        if features.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {tuple(features.shape)}")
        if self.num_features is None:
            self.num_features = features.shape[1]
        if features.shape[1] != self.num_features:
            raise ValueError(f"features have {features.shape[1]} dimensions, expected {self.num_features}")
        batch = features.detach().to("cpu", torch.float64)
        batch_count = batch.shape[0]
        if batch_count == 0:
            return
        batch_mean = batch.mean(dim=0)
        centred = batch - batch_mean
        batch_squares = centred.T @ centred
        if self._mean is None or self._centred_squares is None:
            self._mean, self._centred_squares, self.count = batch_mean, batch_squares, batch_count
            return
        # Chan et al. (1979) pairwise merge of (count, mean, centred sum of squares)
        total = self.count + batch_count
        delta = batch_mean - self._mean
        self._mean = self._mean + delta * (batch_count / total)
        self._centred_squares = (
            self._centred_squares
            + batch_squares
            + torch.outer(delta, delta) * (self.count * batch_count / total)
        )
        self.count = total

    def fit(self) -> GaussianFit:
        """The Gaussian of the features seen so far.

        Raises:
            ValueError: fewer than 2 feature vectors (no covariance).
        """
        if self.count < 2 or self._mean is None or self._centred_squares is None:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.count}")
        return GaussianFit(self._mean.clone(), self._centred_squares / (self.count - 1), self.count)


def _symmetric_sqrt(matrix: Tensor) -> Tensor:
    """Principal square root of a symmetric PSD matrix `[D, D]` (negative round-off eigenvalues -> 0)."""
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def trace_sqrt_product(covariance_a: Tensor, covariance_b: Tensor) -> float:
    """tr((S_a S_b)^(1/2)) for symmetric PSD `[D, D]` matrices, as sum_i sqrt(lambda_i(S_a^1/2 S_b S_a^1/2))."""
    a = _symmetrized(covariance_a)
    b = _symmetrized(covariance_b)
    root_a = _symmetric_sqrt(a)
    middle = _symmetrized(root_a @ b @ root_a)
    return float(torch.linalg.eigvalsh(middle).clamp(min=0).sqrt().sum())


def frechet_distance(mean_a: Tensor, covariance_a: Tensor, mean_b: Tensor, covariance_b: Tensor) -> float:
    """Squared Fréchet distance between N(mean_a, covariance_a) and N(mean_b, covariance_b).

    Args:
        mean_a, mean_b: `[D]`.
        covariance_a, covariance_b: `[D, D]`, symmetric positive semi-definite.

    Returns:
        d^2 >= 0 (round-off below 0 is clipped), computed in float64.
    """
    mean_a, mean_b = mean_a.to(torch.float64), mean_b.to(torch.float64)
    covariance_a, covariance_b = covariance_a.to(torch.float64), covariance_b.to(torch.float64)
    dimension = mean_a.shape[0]
    for name, tensor, shape in (
        ("mean_b", mean_b, (dimension,)),
        ("covariance_a", covariance_a, (dimension, dimension)),
        ("covariance_b", covariance_b, (dimension, dimension)),
    ):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, expected {shape}")
    # d^2 = ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2))
    mean_term = float((mean_a - mean_b).square().sum())
    trace_term = float(covariance_a.trace() + covariance_b.trace())
    distance = mean_term + trace_term - 2.0 * trace_sqrt_product(covariance_a, covariance_b)
    return max(distance, 0.0)


def frechet_distance_of_fits(fit_a: GaussianFit, fit_b: GaussianFit) -> float:
    """:func:`frechet_distance` of two :class:`GaussianFit` s."""
    return frechet_distance(fit_a.mean, fit_a.covariance, fit_b.mean, fit_b.covariance)


def _symmetrized(matrix: Tensor) -> Tensor:
    return 0.5 * (matrix + matrix.T)
