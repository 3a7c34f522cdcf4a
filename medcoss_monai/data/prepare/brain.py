"""Multi-contrast brain-MRI sets (BrainMVP): BraTS 2021, BraTS 2023 (SSA, MEN, PED, MET), UCSF-PDGM, and the
downstream BraTS 2018 (grade), UPENN-GBM and ISLES 2022.

Layouts as published:

- BraTS 2021: ``BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz`` (the training release
  under ``BraTS2021_Training_Data/``, or the case folders directly);
- BraTS 2023: ``BraTS-<SET>-XXXXX-YYY/BraTS-<SET>-XXXXX-YYY-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (YYY: the time point);
- UCSF-PDGM: ``UCSF-PDGM-XXXX_nifti/UCSF-PDGM-XXXX_{T1,T1c,T2,FLAIR,ADC,DWI,...,tumor_segmentation}.nii.gz``;
- MRBrainS13: ``TrainingData/<n>/{T1,T1_IR,T2_FLAIR,LabelsForTraining,LabelsForTesting}.nii``.

Items are studies as the BrainMVP bundles take them (:mod:`medcoss_monai.apps.brainmvp.studies`):
``{"image": {contrast: file}, "label": seg, "study": case}``. None of these releases has a labelled
test split, so a seeded split by patient (all time points of one patient together) is written and recorded.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medcoss_monai.data.prepare.common import DEFAULT_FRACTIONS, PrepareContext, find_file, seeded_split

__all__ = [
    "BRATS_NAMES", "UCSF_NAMES", "convert_brats2021", "convert_brats2023", "convert_ucsf_pdgm", "convert_brats2018", "convert_upenn_gbm",
    "convert_isles22", "MRBRAINS13_CLASSES", "convert_mrbrains13",
]

BRATS_NAMES = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}
"""BraTS file suffix -> contrast (BraTS 2018-2021 names and the 2023 ones)."""
UCSF_NAMES = {"T1": "t1", "T1c": "t1ce", "T2": "t2", "FLAIR": "flair", "ADC": "adc", "DWI": "dwi"}
"""UCSF-PDGM file suffix -> contrast (its other maps, SWI, DTI, ASL..., are not contrasts of the bundles)."""
_BRATS2023_SETS = {"brats2023_ssa": "SSA", "brats2023_men": "MEN", "brats2023_ped": "PED", "brats2023_met": "MET"}
_NII = re.compile(r"\.nii(\.gz)?$")


def _case_dirs(ctx: PrepareContext, pattern: str, expected: str) -> list[Path]:
    """Case folders matching ``pattern`` at ``--root`` or up to two folders down (release folders)."""
    first = find_file(ctx.root, expected, ctx.title, depth=2)
    base = first.parents[1]
    return sorted(p for p in base.glob(pattern) if p.is_dir())


def _studies(
    ctx: PrepareContext,
    cases: Sequence[Path],
    key_of: Callable[[Path, str], str | None],
    required: Sequence[str],
    patient: Callable[[str], str],
) -> list[dict[str, Any]]:
    """One study per case folder; a case missing a required contrast or holding a duplicate is reported."""
    studies = []
    for case in cases:
        study: dict[str, Any] = {"image": {}, "study": case.name, "group": patient(case.name)}
        problems = []
        for f in sorted(case.iterdir()):
            if not _NII.search(f.name):
                continue
            key = key_of(case, _NII.sub("", f.name))
            if key is None:
                continue
            slot = study if key == "label" else study["image"]
            if key in slot:
                problems.append(f"two files for '{key}'")
            slot[key] = str(f)
        missing = [c for c in required if c not in study["image"]]
        if missing:
            problems.append(f"no {', '.join(missing)} file")
        if problems:
            ctx.bad(case, "; ".join(problems))
        else:
            studies.append(study)
    return studies


def _datalist(ctx: PrepareContext, studies: list[dict[str, Any]], by_class: bool = False) -> dict[str, Any]:
    stratify = (lambda s: s["label"]) if by_class else None  # each split holds each class (classification sets)
    splits, record = seeded_split(studies, DEFAULT_FRACTIONS, ctx.seed, group=lambda s: s["group"], stratify=stratify)
    return {**splits, "split": record}


def convert_brats2021(ctx: PrepareContext) -> dict[str, Any]:
    """BraTS 2021 case folders -> studies with ``t1``, ``t1ce``, ``t2``, ``flair`` (and ``seg`` as label).

    Args:
        ctx: the run's context.

    Returns:
        The datalist of studies, split by case with the seed.
    """
    cases = _case_dirs(ctx, "BraTS2021_*", "BraTS2021_*/BraTS2021_*_t1.nii.gz")

    def key_of(case: Path, stem: str) -> str | None:
        suffix = stem[len(case.name) + 1:].lower() if stem.startswith(case.name + "_") else ""
        return "label" if suffix == "seg" else BRATS_NAMES.get(suffix)

    return _datalist(ctx, _studies(ctx, cases, key_of, ("t1", "t1ce", "t2", "flair"), lambda c: c))


def convert_brats2023(ctx: PrepareContext) -> dict[str, Any]:
    """A BraTS 2023 set (SSA, MEN, PED or MET, by the data set's name) -> studies with the four contrasts.

    Args:
        ctx: the run's context.

    Returns:
        The datalist of studies, split by patient (``BraTS-<SET>-XXXXX``) with the seed.
    """
    tag = _BRATS2023_SETS[ctx.name]
    cases = _case_dirs(ctx, f"BraTS-{tag}-*", f"BraTS-{tag}-*/BraTS-{tag}-*-t1n.nii.gz")

    def key_of(case: Path, stem: str) -> str | None:
        suffix = stem[len(case.name) + 1:].lower() if stem.startswith(case.name + "-") else ""
        return "label" if suffix == "seg" else BRATS_NAMES.get(suffix)

    return _datalist(ctx, _studies(ctx, cases, key_of, ("t1", "t1ce", "t2", "flair"), lambda c: c.rsplit("-", 1)[0]))


def convert_ucsf_pdgm(ctx: PrepareContext) -> dict[str, Any]:
    """UCSF-PDGM ``*_nifti`` folders -> studies with T1, T1c, T2, FLAIR (required), ADC and DWI when present.

    Args:
        ctx: the run's context.

    Returns:
        The datalist of studies (``tumor_segmentation`` as label), split by patient with the seed.
    """
    cases = _case_dirs(ctx, "UCSF-PDGM-*_nifti", "UCSF-PDGM-*_nifti/UCSF-PDGM-*_T1.nii.gz")

    def key_of(case: Path, stem: str) -> str | None:
        prefix = case.name[: -len("_nifti")] + "_"
        suffix = stem[len(prefix):] if stem.startswith(prefix) else ""
        return "label" if suffix == "tumor_segmentation" else UCSF_NAMES.get(suffix)

    return _datalist(ctx, _studies(ctx, cases, key_of, ("t1", "t1ce", "t2", "flair"), lambda c: c[: -len("_nifti")]))


def convert_brats2018(ctx: PrepareContext) -> dict[str, Any]:
    """BraTS 2018 training data -> studies labelled by grade (HGG 1, LGG 0), the tumour mask under ``seg``.

    Layout: ``MICCAI_BraTS_2018_Data_Training/{HGG,LGG}/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``.

    Args:
        ctx: the run's context.

    Returns:
        The datalist with ``classes`` (``["LGG", "HGG"]``), split by case with the seed, per grade.
    """
    first = find_file(ctx.root, ["HGG/*/*_t1.nii.gz", "LGG/*/*_t1.nii.gz"], ctx.title, depth=2)
    base = first.parents[2]

    def key_of(case: Path, stem: str) -> str | None:
        suffix = stem[len(case.name) + 1:].lower() if stem.startswith(case.name + "_") else ""
        return "label" if suffix == "seg" else BRATS_NAMES.get(suffix)

    studies = []
    for grade, label in (("LGG", 0), ("HGG", 1)):
        cases = sorted(p for p in (base / grade).glob("*") if p.is_dir())
        for study in _studies(ctx, cases, key_of, ("t1", "t1ce", "t2", "flair"), lambda c: c):
            seg = study.pop("label", None)
            studies.append({**study, "label": label, **({"seg": seg} if seg else {})})
    return {"classes": ["LGG", "HGG"], **_datalist(ctx, studies, by_class=True)}


def convert_upenn_gbm(ctx: PrepareContext) -> dict[str, Any]:
    """UPENN-GBM NIfTI release -> studies with T1, T1GD, T2, FLAIR and the manual (else automated) segmentation.

    Layout: ``NIfTI-files/images_structural/UPENN-GBM-XXXXX_11/UPENN-GBM-XXXXX_11_{T1,T1GD,T2,FLAIR}.nii.gz``,
    ``NIfTI-files/images_segm/UPENN-GBM-XXXXX_11_segm.nii.gz`` and
    ``NIfTI-files/automated_segm/UPENN-GBM-XXXXX_11_automated_approx_segm.nii.gz``.

    Args:
        ctx: the run's context.

    Returns:
        The datalist of studies (``segmentation_source``: ``manual`` or ``automated``), split by patient with the seed.
    """
    structural = find_file(ctx.root, "images_structural", ctx.title, depth=2)
    names = {"T1": "t1", "T1GD": "t1ce", "T2": "t2", "FLAIR": "flair"}

    def key_of(case: Path, stem: str) -> str | None:
        return names.get(stem[len(case.name) + 1:]) if stem.startswith(case.name + "_") else None

    cases = sorted(p for p in structural.glob("UPENN-GBM-*") if p.is_dir())
    studies = _studies(ctx, cases, key_of, tuple(names.values()), lambda c: c.rsplit("_", 1)[0])
    for study in studies:
        manual = structural.parent / "images_segm" / f"{study['study']}_segm.nii.gz"
        automated = structural.parent / "automated_segm" / f"{study['study']}_automated_approx_segm.nii.gz"
        seg = next((p for p in (manual, automated) if p.is_file()), None)
        if seg is not None:
            study.update(label=str(seg), segmentation_source="manual" if seg == manual else "automated")
    return _datalist(ctx, studies)


def convert_isles22(ctx: PrepareContext) -> dict[str, Any]:
    """ISLES 2022 (BIDS) -> studies with ADC, DWI and FLAIR and the lesion mask.

    Layout: ``rawdata/sub-strokecaseXXXX/ses-0001/dwi/<case>_ses-0001_{adc,dwi}.nii.gz``,
    ``.../anat/<case>_ses-0001_FLAIR.nii.gz`` and ``derivatives/<case>/ses-0001/<case>_ses-0001_msk.nii.gz``.
    The FLAIR is not registered to the DWI space in the release; the bundles' resampling reads each by its
    own affine.

    Args:
        ctx: the run's context (``--root`` holds ``rawdata/`` and ``derivatives/``).

    Returns:
        The datalist of studies, split by case with the seed.
    """
    rawdata = find_file(ctx.root, "rawdata", ctx.title)
    derivatives = find_file(rawdata.parent, "derivatives", ctx.title, depth=0)
    names = {"adc": "adc", "dwi": "dwi", "FLAIR": "flair"}
    studies = []
    for session in sorted(p for p in rawdata.glob("sub-*/ses-*") if p.is_dir()):
        prefix = f"{session.parent.name}_{session.name}_"
        study: dict[str, Any] = {"image": {}, "study": prefix[:-1], "group": session.parent.name}
        for f in sorted(session.glob("*/*.nii.gz")):
            suffix = f.name[len(prefix):-len(".nii.gz")] if f.name.startswith(prefix) else ""
            if suffix in names:
                study["image"][names[suffix]] = str(f)
        mask = derivatives / session.parent.name / session.name / f"{prefix}msk.nii.gz"
        missing = [c for c in names.values() if c not in study["image"]] + ([] if mask.is_file() else ["msk"])
        if missing:
            ctx.bad(session, f"no {', '.join(missing)} file")
            continue
        studies.append({**study, "label": str(mask)})
    return _datalist(ctx, studies)


MRBRAINS13_CLASSES = ["background", "cerebrospinal fluid", "grey matter", "white matter"]
"""The classes of MRBrainS13's ``LabelsForTesting.nii``, the three tissues the challenge evaluates."""
MRBRAINS13_FRACTIONS = {"validation": 0.2, "test": 0.2}
"""Only five subjects are labelled: one validates, one tests (a tenth would round to none)."""


def convert_mrbrains13(ctx: PrepareContext) -> dict[str, Any]:
    """MRBrainS13 training subjects -> studies with T1 and T2-FLAIR and the three-tissue labels.

    Layout: ``TrainingData/<n>/{T1,T1_IR,T2_FLAIR}.nii`` with ``LabelsForTesting.nii`` (0 background,
    1 CSF, 2 grey matter, 3 white matter: what the challenge scores) and ``LabelsForTraining.nii`` (its
    eight finer structures, kept under ``structures``). The contrasts are registered to the T2-FLAIR
    grid in the release. T1-IR is kept under ``t1ir`` (not a contrast of the bundles). The test
    subjects' labels were never released, so only the five training subjects are items.

    Args:
        ctx: the run's context (``--root``: the release folder or its ``TrainingData/``).

    Returns:
        The datalist with ``classes``, split by subject with the seed (3 / 1 / 1).
    """
    first = find_file(ctx.root, "*/LabelsForTesting.nii", ctx.title, depth=2)
    # extra keys must not start with "<contrast>_" or "label_": MONAI's Spacingd takes those for meta data
    names = {"T1": "t1", "T2_FLAIR": "flair", "T1_IR": "t1ir", "LabelsForTesting": "label",
             "LabelsForTraining": "structures"}
    studies = []
    for subject in sorted((p for p in first.parents[1].iterdir() if p.is_dir()), key=lambda p: (len(p.name), p.name)):
        files = {names[f.name[:-4]]: str(f) for f in subject.glob("*.nii") if f.name[:-4] in names}
        missing = [n for n, key in names.items() if key in ("t1", "flair", "label") and key not in files]
        if missing:
            ctx.bad(subject, f"no {', '.join(n + '.nii' for n in missing)}")
            continue
        study = {"image": {"t1": files.pop("t1"), "flair": files.pop("flair")}, "label": files.pop("label"),
                 "study": f"mrbrains13_{subject.name}", "group": subject.name, **files}
        studies.append(study)
    splits, record = seeded_split(studies, MRBRAINS13_FRACTIONS, ctx.seed, group=lambda s: s["group"])
    record["reference"] = "none published: BrainMVP's split of the five labelled subjects is not in its repository"
    return {"classes": MRBRAINS13_CLASSES, **splits, "split": record}
