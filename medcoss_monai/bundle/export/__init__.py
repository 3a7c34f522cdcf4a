"""Model Zoo export: a trained stage or a fine-tuned task as a MONAI bundle (``python -m medcoss_monai.bundle.export``).

:mod:`.zoo` is the command line and the bundle writer; :mod:`.zoo_configs`, :mod:`.zoo_docs` and
:mod:`.zoo_metadata` write the bundle's configs, text and metadata; :mod:`.inference_inputs` is what the
exported ``configs/inference.json`` reads.
"""

from .zoo import PRETRAIN_WEIGHTS, export_bundle, export_finetuned, find_finetuned, find_trained_network, main, schema_path

__all__ = [
    "PRETRAIN_WEIGHTS",
    "export_bundle",
    "export_finetuned",
    "find_finetuned",
    "find_trained_network",
    "main",
    "schema_path",
]
