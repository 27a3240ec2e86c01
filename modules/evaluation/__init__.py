"""Evaluation of generated videos (`eval.py`, `conf/eval.yaml`, `conf/eval_protocol/`).

Protocols (`eval_protocol=`): `toy` (shapes data, CPU), `msrvtt` (zero-shot, captions -> CLIPSIM, frame FID,
FVD), `ucf101` (zero-shot, class names -> FVD). Each pins the prompts, number of videos, frames, resolution,
fps, seed and the real clips (`real_data`, a `VideoDataModule` config).

Metrics (`metrics.<name>`, each a `VideoMetric`, fed batches `[B, T, C, H, W]` in [-1, 1]):

- `fvd` (`fvd.py`): Fréchet distance of I3D features (`i3d.py`); read `fvd.py`'s docstring for how the
  number depends on clip count, resize method and weights. Needs `rgb_imagenet.pt`.
- `clipsim` (`clipsim.py`): mean frame-prompt cosine similarity of an open_clip model. Needs its weights.
- `frame_fid` (`frame_fid.py`): torchmetrics FID over frames with a local Inception-v3 (or any module).
- `toy_accuracy` (`toy_metrics.py`): colour / direction accuracy by the toy scorer.

No weights are downloaded; a metric without its weights file is skipped and listed as such in the report
(`missing_weights=skip`), or fails the run (`missing_weights=error`).
"""
