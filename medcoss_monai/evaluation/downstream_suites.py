"""The papers' downstream tables, one dict per suite: data set -> fine-tuning bundle, task overrides, metrics.

A suite lists the data sets a paper fine-tunes on. Each :class:`DownstreamSet` names the bundle that
fine-tunes it, the bundle ids that set the task to that data set (number of classes, label mode, head,
input contrasts...) and the paper's metrics with where they sit in the bundle's ``metrics.json``
(``{"metrics": {...}}``). The facts come from the reference code: MedCoSS ``yeerwen/MedCoSS``
``run_ds.sh`` and ``Downstream/Dim_{1,2,3}/*`` (classes; ACC / AUC / F1 for classification, Dice / HD95
for segmentation); BrainMVP ``shaohao011/BrainMVP`` ``Downstream/`` (input contrasts per set, BraTS
regions, Dice / HD95); MUSCLE's paper (ACC / AUC, Dice / mIoU, mAP@0.5).

The reference binary segmentations use one sigmoid channel; the bundles here use softmax over
background and foreground, hence ``num_classes`` = the reference's + 1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medcoss_monai.utils import atomic_write_json

__all__ = ["DATALIST", "DownstreamSet", "SUITES", "convert_muscle"]

DATALIST = "<datalist>"
"""Placeholder in an override value, replaced by the data set's datalist path (bundles without ``dataset_dir``)."""

_CLS = {"ACC": "ACC", "AUC": "AUC", "F1": "F1"}
_SEG = {"Dice": "Dice", "HD95": "HD95"}


@dataclass(frozen=True)
class DownstreamSet:
    """One row group of a downstream table.

    Args:
        name: the data set's name: its folder under ``--data_root`` and, unless ``converter`` is set, its
            name in :data:`medcoss_monai.data.prepare.DATASETS`.
        bundle: the fine-tuning bundle's file name in the bundles folder.
        task: what is learnt (``xray_cls``...), shown in the table.
        overrides: bundle id -> value setting the task to this data set (values as Python literals).
        metrics: column name -> its key in ``metrics.json``'s ``metrics`` (``#`` separates nested keys).
        data_id: the bundle id that takes the datalist; "" when an override holds :data:`DATALIST`.
        converter: ``"module:function"`` converting it, called as :func:`medcoss_monai.data.prepare.prepare`
            is (``dataset, root, out, cache_dir=, workers=, seed=, progress=``), the default.
        dataset: the name the converter is given (default ``name``): the registry's name where the table's differs.
    """

    name: str
    bundle: str
    task: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, str] = field(default_factory=lambda: dict(_CLS))
    data_id: str = "dataset_dir"
    converter: str = "medcoss_monai.data.prepare:prepare"
    dataset: str = ""


# PubMed 20k is single-label (5 sentence roles); the text bundle's multi_label switch selects softmax,
# cross-entropy and multiclass scores in place of its default sigmoid / binary cross-entropy.
_TEXT_SINGLE_LABEL = {"multi_label": False, "max_train_items": None, "max_eval_items": None}

MEDCOSS = {
    s.name: s
    for s in (
        DownstreamSet("pudmed20k", "finetune_text_cls.json", "text_cls", {"num_classes": 5, "head": "mlp", **_TEXT_SINGLE_LABEL}),
        DownstreamSet("chestxr", "finetune_xray_cls.json", "xray_cls", {"num_classes": 3, "head": "linear"}),
        DownstreamSet("qata_cov19", "finetune_xray_seg.json", "xray_seg", {"num_classes": 2, "mask_values": [0, 255]}, _SEG),
        DownstreamSet("ricord", "finetune_ct_cls.json", "ct_cls", {"num_classes": 2, "head": "mlp"}),
        DownstreamSet("lits", "finetune_ct_seg.json", "ct_seg", {"num_classes": 3, "mask_values": None}, _SEG),
        DownstreamSet("vs", "finetune_mri_seg.json", "mri_seg", {"num_classes": 2, "mask_values": None}, _SEG),
        DownstreamSet("la", "finetune_mri_seg.json", "mri_seg", {"num_classes": 2, "mask_values": None}, _SEG),
        DownstreamSet("nct_crc_he", "finetune_pathology_cls.json", "pathology_cls", {"num_classes": 9, "head": "linear"}),
        # the GlaS converter writes binary 0 / 1 masks
        DownstreamSet("glas", "finetune_pathology_seg.json", "pathology_seg", {"num_classes": 2, "mask_values": [0, 1]}, _SEG),
    )
}
"""MedCoSS: its nine downstream sets (``run_ds.sh``: classes; three seeds per set)."""

_BRAIN_SEG = {"Dice": "mean_dice", "HD95": "hd95"}
_BRATS = ["t1", "t1ce", "t2", "flair"]


def _brain(name: str, contrasts: list[str], dataset: str = "", **task: Any) -> DownstreamSet:
    return DownstreamSet(name, "finetune_brainmvp_seg.json", "brain_seg", {"input_contrasts": contrasts, **task}, _BRAIN_SEG,
                         dataset=dataset)


