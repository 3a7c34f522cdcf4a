"""medcoss_monai.losses: masked reconstruction, masked-token CE, feature distillation."""

from medcoss_monai.losses.distillation import FeatureDistillationLoss
from medcoss_monai.losses.reconstruction import MaskedReconstructionLoss
from medcoss_monai.losses.token import MaskedTokenLoss, masked_token_accuracy

__all__ = [
    "MaskedReconstructionLoss",
    "MaskedTokenLoss",
    "masked_token_accuracy",
    "FeatureDistillationLoss",
]
