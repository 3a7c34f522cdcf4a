"""Model Zoo export: a trained stage or a fine-tuned task as a MONAI bundle (``python -m medcoss_monai.bundle.export``).

:mod:`.zoo_sources` finds what was trained, :mod:`.zoo` writes the bundle and is the command line;
:mod:`.zoo_configs`, :mod:`.zoo_docs` and :mod:`.zoo_metadata` write the bundle's configs, text and
metadata; :mod:`.inference_inputs` is what the exported ``configs/inference.json`` reads.
"""

from .zoo import PRETRAIN_WEIGHTS, main, write_bundle
from .zoo_metadata import schema_path
from .zoo_sources import Trained, find_finetuned, find_stage, find_trained_network

__all__ = [
    "PRETRAIN_WEIGHTS",
    "Trained",
    "find_finetuned",
    "find_stage",
    "find_trained_network",
    "main",
    "schema_path",
    "write_bundle",
]
