"""SCVideo: SD 1.4 inflated to video with Sparse Spatial-Temporal attention (SCVideo appendix section 1)."""

from modules.scvideo.scvideo_denoiser import TRAINABLE_SETS, SCVideoDenoiser
from modules.scvideo.sparse_causal_attention import SparseCausalAttention, sparse_causal_tokens
from modules.scvideo.sst_transformer_block import SparseSpatialTemporalBlock
from modules.scvideo.video_res_block import VideoResBlock
from modules.scvideo.video_unet import (
    NEW_MODULE_NAMES,
    PAPER_TRAINABLE_MODULE_NAMES,
    SCVideoBlockFactory,
    is_new_parameter,
    is_paper_trainable,
)
from modules.scvideo.weight_files import load_pretrained_unet, load_temporal_weights, save_temporal_weights

__all__ = [
    "NEW_MODULE_NAMES",
    "PAPER_TRAINABLE_MODULE_NAMES",
    "TRAINABLE_SETS",
    "SCVideoBlockFactory",
    "SCVideoDenoiser",
    "SparseCausalAttention",
    "SparseSpatialTemporalBlock",
    "VideoResBlock",
    "is_new_parameter",
    "is_paper_trainable",
    "load_pretrained_unet",
    "load_temporal_weights",
    "save_temporal_weights",
    "sparse_causal_tokens",
]
