"""Feature distillation from the previous stage's frozen encoder on rehearsal batches."""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents

from medcoss_monai.engines.pretext_trainer import PretextKeys
from medcoss_monai.handlers.rehearsal import is_buffer_batch
from medcoss_monai.losses import FeatureDistillationLoss

__all__ = ["FeatureDistillationHandler"]


class FeatureDistillationHandler:
    """Adds ``weight * MSE(student tokens, teacher tokens)`` to the loss of buffer batches.

    The teacher is the previous stage's network, frozen and in ``eval()`` mode, run without gradients
    on exactly the student's input: the same (mixed) images with the same masking noise, or the same
    masked token ids. The loss compares the final-layer tokens (``latent``) of both. Current-modality
    batches are left alone. The term is reported as ``PretextKeys.DISTILL_LOSS`` (``distill_loss``).

    Args:
        teacher: the frozen previous-stage network (``None`` disables the handler: a first stage).
        weight: weight of the distillation term.
        all_batches: distil on every batch, not only buffer batches (an ablation).
    """

    def __init__(self, teacher: torch.nn.Module | None, weight: float = 1.0, all_batches: bool = False) -> None:
        self.teacher = teacher
        self.weight = float(weight)
        self.all_batches = all_batches
        self.loss = FeatureDistillationLoss()
        if teacher is not None:
            freeze_teacher(teacher)

    def attach(self, engine: Engine) -> None:
        """Register on ``IterationEvents.LOSS_COMPLETED``.

        Args:
            engine: the trainer.
        """
        if self.teacher is not None:
            engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self)

    def teacher_tokens(self, engine: Engine) -> torch.Tensor:
        """The teacher's final-layer tokens on the student's input of the current iteration.

        Args:
            engine: the trainer inside an iteration.

        Returns:
            (B, L', hidden) tokens, without gradient.
        """
        out = engine.state.output
        inputs, pred = out[PretextKeys.INPUTS], out[PretextKeys.PRED]
        kwargs: dict[str, Any] = {"pretext": "encode"}
        if inputs.get(PretextKeys.ATTENTION_MASK) is not None:
            kwargs["attention_mask"] = inputs[PretextKeys.ATTENTION_MASK]
        if out[PretextKeys.PRETEXT] == "mae":
            kwargs["mask_ratio"] = engine.mask_ratio
            kwargs["noise"] = pred["noise"]
        self.teacher.eval()  # never let a train() call on a parent switch the teacher to train mode
        with torch.no_grad():
            return self.teacher(inputs[PretextKeys.X], **kwargs)["latent"]

    def __call__(self, engine: Engine) -> None:
        if not (self.all_batches or is_buffer_batch(engine)):
            return
        out = engine.state.output
        student = out[PretextKeys.PRED]["latent"]
        term = self.weight * self.loss(student, self.teacher_tokens(engine).to(student.dtype))
        out[PretextKeys.LOSS_TERMS][PretextKeys.DISTILL_LOSS] = term
        out[PretextKeys.LOSS] = out[PretextKeys.LOSS] + term


def freeze_teacher(teacher: torch.nn.Module) -> torch.nn.Module:
    """Put a teacher in ``eval()`` mode with every parameter frozen.

    Args:
        teacher: the network.

    Returns:
        The same network.
    """
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
