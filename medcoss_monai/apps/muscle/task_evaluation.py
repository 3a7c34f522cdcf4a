"""Test metrics of MUSCLE's tasks, computed with MONAI's metrics on a loader of a task.

- classification: ACC, AUC and macro-F1 as fine-tuning computes them (scikit-learn), sensitivity and
  specificity (``ConfusionMatrixMetric``; of the positive class for two classes, macro over classes otherwise);
- segmentation: Dice and mIoU of the foreground classes (``DiceMetric``, ``MeanIoU``);
- detection: mAP at IoU 0.5 and the AP of each class (``monai.apps.detection.metrics``: ``matching_batch``
  and ``COCOMetric``).

Each result holds ``score``, the task's key metric (AUC, Dice, mAP@0.5), so one number per task can
be followed across the visits of the multi-task schedule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from monai.apps.detection.metrics.coco import COCOMetric
from monai.apps.detection.metrics.matching import matching_batch
from monai.data.box_utils import box_iou
from monai.metrics import ConfusionMatrixMetric, DiceMetric, MeanIoU
from monai.networks.utils import eval_mode, one_hot

from medcoss_monai.handlers.metrics_writer import classification_metrics
from medcoss_monai.apps.muscle.multitask_trainer import MultiTaskKeys, detection_inputs
from medcoss_monai.networks.checkpoint import unwrap_network
from medcoss_monai.apps.muscle.task_heads import CLASSIFICATION, DETECTION, SEGMENTATION

__all__ = ["SCORE", "classification_task_metrics", "segmentation_metrics", "detection_metrics", "evaluate_task"]

SCORE = "score"
"""Key of a task's key metric in every result."""
CONFUSION = ("sensitivity", "specificity")


def classification_task_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float | None]:
    """The fine-tuning scores (ACC, AUC, macro-F1) plus sensitivity and specificity of class probabilities.

    ACC, AUC and F1 are :func:`~medcoss_monai.handlers.metrics_writer.classification_metrics` (scikit-learn),
    so a task's figures during MUSCLE's schedule and after fine-tuning are the same computation.

    Args:
        probs: ``(N, C)`` probabilities.
        labels: ``(N,)`` class indices.

    Returns:
        ``{"ACC", "AUC", "F1", "sensitivity", "specificity", "score"}`` (``score`` = AUC; NaN where a split
        holds one class only and AUC is undefined, ``None`` under ``"AUC"``).
    """
    num_classes = probs.shape[1]
    scores = classification_metrics(probs.detach().cpu().numpy(), labels.detach().cpu().numpy())
    y = one_hot(labels.long().reshape(-1, 1), num_classes, dim=1)
    y_pred = one_hot(probs.argmax(1, keepdim=True), num_classes, dim=1)
    # two classes: the positive class's figures (channel 0 left out); more: the mean over classes
    confusion = ConfusionMatrixMetric(include_background=num_classes > 2, metric_name=CONFUSION, reduction="mean")
    confusion(y_pred=y_pred, y=y)
    sens, spec = (float(v.item()) for v in confusion.aggregate())
    auc = scores["AUC"]
    return {**scores, "sensitivity": sens, "specificity": spec, SCORE: float("nan") if auc is None else float(auc)}


