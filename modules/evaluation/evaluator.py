"""Build the metrics a protocol asks for and stream generated and real clips through them."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from modules.evaluation.video_metric import MissingWeightsError, VideoMetric

log = logging.getLogger(__name__)

MISSING_WEIGHTS_POLICIES = ("skip", "error")


def _missing_weights_cause(error: BaseException) -> MissingWeightsError | None:
    """The MissingWeightsError behind an error (Hydra wraps constructor errors in InstantiationException)."""
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, MissingWeightsError):
            return current
        current = current.__cause__
    return None


def build_metrics(
    metrics_cfg: DictConfig, names: Sequence[str], *, missing_weights: str
) -> tuple[dict[str, VideoMetric], dict[str, str]]:
    """Instantiate `metrics_cfg[name]` for each protocol metric name.

    Args:
        metrics_cfg: the `metrics` config (one `_target_` entry per metric).
        names: `eval_protocol.metrics`.
        missing_weights: `skip` (log and leave out a metric whose network has no weights file) or `error`.

    Returns:
        `(metrics, skipped)` with `skipped[name]` the reason a metric was left out.
    """
    if missing_weights not in MISSING_WEIGHTS_POLICIES:
        raise ValueError(f"missing_weights={missing_weights!r}; expected one of {MISSING_WEIGHTS_POLICIES}")
    metrics: dict[str, VideoMetric] = {}
    skipped: dict[str, str] = {}
    for name in names:
        if name not in metrics_cfg:
            raise ValueError(
                f"eval_protocol.metrics names {name!r}, which has no entry under metrics "
                f"(available: {sorted(metrics_cfg)})"
            )
        try:
            metric = instantiate(metrics_cfg[name])
        except Exception as error:
            cause = _missing_weights_cause(error)
            if cause is None or missing_weights == "error":
                raise
            skipped[name] = str(cause)
            log.warning("skipping metric %s: %s <missing_weights=skip>", name, cause)
            continue
        if not isinstance(metric, VideoMetric):
            raise TypeError(f"metrics.{name} built a {type(metric).__name__}, which is not a VideoMetric")
        metrics[name] = metric
    return metrics, skipped


def run_metrics(
    metrics: Mapping[str, VideoMetric],
    generated: Iterable[tuple[Tensor, Sequence[str | None]]],
    real: Iterable[Tensor] | None,
) -> dict[str, dict[str, float]]:
    """Feed every generated batch `([B, T, C, H, W], prompts)` to all metrics, then every real batch
    `[B, T, C, H, W]` to the metrics that need real videos; return each metric's results."""
    generated_count = 0
    for videos, prompts in generated:
        for metric in metrics.values():
            metric.update_generated(videos, prompts)
        generated_count += len(videos)
    log.info("scored %d generated videos", generated_count)
    needing_real = [metric for metric in metrics.values() if metric.needs_real]
    if needing_real:
        if real is None:
            raise ValueError("a metric needs real videos but no real-video source was given")
        real_count = 0
        for videos in real:
            for metric in needing_real:
                metric.update_real(videos)
            real_count += len(videos)
        log.info("read %d real clips", real_count)
    return {name: metric.compute() for name, metric in metrics.items()}
