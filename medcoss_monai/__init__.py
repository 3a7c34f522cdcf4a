"""medcoss-monai: continual self-supervised pre-training on multi-modal medical data with MONAI."""

__version__ = "0.1.0"

MODALITIES = ("report", "xray", "ct", "mri", "pathology")
"""The five pre-training modalities, in the default curriculum order."""
