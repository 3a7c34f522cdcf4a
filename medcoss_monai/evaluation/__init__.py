"""Evaluation on held-out data: the pretext score of a stage on files it never trained on."""

from medcoss_monai.evaluation.heldout import held_out_batches, held_out_mae_mse

__all__ = ["held_out_batches", "held_out_mae_mse"]
