"""Training engines of medcoss-monai."""

from .pretext_trainer import PretextEvents, PretextTrainer, pretext_of_batch

__all__ = ["PretextTrainer", "PretextEvents", "pretext_of_batch"]