def segmentation_metrics(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Dice and mIoU over the foreground classes.

    Args:
        pred: ``(N, H, W)`` predicted class indices.
        label: ``(N, H, W)`` true class indices.
        num_classes: number of classes, background included.

    Returns:
        ``{"dice", "miou", "score"}`` (``score`` = Dice).
    """
    y_pred = one_hot(pred.long().unsqueeze(1), num_classes, dim=1)
    y = one_hot(label.long().unsqueeze(1), num_classes, dim=1)
    dice, iou = DiceMetric(include_background=False, ignore_empty=False), MeanIoU(include_background=False, ignore_empty=False)
    dice(y_pred=y_pred, y=y)
    iou(y_pred=y_pred, y=y)
    d, m = float(dice.aggregate().item()), float(iou.aggregate().item())
    return {"dice": d, "miou": m, SCORE: d}


def detection_metrics(
    predictions: Sequence[dict[str, Any]], targets: Sequence[dict[str, Any]], classes: Sequence[str], iou: float = 0.5
) -> dict[str, float]:
    """mAP at one IoU threshold and the AP of each class (classes without ground truth are left out).

    Args:
        predictions: per image ``{"boxes" (D, 4), "labels" (D,), "scores" (D,)}`` (torchvision detector output).
        targets: per image ``{"boxes" (G, 4), "labels" (G,)}``.
        classes: the class names (index = label).
        iou: the IoU threshold.

    Returns:
        ``{"map50", "ap50_<class>"..., "score"}`` (``score`` = mAP); a class without any ground-truth box
        has no AP entry.
    """
    def arr(x: Any, dtype: Any = np.float32) -> np.ndarray:
        return torch.as_tensor(x).detach().cpu().numpy().astype(dtype)

    metric = COCOMetric(classes=list(classes), iou_list=(iou,), iou_range=(iou, iou, 0.05), max_detection=(100,),
                        per_class=True, verbose=False)
    matched = matching_batch(
        iou_fn=box_iou,
        iou_thresholds=metric.iou_thresholds,
        pred_boxes=[arr(p["boxes"]).reshape(-1, 4) for p in predictions],
        pred_classes=[arr(p["labels"], np.int64).reshape(-1) for p in predictions],
        pred_scores=[arr(p["scores"]).reshape(-1) for p in predictions],
        gt_boxes=[arr(t["boxes"]).reshape(-1, 4) for t in targets],
        gt_classes=[arr(t["labels"], np.int64).reshape(-1) for t in targets],
        max_detections=100,
    )
    values = metric(matched)[0]
    key = f"AP_IoU_{iou:.2f}_MaxDet_100"
    present = {int(c) for t in targets for c in arr(t["labels"], np.int64).reshape(-1)}
    result = {f"ap50_{name.replace(' ', '_')}": float(values[f"{name}_{key}"]) for i, name in enumerate(classes) if i in present}
    # COCOMetric's own mean counts a class without ground truth as AP -1: average the classes present
    result["map50"] = float(np.mean(list(result.values()))) if result else 0.0
    result[SCORE] = result["map50"]
    return result


def evaluate_task(
    network: torch.nn.Module, task: str, loader: Iterable, device: torch.device | str, classes: Sequence[str] | None = None
) -> dict[str, float]:
    """Run ``network``'s head of ``task`` over ``loader`` and compute the task's metrics.

    Args:
        network: a :class:`~medcoss_monai.apps.muscle.multitask_network.MultiTaskResNet` (or a wrapper of one).
        task: the task.
        loader: the task's evaluation loader (collated dicts; detection: lists of items).
        device: where to run.
        classes: detection class names (default ``class_<i>``).

    Returns:
        The metrics of :func:`classification_task_metrics`, :func:`segmentation_metrics` or :func:`detection_metrics`.
    """
    model = unwrap_network(network)
    kind = model.kind(task)
    with eval_mode(model):
        outputs: list[Any] = []
        truths: list[Any] = []
        for batch in loader:
            if kind == DETECTION:
                images, targets = detection_inputs(batch, torch.device(device))
                outputs += model(images, task=task)
                truths += targets
            else:
                logits = model(batch[MultiTaskKeys.IMAGE].to(device), task=task)
                label = batch[MultiTaskKeys.LABEL].to(device)
                outputs.append(torch.softmax(logits, 1) if kind == CLASSIFICATION else logits.argmax(1))
                truths.append(label.reshape(-1) if kind == CLASSIFICATION else label.reshape(label.shape[0], *label.shape[-2:]))
    if kind == CLASSIFICATION:
        return classification_task_metrics(torch.cat(outputs), torch.cat(truths))
    if kind == SEGMENTATION:
        return segmentation_metrics(torch.cat(outputs), torch.cat(truths), model.heads[task].num_classes)
    names = list(classes) if classes else [f"class_{i}" for i in range(model.heads[task].num_classes)]
    return detection_metrics(outputs, truths, names)
