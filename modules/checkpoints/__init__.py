"""Safe weight-file reading, SD checkpoint splitting and strict loading with readable reports."""

from modules.checkpoints.safe_load import (
    CheckpointError,
    InertPickledObject,
    UnsafeCheckpointError,
    load_state_dict_file,
)
from modules.checkpoints.sd_checkpoint import (
    EMA_PREFIX,
    FIRST_STAGE_PREFIX,
    HF_CLIP_TEXT_PREFIX,
    OPEN_CLIP_TEXT_PREFIX,
    UNET_PREFIX,
    SDComponents,
    ema_unet_state_dict,
    load_sd_checkpoint,
    split_sd_checkpoint,
)
from modules.checkpoints.strict_load import (
    LoadReport,
    ShapeMismatch,
    StateDictMismatchError,
    compare_state_dict,
    load_partial,
    load_strict,
)

__all__ = [
    "EMA_PREFIX",
    "FIRST_STAGE_PREFIX",
    "HF_CLIP_TEXT_PREFIX",
    "OPEN_CLIP_TEXT_PREFIX",
    "UNET_PREFIX",
    "CheckpointError",
    "InertPickledObject",
    "LoadReport",
    "SDComponents",
    "ShapeMismatch",
    "StateDictMismatchError",
    "UnsafeCheckpointError",
    "compare_state_dict",
    "ema_unet_state_dict",
    "load_partial",
    "load_sd_checkpoint",
    "load_state_dict_file",
    "load_strict",
    "split_sd_checkpoint",
]
