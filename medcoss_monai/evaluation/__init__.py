"""Evaluation of pre-trained encoders: linear probes, held-out pretext scores, the forgetting matrix, method comparison.

Inputs are prepared by the stage bundles with the settings each stage of a run recorded
(:mod:`.preprocessing`). The command lines are ``python -m medcoss_monai.evaluation.forgetting``
(one run's matrix), ``python -m medcoss_monai.evaluation.compare`` (several runs) and
``python -m medcoss_monai.evaluation.figures`` (the README's tables); those modules are not imported
here, so each runs as ``__main__`` without a second copy.
"""

from .features import linear_probe, pooled_features
from .heldout import held_out_batches, held_out_mae_mse
from .matrix import (
    COLUMN_MODALITY,
    CSV_COLUMNS,
    PRETEXT_COLUMNS,
    PROBE_COLUMNS,
    forgetting_summary,
    format_matrix,
    plot_matrix,
    read_matrix,
    write_matrix,
)
from .preprocessing import image_probe_transforms, network_sizes, stage_settings
from .probes import PROBE_TASKS, evaluate_stage, image_probe, network_with_stage_heads
from .text_probe import probe_tokenizer, text_mlm_accuracy, text_probe

__all__ = [
    "COLUMN_MODALITY",
    "CSV_COLUMNS",
    "PRETEXT_COLUMNS",
    "PROBE_COLUMNS",
    "PROBE_TASKS",
    "evaluate_stage",
    "forgetting_summary",
    "format_matrix",
    "held_out_batches",
    "held_out_mae_mse",
    "image_probe",
    "image_probe_transforms",
    "linear_probe",
    "network_sizes",
    "network_with_stage_heads",
    "plot_matrix",
    "pooled_features",
    "probe_tokenizer",
    "read_matrix",
    "stage_settings",
    "text_mlm_accuracy",
    "text_probe",
    "write_matrix",
]
