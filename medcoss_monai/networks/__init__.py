"""medcoss_monai.networks: the unified encoder, the pretext heads and the downstream heads."""

from medcoss_monai.networks.encoder import KINDS, UnifiedEncoder, patchify, random_masking, unpatchify
from medcoss_monai.networks.heads import ClassificationHead, EncoderClassifier
from medcoss_monai.networks.mae import MAEDecoder
from medcoss_monai.networks.medcoss import MedCoSSModel
from medcoss_monai.networks.mlm import MLMHead
from medcoss_monai.networks.pos_embed import (
    PositionEmbedding,
    StateDictReport,
    adapt_state_dict,
    resize_pos_embed,
    sincos_pos_embed,
)
from medcoss_monai.networks.reference_encoder import MedCoSSReferenceEncoder
from medcoss_monai.networks.segmentation import UNETRStyleSegmenter

__all__ = [
    "KINDS",
    "UnifiedEncoder",
    "MAEDecoder",
    "MLMHead",
    "MedCoSSModel",
    "MedCoSSReferenceEncoder",
    "ClassificationHead",
    "EncoderClassifier",
    "UNETRStyleSegmenter",
    "PositionEmbedding",
    "StateDictReport",
    "resize_pos_embed",
    "sincos_pos_embed",
    "adapt_state_dict",
    "patchify",
    "unpatchify",
    "random_masking",
]
