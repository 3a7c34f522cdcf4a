"""MUSCLE's multi-task network: one shared ResNet backbone and one head per task.

Step 2 (multi-task continual learning) trains all heads of one :class:`MultiTaskResNet`, one task
per visit; step 3 (fine-tuning) builds the same class with a single head. Weights live under
``backbone.`` (the same prefix as the MD-MoCo step's ``model.pt``) and ``heads.<task>.``, so
:func:`load_backbone` hands the backbone of either step to the next.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
from torch import nn

from medcoss_monai.errors import BadInputError
from medcoss_monai.networks.checkpoint import load_adapted
from medcoss_monai.apps.muscle.task_heads import DETECTION, resnet_feature_maps

__all__ = ["BACKBONE_PREFIX", "MultiTaskResNet", "load_backbone", "backbone_state"]

logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "backbone."
"""Prefix of the shared backbone's keys in ``model.pt`` of every MUSCLE step."""


class MultiTaskResNet(nn.Module):
    """A shared ResNet backbone with one head per task.

    ``forward(x, task)`` runs the backbone and the head of ``task``; with one head, ``task`` may be
    left out, so MONAI trainers and inferers call the single-task network as ``network(x)``. A
    detection head (:class:`~medcoss_monai.apps.muscle.task_heads.FasterRCNNDetectionHead`) runs the
    shared backbone itself and takes the targets (training) or returns detections (eval).

    Args:
        backbone: a torchvision ResNet (:func:`~medcoss_monai.apps.muscle.moco.resnet_backbone`); its ``fc`` is not used.
        heads: task name -> head (heads of :mod:`~medcoss_monai.apps.muscle.task_heads`).
    """

    def __init__(self, backbone: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not heads:
            raise BadInputError("MultiTaskResNet needs at least one head.")
        self.backbone = backbone
        self.heads = nn.ModuleDict(dict(heads))

    @property
    def tasks(self) -> list[str]:
        """The task names, in the order of the heads."""
        return list(self.heads.keys())

    def kind(self, task: str) -> str:
        """The head kind of ``task``: ``classification``, ``segmentation`` or ``detection``."""
        return self.heads[task].kind

    def forward(
        self, x: torch.Tensor | list[torch.Tensor], task: str | None = None, targets: list[dict[str, torch.Tensor]] | None = None
    ):
        """Run the backbone and one task's head.

        Args:
            x: images ``(B, 3, H, W)``; for detection also a list of ``(3, H, W)`` images of any sizes.
            task: the task; may be omitted when there is one head.
            targets: detection targets (``boxes``, ``labels`` per image), detection training only.

        Returns:
            Logits ``(B, classes)`` (classification), ``(B, classes, H, W)`` (segmentation), or the
            detector's losses (training) / detections (eval).
        """
        if task is None:
            if len(self.heads) != 1:
                raise BadInputError(f"Name the task: this network has heads {self.tasks}.")
            task = self.tasks[0]
        head = self.heads[task]
        if head.kind == DETECTION:
            return head(x, targets)
        return head(resnet_feature_maps(self.backbone, x), x.shape[2:])


def backbone_state(network: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's tensors of a network, keyed ``backbone.<key>`` (what the next step loads)."""
    return {k: v for k, v in network.state_dict().items() if k.startswith(BACKBONE_PREFIX)}


def load_backbone(network: MultiTaskResNet, ckpt: str | os.PathLike | None) -> MultiTaskResNet:
    """Load the ``backbone.`` tensors of an earlier step's ``model.pt`` into ``network``; "" = from scratch.

    Heads are never loaded: each task's head starts fresh (step 2 from step 1; step 3 from step 2).

    Args:
        network: the network to load.
        ckpt: an MD-MoCo or multi-task ``model.pt`` (or a checkpoint nesting one), or "" / None.

    Returns:
        ``network``.

    Raises:
        CheckpointError: the file cannot be read safely, naming it.
        BadInputError: the file holds no backbone tensor fitting this backbone (another ResNet depth, or
            not a MUSCLE checkpoint), naming it.
    """
    if not ckpt:
        logger.info("No pretrained_ckpt: the backbone is trained from scratch.")
        return network
    report = load_adapted(network, ckpt, "MUSCLE backbone checkpoint", prefixes=(BACKBONE_PREFIX,))
    expected = [k for k in network.state_dict() if k.startswith(BACKBONE_PREFIX)]
    if report.skipped or len(report.loaded) < len(expected):
        shapes = "; ".join(f"{k}: {tuple(a)} vs {tuple(b)}" for k, (a, b) in list(report.skipped.items())[:3])
        raise BadInputError(
            f"pretrained_ckpt '{ckpt}': {len(report.loaded)} of {len(expected)} backbone tensors fit"
            + (f" ({shapes})" if shapes else "")
            + ". Use the backbone the checkpoint was trained with (--backbone resnet18 / resnet50), "
            "and a model.pt of a MUSCLE step (keys 'backbone.*')."
        )
    logger.info(f"Loaded the backbone of '{ckpt}' ({len(report.loaded)} tensors); heads start fresh.")
    return network
