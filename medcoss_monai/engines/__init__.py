"""Training engines of medcoss-monai."""

from .pretext_trainer import TEXT_KEYS, PretextEvents, PretextKeys, PretextTrainer, pretext_of_batch

__all__ = ["PretextTrainer", "PretextEvents", "PretextKeys", "TEXT_KEYS", "pretext_of_batch"]