def _brain_cls(name: str, contrasts: list[str], dataset: str = "") -> DownstreamSet:
    return DownstreamSet(name, "finetune_brainmvp_cls.json", "brain_cls", {"input_contrasts": contrasts, "num_classes": 2},
                         dataset=dataset)


BRAINMVP = {
    s.name: s
    for s in (
        # BraTS 2023 labels: 1 necrosis, 2 oedema, 3 enhancing tumour -> TC / WT / ET regions
        _brain("brats2023_ped", _BRATS, label_mode="brats_regions", brats_et_label=3),
        _brain("brats2023_met", _BRATS, label_mode="brats_regions", brats_et_label=3),
        _brain("upenn_gbm", _BRATS, label_mode="brats_regions", brats_et_label=4),
        _brain("isles22", ["adc", "dwi", "flair"], label_mode="classes", num_classes=2),
        # MRBrainS13: T1, T1-IR and T2-FLAIR in the reference; CSF, grey and white matter
        _brain("mrbrains13", ["t1", "flair"], label_mode="classes", num_classes=4),
        # BrainMVP's VS task reads T2 studies: the vs_brainmvp converter, under the table's name vs
        _brain("vs", ["t2"], dataset="vs_brainmvp", label_mode="classes", num_classes=2),
        # classification: HGG vs LGG on the four BraTS contrasts; autism / ADHD vs control, AD vs CN on the T1
        _brain_cls("brats2018", _BRATS),
        _brain_cls("abide", ["t1"]),
        _brain_cls("adhd200", ["t1"]),
        _brain_cls("adni", ["t1"], dataset="adni_cls"),
    )
}
"""BrainMVP: its segmentation sets (``Downstream/dataset/multimodal_dataset.py``: the contrasts of each) and its four
classification sets (``Fine_tune/classification``)."""


_MUSCLE_CLS = {"ACC": "ACC", "AUC": "AUC"}


def _muscle(
    name: str, bundle: str, task: str, kind: str, num_classes: int, metrics: Mapping[str, str], **spec: Any
) -> DownstreamSet:
    tasks = {task: {"kind": kind, "num_classes": num_classes, **spec, "dataset_dir": DATALIST}}
    return DownstreamSet(name, bundle, task, {"tasks": tasks}, {k: f"{task}#{v}" for k, v in metrics.items()}, data_id="",
                         converter=f"{__name__}:convert_muscle")


MUSCLE = {
    s.name: s
    for s in (
        _muscle("pneumonia", "finetune_muscle_cls.json", "muscle_bodypart_cls", "classification", 2, _MUSCLE_CLS),
        _muscle("mura", "finetune_muscle_cls.json", "muscle_bodypart_cls", "classification", 2, _MUSCLE_CLS),
        _muscle("montgomery", "finetune_muscle_seg.json", "muscle_lung_seg", "segmentation", 2, {"Dice": "dice", "mIoU": "miou"},
                mask_values=[0, 255]),
        _muscle("tbx11k", "finetune_muscle_det.json", "muscle_chest_det", "detection", 3, {"mAP@0.5": "map50"}),
    )
}
"""MUSCLE: its X-ray sets with a fine-tuning task (``medcoss_monai/apps/muscle/xray_layouts.py`` reads them)."""

SUITES: dict[str, dict[str, DownstreamSet]] = {"medcoss": MEDCOSS, "brainmvp": BRAINMVP, "muscle": MUSCLE}
"""Suite name -> its table."""


def _muscle_datalist(name: str, root: Path, cache_dir: Path, seed: int) -> dict[str, Any]:
    """The datalist of a MUSCLE set read by its loader from the publisher's layout."""
    from medcoss_monai.apps.muscle import xray_layouts as x

    if name == "pneumonia":  # Kermany et al.: chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}
        inner = root / "chest_xray"
        return x.pneumonia_datalist(inner if inner.is_dir() else root, seed=seed)
    if name == "mura":
        return x.mura_datalist(root, seed=seed)
    if name == "montgomery":  # CXR_png/ and ManualMask/{leftMask,rightMask}/, merged into one mask each
        return x.lung_mask_datalist(root / "CXR_png", [root / "ManualMask" / "leftMask", root / "ManualMask" / "rightMask"],
                                    merged_dir=cache_dir / "montgomery_masks", dataset=name, seed=seed)
    if name == "tbx11k":
        return x.tbx11k_datalist(root, seed=seed)
    raise KeyError(name)


def convert_muscle(
    name: str, root: str | os.PathLike, out: str | os.PathLike, cache_dir: str | os.PathLike, seed: int = 0, **_: Any
) -> dict[str, Any]:
    """Write the datalist of a MUSCLE set, read from the publisher's layout under ``root``, into ``out``.

    Args:
        name: a key of :data:`MUSCLE`.
        root: the set's folder.
        out: the datalist JSON (written atomically).
        cache_dir: where merged masks go.
        seed: split seed.

    Returns:
        The datalist.
    """
    datalist = _muscle_datalist(name, Path(root).absolute(), Path(cache_dir).absolute(), seed)
    atomic_write_json(datalist, out)
    return datalist
