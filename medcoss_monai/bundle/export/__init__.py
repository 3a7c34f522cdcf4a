"""Model Zoo export: a trained stage or a fine-tuned task as a MONAI bundle (``python -m medcoss_monai.bundle.export``).

:mod:`.zoo_sources` finds what was trained, :mod:`.zoo` writes the bundle and is the command line;
:mod:`.zoo_configs`, :mod:`.zoo_docs` and :mod:`.zoo_metadata` write the bundle's configs, text and
metadata; :mod:`.inference_inputs` is what the exported ``configs/inference.json`` of a text bundle reads.
:mod:`.portable` makes the inference configs need MONAI and PyTorch only (``network_def`` is the TorchScript
``models/model.ts``) and writes ``configs/multi_gpu_train.json``; :mod:`.evaluate_config` writes
``configs/evaluate.json`` from the inference config; :mod:`.zoo_apps`,
:mod:`.app_networks` and :mod:`.app_configs` export BrainMVP and MUSCLE models.
"""

from .app_configs import write_app_bundle
from .zoo import PRETRAIN_WEIGHTS, main, write_bundle
from .zoo_apps import find_app_model
from .zoo_metadata import schema_path
from .zoo_sources import Trained, find_finetuned, find_stage, find_trained_network

__all__ = [
    "PRETRAIN_WEIGHTS",
    "Trained",
    "find_app_model",
    "find_finetuned",
    "find_stage",
    "find_trained_network",
    "main",
    "schema_path",
    "write_app_bundle",
    "write_bundle",
]
