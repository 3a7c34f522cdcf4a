"""Consistency between two template-substituted copies of a batch (BrainMVP fine-tuning).

Each training crop is given twice, each copy with its own random template substitution
(:class:`~medcoss_monai.apps.brainmvp.template_fill.RandTemplateSubstituted`); the batch holds the first
copies then the second ones (:class:`~medcoss_monai.apps.brainmvp.paired_copies.PairedCopiesBatch`). The
segmentation loss is taken on **both** copies, and a consistency term asks the network to see the same
anatomy alike whichever contrasts were replaced. As in the reference (BrainMVP ``Downstream/trainer.py``:
``F.mse_loss(deep_feature_r, deep_feature_p)`` times 0.1, on with ``--use_cl True`` in
``Downstream/do_train.sh``), the term compares the encoder's deepest features of the two copies
(``on="features"``); ``on="probabilities"`` compares the output probabilities instead.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medcoss_monai.errors import BadInputError
from medcoss_monai.networks.checkpoint import unwrap_network

__all__ = ["ACTIVATIONS", "CONSISTENCY_ON", "SubstitutionConsistencyLoss"]

ACTIVATIONS = ("softmax", "sigmoid")
"""How logits become the probabilities that are compared: classes (softmax) or regions (sigmoid)."""
CONSISTENCY_ON = ("features", "probabilities")
"""What the consistency term compares: the encoder's deepest features (reference) or the output probabilities."""


class SubstitutionConsistencyLoss(nn.Module):
    """``seg_loss(pred, target) + weight * MSE(first copies, second copies)`` for a batch of two copies.

    Args:
        seg_loss: the segmentation loss, taken on the whole batch (both copies).
        weight: weight of the consistency term (reference: 0.1); 0 turns it off and the batch is taken
            as it is (not paired).
        activation: ``"softmax"`` (classes, over channels) or ``"sigmoid"`` (independent regions), for
            ``on="probabilities"``.
        on: one of :data:`CONSISTENCY_ON`.
        network: with ``on="features"``: the fine-tuning network (wrappers are removed); a forward hook on
            its ``feature_module`` keeps the features of the last forward pass.
        feature_module: dotted name of the submodule whose output (its last element, for a list) is the
            deepest feature map: ``"encoder"`` for the UniFormer, e.g. ``"encoder10"`` for MONAI's SwinUNETR.
    """

    def __init__(
        self,
        seg_loss: nn.Module,
        weight: float = 0.0,
        activation: str = "softmax",
        on: str = "probabilities",
        network: nn.Module | None = None,
        feature_module: str = "encoder",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if float(weight) < 0:
            raise BadInputError(f"--consistency_weight must be >= 0, got {weight}")
        if on not in CONSISTENCY_ON:
            raise BadInputError(f"--consistency_on {on!r}: use one of {list(CONSISTENCY_ON)}")
        self.seg_loss, self.weight, self.activation, self.on = seg_loss, float(weight), activation, on
        self._features: torch.Tensor | None = None
        if on == "features" and self.weight > 0:
            if network is None:
                raise ValueError("a consistency term on features needs the network")
            modules = dict(unwrap_network(network).named_modules())
            if feature_module not in modules:
                raise BadInputError(f"--consistency_feature_module: the network has no submodule {feature_module!r}")
            modules[feature_module].register_forward_hook(self._keep_features)

    def _keep_features(self, module: nn.Module, args: Any, output: Any) -> None:
        self._features = output[-1] if isinstance(output, (list, tuple)) else output

    def consistency(self, pred: torch.Tensor) -> torch.Tensor:
        """Mean squared difference between the first and second half of the batch.

        Args:
            pred: ``(2n, C, *spatial)`` logits, copy A of every crop then copy B (with ``on="features"``
                the features of the same forward pass are compared instead).

        Returns:
            A scalar.
        """
        if pred.shape[0] % 2:
            raise ValueError(f"a batch of paired copies has an even size, got {pred.shape[0]}")
        if self.on == "features":
            if self._features is None or self._features.shape[0] != pred.shape[0]:
                raise RuntimeError("no features of this batch were kept: was the network given to the loss?")
            first, second = self._features.float().chunk(2, dim=0)
        else:
            prob = torch.softmax(pred, dim=1) if self.activation == "softmax" else torch.sigmoid(pred)
            first, second = prob.chunk(2, dim=0)
        return F.mse_loss(first, second)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of a batch.

        Args:
            pred: ``(B, C, *spatial)`` logits (``B = 2n`` paired copies when ``weight > 0``).
            target: the labels of ``pred`` (each crop's label twice when paired).

        Returns:
            A scalar.
        """
        loss = self.seg_loss(pred, target)
        if self.weight > 0:
            loss = loss + self.weight * self.consistency(pred)
        self._features = None  # the graph of this step is not kept past it
        return loss
