"""medcoss_monai.weights: the authors' released checkpoints as stage folders of this project.

``python -m medcoss_monai.weights import --format {medcoss,brainmvp_uniformer,brainmvp_unet} --checkpoint FILE --out DIR
[--tokenizer NAME]``
writes a stage folder; :func:`load_pretrained` rebuilds the network of any stage folder, imported or
trained here.
"""

from medcoss_monai.weights.brainmvp_format import convert_brainmvp_unet, convert_brainmvp_uniformer
from medcoss_monai.weights.importer import FORMATS, WeightFormat, import_checkpoint
from medcoss_monai.weights.medcoss_format import convert_medcoss
from medcoss_monai.weights.pretrained import load_pretrained

__all__ = [
    "FORMATS",
    "WeightFormat",
    "import_checkpoint",
    "convert_medcoss",
    "convert_brainmvp_uniformer",
    "convert_brainmvp_unet",
    "load_pretrained",
]
