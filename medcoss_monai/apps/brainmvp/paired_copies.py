"""Batch preparation that stacks two copies of every crop, for a consistency loss between them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.engines import PrepareBatch
from monai.utils import CommonKeys

__all__ = ["PairedCopiesBatch"]


class PairedCopiesBatch(PrepareBatch):
    """``(cat([image, copy]), cat([label, label]))``: the crops, then their second copies, with their labels.

    The second copy (``copy_key``) is the same crop as ``image`` with its own random template
    substitution; :class:`~medcoss_monai.apps.brainmvp.consistency.SubstitutionConsistencyLoss` compares the
    network's outputs on the two halves. Used as a MONAI trainer's ``prepare_batch``.

    Args:
        copy_key: key of the second copy in the batch.
        image_key: key of the first copy.
        label_key: key of the labels.
    """

    def __init__(self, copy_key: str = "image_copy", image_key: str = CommonKeys.IMAGE, label_key: str = CommonKeys.LABEL) -> None:
        self.copy_key, self.image_key, self.label_key = copy_key, image_key, label_key

    def __call__(
        self, batchdata: Mapping[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.copy_key not in batchdata:
            raise KeyError(f"the batch has no '{self.copy_key}': the training transforms make no second copy")
        image = torch.cat([batchdata[self.image_key], batchdata[self.copy_key]])
        label = torch.cat([batchdata[self.label_key]] * 2)
        return image.to(device=device, non_blocking=non_blocking), label.to(device=device, non_blocking=non_blocking)
