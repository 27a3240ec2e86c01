"""Evaluate a text-to-video model: FVD, CLIPSIM, frame FID and the toy accuracy of an evaluation protocol.

    python eval.py                                          # toy protocol, newest checkpoint under logs/train
    python eval.py eval_protocol=ucf101 model=scvideo ckpt_path=run.ckpt resolution=256px \
        metrics.fvd.weights_path=/weights/rgb_imagenet.pt
    python eval.py eval_protocol=msrvtt generated_dir=/videos/msrvtt metrics.clipsim.weights_path=...

Writes `eval_results.json`, `eval_results.md` and TensorBoard scalars (`eval/<metric>`) into the run directory,
and the generated videos (with `videos.csv`) into `<run directory>/generated`.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from datamodules.frame_selection import FrameSelection
from modules.evaluation.evaluator import build_metrics, run_metrics
from modules.evaluation.generation import generate_videos
from modules.evaluation.prompts import expand_prompts
from modules.evaluation.real_videos import real_clips
from modules.evaluation.report import EvaluationReport, write_report
from modules.evaluation.video_folder import generated_videos, iter_video_batches
from modules.evaluation.video_metric import resolve_device
from modules.runtime.checkpoint_config import apply_checkpoint_config
from modules.runtime.config_checks import check_config
from modules.runtime.precision import inference_precision
from modules.runtime.run_directory import register_resolvers
from modules.runtime.sampling import build_model_for_sampling

log = logging.getLogger("eval")
register_resolvers()


def generate_protocol_videos(cfg: DictConfig, device: torch.device) -> Path:
    """Generate the protocol's videos with the configured model into `<output_dir>/generated`."""
    protocol = cfg.eval_protocol
    check_config(cfg)
    precision = inference_precision(cfg)
    precision.check(device)
    jobs = expand_prompts(list(instantiate(protocol.prompts)), protocol.num_videos, protocol.seed)
    model = build_model_for_sampling(cfg).to(device).eval()
    folder = generate_videos(
        model,
        jobs,
        Path(cfg.paths.output_dir) / "generated",
        num_frames=protocol.num_frames,
        height=protocol.height,
        width=protocol.width,
        fps=protocol.fps,
        batch_size=cfg.batch_size,
        device=device,
        precision=precision,
    )
    del model  # free the generator's memory before the feature networks load
    gc.collect()
    return folder


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Generate (or read) the videos, compute the protocol's metrics, write the report; returns the results."""
    L.seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    protocol = cfg.eval_protocol
    sources = {"protocol": protocol.name}
    if cfg.generated_dir is None:
        generated_dir = generate_protocol_videos(cfg, device)
        sources["checkpoint"] = str(cfg.ckpt_path or "none: weights named by the model config")
    else:
        generated_dir = Path(cfg.generated_dir)
    sources["generated_dir"] = str(generated_dir)
    metrics, skipped = build_metrics(cfg.metrics, protocol.metrics, missing_weights=cfg.missing_weights)
    generated = iter_video_batches(
        generated_videos(generated_dir),
        FrameSelection(protocol.num_frames, frame_stride=1),
        height=protocol.height,
        width=protocol.width,
        batch_size=cfg.batch_size,
        skip_unreadable=False,
    )
    real = None
    if any(metric.needs_real for metric in metrics.values()):
        real = real_clips(protocol.real_data, cfg.real_dir, protocol.num_real_videos)
        sources["real"] = str(cfg.real_dir or protocol.real_data.val_urls)
    results = run_metrics(metrics, generated, real)
    report = EvaluationReport(
        protocol=protocol.name,
        results=results,
        settings={name: metric.settings() for name, metric in metrics.items()},
        skipped=skipped,
        sources=sources,
    )
    written = write_report(report, cfg.paths.output_dir)
    log.info("results %s written to %s", report.flat_results(), written["markdown"])
    return report.flat_results()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(apply_checkpoint_config(cfg))  # the checkpoint's model and sampling defaults


if __name__ == "__main__":
    main()
