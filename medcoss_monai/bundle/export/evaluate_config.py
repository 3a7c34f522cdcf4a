"""``configs/evaluate.json`` of an exported bundle: its MONAI-only inference chain on a labelled datalist, scored.

:func:`portable_evaluate` turns a bundle's ``configs/inference.json`` (:func:`.portable.portable_inference` or
:func:`.portable.make_portable`) into its evaluation: the labels go through the image's spatial transforms, the
metric of the output kind (accuracy, the multi-label macro-AUC, mean Dice, detection mAP@0.5: the figures
fine-tuning reports) is computed by MONAI / ignite, and ``MetricsSaver`` writes ``metrics.csv``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from medcoss_monai.bundle.export.portable import ITEM_NAMES, TEXT_ITEM_NAMES, needs_medcoss, with_xray_ids

__all__ = ["DETECTION_MAP50", "MULTILABEL_AUC", "portable_evaluate"]


MULTILABEL_AUC = {
    "_target_": "ignite.metrics.EpochMetric",
    # MONAI's per-label AUC, averaged over the labels both present and absent in the split (a label seen in one
    # state only has none): the macro-AUC the fine-tuning's metrics.json reports
    "compute_fn": "$lambda p, y: float(numpy.nanmean(monai.metrics.compute_roc_auc(p, y, average='none')))",
    "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
    "check_compute_fn": False,
}
"""The key metric of a multi-label evaluation (ignite's epoch metric: the AUC needs every item at once)."""


def portable_evaluate(inference: Mapping[str, Any], output: str, label_transforms: list[Any], num_classes: int) -> dict[str, Any] | None:
    """``configs/evaluate.json``: the inference chain on a labelled datalist, MONAI metrics in ``output_dir``.

    Standalone in the Zoo style (``python -m monai.bundle run --config_file configs/evaluate.json
    --dataset_dir datalist.json``): the labels go through the image's spatial transforms (``label_transforms``
    replaces the preprocessing), metrics are computed on the network's grid and written by ``MetricsSaver``
    (``metrics.csv``) with the per-item scores.

    Args:
        inference: the bundle's inference config (:func:`portable_inference`).
        output: ``"classification"``, ``"multilabel"`` (independent sigmoid labels, multi-hot ``label``),
            ``"segmentation"`` or ``"detection"`` (``boxes`` and ``labels`` per item, mAP@0.5); features have no
            labelled metric.
        label_transforms: the preprocessing of an item with its ``label``.
        num_classes: output channels (detection: classes).

    Returns:
        The config, or None for outputs without a metric (or with labels only medcoss_monai prepares).
    """
    if output not in ("classification", "multilabel", "segmentation", "detection"):
        return None
    cfg = {k: copy.deepcopy(v) for k, v in inference.items() if k not in ("class_names", "output_ext", "mask_values")}
    cfg["output_dir"] = "$@bundle_root + '/eval_metrics'"
    cfg["preprocessing"]["transforms"] = copy.deepcopy(label_transforms)
    if output == "detection":
        return _detection_evaluate(cfg, num_classes)
    pairs = "$monai.handlers.from_engine(['pred', 'label'])"
    if output == "multilabel":  # independent labels: the AUC scores the sigmoid probabilities
        post = [{"_target_": "Activationsd", "keys": "pred", "sigmoid": True}]
        name, metric = "auc", MULTILABEL_AUC
    else:  # one class per item (per voxel): the metric compares the one-hot prediction and label
        post = [{"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": num_classes}]
        if output == "segmentation":
            name, metric = "mean_dice", {"_target_": "MeanDice", "include_background": False, "output_transform": pairs}
        else:
            # one-hot prediction equal to the one-hot label: the share of items classified right (MONAI's
            # ConfusionMatrix "accuracy" is the mean of the per-class one-vs-rest accuracies, higher beyond two classes)
            name, metric = "accuracy", {"_target_": "ignite.metrics.Accuracy", "is_multilabel": True,
                                        "output_transform": pairs}
    cfg["postprocessing"]["transforms"] = post
    cfg["evaluator"]["key_val_metric"] = {name: metric}
    with_xray_ids(cfg)
    cfg["handlers"] = [cfg["handlers"][0], {"_target_": "StatsHandler", "iteration_log": False},
                       {"_target_": "MetricsSaver", "save_dir": "@output_dir", "metrics": "*",
                        "metric_details": "*" if output == "segmentation" else None,
                        "batch_transform": TEXT_ITEM_NAMES if "prepare_batch" in cfg else ITEM_NAMES, "summary_ops": "*"}]
    return None if needs_medcoss(cfg) else cfg  # a label transform only the package runs: no MONAI-only evaluation


DETECTION_MAP50 = {
    # ignite's COCO-style average precision (101 recall points, at most 100 boxes per image and class) at IoU 0.5,
    # averaged over the classes with ground truth: the mAP@0.5 the fine-tuning reports (MONAI's COCOMetric there)
    "_target_": "ignite.metrics.ObjectDetectionAvgPrecisionRecall",
    "iou_thresholds": [0.5],
    "num_classes": "@num_classes",
    "output_transform": ("$lambda o: ([{'bbox': o['pred'][:, :4], 'scores': o['pred'][:, 4], 'labels': o['pred'][:, 5].long()}], "
                         "[{'bbox': o['true_boxes'][0].reshape(-1, 4).float(), 'labels': o['true_labels'][0].reshape(-1).long()}])"),
}
"""The detection metric of ``evaluate.json`` (``[0]`` of it: ignite's metric gives the precision and the recall)."""


def _detection_evaluate(cfg: dict[str, Any], num_classes: int) -> dict[str, Any]:
    """``evaluate.json`` of a detector: items with ``boxes`` ``[[x1, y1, x2, y2], ...]`` (pixels of the image as
    stored) and ``labels`` (classes from 0), scored by :data:`DETECTION_MAP50`."""
    cfg["num_classes"] = num_classes
    cfg["preprocessing"]["transforms"].append({"_target_": "EnsureTyped", "keys": ["boxes", "labels"],
                                               "dtype": ["$torch.float32", "$torch.int64"], "track_meta": False})
    # one image per batch, not decollated (its boxes are one (N, 6) tensor); the ground truth joins the output
    cfg["evaluator"]["decollate"] = False
    cfg["postprocessing"]["transforms"] = [{"_target_": "CopyItemsd", "keys": ["boxes", "labels"],
                                            "names": ["true_boxes", "true_labels"]},
                                           {"_target_": "EnsureTyped", "keys": "pred", "track_meta": False}]
    cfg["map50_metric"] = copy.deepcopy(DETECTION_MAP50)
    cfg["evaluator"]["key_val_metric"] = {"map50": "$@map50_metric[0]"}
    cfg["handlers"] = [cfg["handlers"][0], {"_target_": "StatsHandler", "iteration_log": False},
                       {"_target_": "MetricsSaver", "save_dir": "@output_dir", "metrics": "*", "summary_ops": None}]
    return cfg
