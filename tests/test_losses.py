"""Pretext and distillation losses on known values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medcoss_monai.losses import (
    FeatureDistillationLoss,
    MaskedReconstructionLoss,
    MaskedTokenLoss,
    masked_token_accuracy,
)


def test_masked_reconstruction_loss() -> None:
    loss = MaskedReconstructionLoss()
    target = torch.rand(2, 4, 3)
    mask = torch.tensor([[1.0, 0, 1, 0], [0, 0, 1, 1]])
    assert loss(target.clone(), target, mask).item() == 0.0
    # one sample, two patches of two values; only the masked patch counts
    pred = torch.tensor([[[1.0, 3.0], [10.0, 10.0]]])
    tgt = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])
    assert loss(pred, tgt, torch.tensor([[1.0, 0.0]])).item() == pytest.approx((1 + 9) / 2)
    assert loss(pred, tgt, torch.tensor([[1.0, 1.0]])).item() == pytest.approx(((1 + 9) / 2 + 100) / 2)
    # errors on visible patches do not change the loss
    noisy = target.clone()
    noisy[0, 1] += 5.0
    assert loss(noisy, target, mask).item() == 0.0
    # nothing masked: every patch counts
    assert loss(pred, tgt, torch.zeros(1, 2)).item() == pytest.approx(((1 + 9) / 2 + 100) / 2)
    with pytest.raises(ValueError, match="mask"):
        loss(pred, tgt, torch.ones(2, 2))


def test_masked_token_loss_and_accuracy() -> None:
    loss = MaskedTokenLoss()
    logits = torch.randn(2, 5, 7)
    labels = torch.full((2, 5), -100)
    labels[0, 1], labels[1, 3] = 4, 2
    expected = (F.cross_entropy(logits[0, 1:2], labels[0, 1:2]) + F.cross_entropy(logits[1, 3:4], labels[1, 3:4])) / 2
    assert loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    # what the ignored positions hold does not matter
    changed = logits.clone()
    changed[0, 0] += 100
    assert loss(changed, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    uniform = torch.zeros(1, 3, 7, requires_grad=True)
    assert loss(uniform, torch.tensor([[-100, 3, -100]])).item() == pytest.approx(math.log(7))
    empty = loss(uniform, torch.full((1, 3), -100))
    assert empty.item() == 0.0 and empty.requires_grad
    hits = torch.zeros(1, 3, 7)
    hits[0, 0, 2] = hits[0, 1, 5] = 1.0
    assert masked_token_accuracy(hits, torch.tensor([[2, 4, -100]])).item() == 0.5
    assert torch.isnan(masked_token_accuracy(hits, torch.full((1, 3), -100)))


def test_feature_distillation_loss() -> None:
    loss = FeatureDistillationLoss()
    student = torch.zeros(2, 3, 4, requires_grad=True)
    teacher = torch.full((2, 3, 4), 2.0, requires_grad=True)
    value = loss(student, teacher)
    assert value.item() == pytest.approx(4.0)
    value.backward()
    assert student.grad is not None and teacher.grad is None  # the teacher is detached
    with pytest.raises(ValueError, match="same masking noise"):
        loss(student, teacher[:, :2])

