"""medcoss_monai.weights: the authors' released checkpoints as stage folders of this project.

``python -m medcoss_monai.weights import --format medcoss --checkpoint FILE --out DIR [--tokenizer NAME]``
writes a stage folder; :func:`load_pretrained` rebuilds the network of any stage folder, imported or
trained here.
"""

from medcoss_monai.weights.importer import FORMATS, FormatNotImplementedError, WeightFormat, import_checkpoint
from medcoss_monai.weights.medcoss_format import convert_medcoss
from medcoss_monai.weights.pretrained import load_pretrained

__all__ = [
    "FORMATS",
    "WeightFormat",
    "FormatNotImplementedError",
    "import_checkpoint",
    "convert_medcoss",
    "load_pretrained",
]
