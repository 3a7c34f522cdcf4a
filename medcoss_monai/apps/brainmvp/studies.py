"""Datalists of multi-contrast brain-MRI studies (BrainMVP): converters, checks and the sample studies.

A study is one datalist item whose ``image`` maps contrast names to co-registered files::

    {"image": {"t1": "case1/t1.nii.gz", "t2": "case1/t2.nii.gz"}, "label": "case1/seg.nii.gz", "study": "case1"}

Users' layouts are converted by :func:`brats_studies` (``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``,
and the BraTS 2023 names ``t1n/t1c/t2w/t2f``) and :func:`folder_studies` (one folder per study, one
file per contrast named after it). :func:`study_datalist` is what the bundles call.

The sample studies are the MRI stage's **training** files, one contrast each, and the MRI
datalist's ``studies``: one real two-contrast study, the b=0 (``t2``) and b=1500 (``dwi``) volumes of
one diffusion series (:data:`medcoss_monai.samples.sample_data.STUDIES`). The ICBM 2009c T1 + T2 are held
out: they are only cut into the fine-tuning task of :func:`icbm_slab_task`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcoss_monai.apps.brainmvp.multicontrast import CONTRASTS  # the contrast names, defined once
from medcoss_monai.errors import BadInputError
from medcoss_monai.utils import atomic_write_json
from medcoss_monai.data.prepare.brain import BRATS_NAMES  # the BraTS releases' file naming, a fact of the data

__all__ = [
    "CONTRASTS",
    "BRATS_NAMES",
    "SAMPLE_CONTRASTS",
    "brats_studies",
    "folder_studies",
    "check_studies",
    "sample_studies",
    "study_datalist",
    "SLAB_SPLITS",
    "icbm_slab_task",
    "sample_task_datalist",
]

LABEL_NAMES = ("seg", "label", "mask")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nii.bz2")
SAMPLE_CONTRASTS = {
    "brain1_image.nrrd": "t1ce",  # pyradiomics: contrast-enhanced T1 with a tumour
    "brain2_image.nrrd": "t1ce",
    "mean_reg2mean.nii.gz": "t1",  # pydeface: mean T1 head
    "ch2.nii.gz": "t1",  # Colin27 T1
    "KmeansTest_T1UCharRaw.nii.gz": "t1",  # ITK example T1 head
}
"""Training files of the MRI sample datalist and their contrast; the EPI volume is left out (not one of
:data:`CONTRASTS`)."""


def _strip_suffix(name: str) -> str | None:
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def _studies_of_folders(
    root: str | os.PathLike, layout_name: str, key_of: Callable[[Path, Path], tuple[str | None, str]]
) -> list[dict[str, Any]]:
    """One study per sub-folder of ``root``, each file placed by ``key_of``; every problem listed together.

    Args:
        root: the folder holding one sub-folder per study.
        layout_name: the layout's name, for the error message.
        key_of: ``(study folder, file) -> (key, problem)``: ``"label"``, a contrast, or None with the problem.

    Returns:
        One study per sub-folder, sorted by name.

    Raises:
        BadInputError: a file ``key_of`` does not place, or a study without a contrast.
    """
    root = Path(root)
    studies, problems = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        study: dict[str, Any] = {"image": {}, "study": folder.name}
        for f in sorted(folder.iterdir()):
            key, problem = key_of(folder, f)
            if key is None:
                problems.append(f"{f}: {problem}")
            elif key == "label":
                study["label"] = str(f)
            else:
                study["image"][key] = str(f)
        if not study["image"]:
            problems.append(f"{folder}: no contrast file")
        studies.append(study)
    if problems:
        raise BadInputError(f"{root} is not a {layout_name} layout:\n" + "\n".join(f"  {p}" for p in problems))
    return studies


def brats_studies(root: str | os.PathLike) -> list[dict[str, Any]]:
    """Studies of a BraTS folder: ``<root>/<case>/<case>_<contrast>.nii.gz`` and ``<case>_seg.nii.gz``.

    Args:
        root: the folder holding one sub-folder per case.

    Returns:
        One study per case, sorted by case name.

    Raises:
        BadInputError: a case folder has a file of an unknown name, or no contrast at all.
    """

    def key_of(case: Path, f: Path) -> tuple[str | None, str]:
        stem = _strip_suffix(f.name)
        if stem is None or not stem.startswith(case.name):
            return None, f"not a '{case.name}_<contrast>' image file"
        suffix = stem[len(case.name):].lstrip("_-").lower()
        if suffix in LABEL_NAMES:
            return "label", ""
        if suffix in BRATS_NAMES:
            return BRATS_NAMES[suffix], ""
        return None, f"unknown BraTS suffix '{suffix}' (known: {sorted(BRATS_NAMES)} and {list(LABEL_NAMES)})"

    return _studies_of_folders(root, "BraTS", key_of)


def folder_studies(root: str | os.PathLike, contrasts: Sequence[str] = CONTRASTS) -> list[dict[str, Any]]:
    """Studies of a folder-per-study layout: ``<root>/<study>/<contrast>.nii.gz`` (+ ``seg``/``label``).

    Args:
        root: the folder holding one sub-folder per study.
        contrasts: the contrast names files may have.

    Returns:
        One study per sub-folder, sorted.

    Raises:
        BadInputError: a file is named after no contrast, or a study has no contrast.
    """

    def key_of(folder: Path, f: Path) -> tuple[str | None, str]:
        stem = (_strip_suffix(f.name) or "").lower()
        if stem in LABEL_NAMES:
            return "label", ""
        if stem in contrasts:
            return stem, ""
        return None, f"name it after its contrast ({list(contrasts)}) or {list(LABEL_NAMES)}"

    return _studies_of_folders(root, "folder-per-study", key_of)


def check_studies(studies: Sequence[Mapping[str, Any]], where: str, contrasts: Sequence[str] = CONTRASTS) -> list[dict[str, Any]]:
    """Refuse, before training, studies with unknown contrasts or missing files (all problems listed).

    Args:
        studies: the items.
        where: the datalist they come from, for the message.
        contrasts: allowed contrast names.

    Returns:
        The items as plain dicts.
    """
    problems = []
    for k, s in enumerate(studies):
        name = s.get("study", f"item {k}")
        image = s.get("image")
        if not isinstance(image, Mapping) or not image:
            problems.append(f"{name}: 'image' must map contrast names to files, got {image!r}")
            continue
        problems += [f"{name}: unknown contrast '{c}' (known: {list(contrasts)})" for c in image if c not in contrasts]
        # a label map is a file; a classification study's label is a class index
        files = list(image.values()) + ([s["label"]] if isinstance(s.get("label"), str) and s["label"] else [])
        problems += [f"{name}: {f} does not exist" for f in files if not os.path.exists(f)]
    if problems:
        raise BadInputError(f"{where}: {len(problems)} problem(s):\n" + "\n".join(f"  {p}" for p in problems))
    return [dict(s) for s in studies]


def sample_studies() -> dict[str, list[dict[str, Any]]]:
    """The sample studies: the MRI stage's training files (one contrast each) and the multi-contrast
    ``studies`` of the MRI datalist; nothing held out enters.

    Returns:
        ``{"training": [...], "validation": [], "test": []}``.
    """
    from medcoss_monai.samples.sample_data import load_datalist

    mri = load_datalist("mri")
    held = {it["group"] for key in ("validation", "test") for it in mri[key]}
    training = [
        {"image": {SAMPLE_CONTRASTS[Path(it["image"]).name]: it["image"]}, "study": it["group"]}
        for it in mri["training"]
        if Path(it["image"]).name in SAMPLE_CONTRASTS and it["group"] not in held
    ]
    training += [{"image": dict(s["image"]), "study": s["study"]} for s in mri.get("studies", []) if s["group"] not in held]
    return {"training": training, "validation": [], "test": []}


def _absolute(study: Mapping[str, Any], base: Path) -> dict[str, Any]:
    out = dict(study)
    image = study.get("image")
    if isinstance(image, Mapping):
        out["image"] = {c: str(base / p) if not os.path.isabs(p) else p for c, p in image.items()}
    if isinstance(study.get("label"), str) and not os.path.isabs(study["label"]):
        out["label"] = str(base / study["label"])
    return out


def study_datalist(
    dataset_dir: str | os.PathLike | None, key: str = "training", contrasts: Sequence[str] = CONTRASTS
) -> list[dict[str, Any]]:
    """The studies a bundle trains or tests on, checked.

    Args:
        dataset_dir: empty for the sample studies; a JSON datalist (relative paths are relative to it);
            a BraTS folder; or a folder-per-study folder (every study is ``training``).
        key: datalist section.
        contrasts: allowed contrast names.

    Returns:
        The studies.
    """
    if not dataset_dir:
        return check_studies(sample_studies()[key], "sample studies", contrasts)
    path = Path(dataset_dir).expanduser()
    if path.is_file():
        try:
            with open(path, encoding="utf-8") as f:
                items = json.load(f).get(key, [])
        except (OSError, ValueError, AttributeError) as e:
            raise BadInputError(f"{path}: not a readable datalist JSON with a '{key}' list ({e})") from e
        return check_studies([_absolute(s, path.parent) for s in items], str(path), contrasts)
    if not path.is_dir():
        raise BadInputError(f"--dataset_dir {path} does not exist: give a study datalist JSON, a BraTS folder or a folder per study.")
    if key != "training":
        return []
    cases = [p for p in path.iterdir() if p.is_dir()]
    # BraTS names every file after its case: <case>_t1.nii.gz (2018-2021) or <case>-t1n.nii.gz (2023)
    is_brats = cases and all(any(f.name.startswith((c.name + "_", c.name + "-")) for f in c.iterdir()) for c in cases)
    studies = brats_studies(path) if is_brats else folder_studies(path, contrasts)
    return check_studies(studies, str(path), contrasts)


SLAB_MM, GAP_MM = 24.0, 8.0
"""Thickness of the slabs of the sample task and the gap dropped between them (mm)."""
SLAB_SPLITS = ("training", "test", "training", "validation", "test")
"""The split of each axial slab of :func:`icbm_slab_task`, inferior to superior (repeated if there are more)."""


def icbm_slab_task(
    out: str | os.PathLike, slab_mm: float = SLAB_MM, gap_mm: float = GAP_MM, splits: Sequence[str] = SLAB_SPLITS
) -> dict[str, Any]:
    """The held-out ICBM 2009c T1 + T2 cut into axial slabs with grouped CerebrA labels.

    Slabs follow each other along the inferior-superior axis, inside the brain mask's extent, with
    ``gap_mm`` dropped between neighbours so no voxel is shared and no two slabs of different
    splits touch. Slab ``k`` goes to ``splits[k % len(splits)]``: with the defaults the brain holds
    five 24 mm slabs, two to train, one to validate (best-model selection), two to test. Labels are the
    groups of :data:`medcoss_monai.samples.sample_tasks.CEREBRA_GROUPS` (1..4, 0 background).

    Args:
        out: folder the slabs are written to (``slab<k>_{t1,t2,seg}.nii.gz``).
        slab_mm: slab thickness.
        gap_mm: gap between slabs.
        splits: the split of each slab, in order.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...], "classes": [...], "cut": {...}}``:
        studies with ``t1`` and ``t2`` (flagged ``registered``: in the templates' MNI space), the class
        names and how the volume was cut.
    """
    import nibabel as nib

    from medcoss_monai.samples.sample_tasks import CEREBRA_GROUPS, _cerebra_ids, _group_labels
    from medcoss_monai.samples.sample_data import load_datalist

    item = next(it for it in load_datalist("mri")["test"] if it.get("t2") and it.get("regions"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = {c: nib.as_closest_canonical(nib.load(item[k])) for c, k in (("t1", "image"), ("t2", "t2"))}
    regions = nib.as_closest_canonical(nib.load(item["regions"]))
    mask = np.asarray(nib.as_closest_canonical(nib.load(item["mask"])).dataobj) > 0
    labels = _group_labels(np.rint(np.asarray(regions.dataobj)).astype(np.int32), _cerebra_ids())
    affine = images["t1"].affine
    dz = float(abs(affine[2, 2]))
    zs = np.nonzero(mask.any(axis=(0, 1)))[0]
    thick, gap = int(round(slab_mm / dz)), int(round(gap_mm / dz))
    task: dict[str, Any] = {"training": [], "validation": [], "test": []}
    for k, z0 in enumerate(range(int(zs.min()), int(zs.max()) + 1 - thick + 1, thick + gap)):
        window = slice(z0, z0 + thick)
        shifted = affine.copy()
        shifted[:3, 3] = affine[:3, :3] @ np.array([0, 0, z0]) + affine[:3, 3]
        files = {}
        for name, data in [(c, np.asarray(img.dataobj, dtype=np.float32)) for c, img in images.items()] + [("seg", labels)]:
            path = out / f"slab{k}_{name}.nii.gz"
            nib.save(nib.Nifti1Image(data[:, :, window].astype(np.uint8 if name == "seg" else np.float32), shifted), str(path))
            files[name] = str(path)
        # in MNI space, as the templates: read where they lie, never centred (CentreOnPointd)
        study = {"image": {"t1": files["t1"], "t2": files["t2"]}, "label": files["seg"], "study": f"icbm2009c_slab{k}",
                 "registered": True}
        task[splits[k % len(splits)]].append(study)
    task["classes"] = ["background", *CEREBRA_GROUPS]
    task["cut"] = _slab_cut(slab_mm, gap_mm, splits)
    atomic_write_json(task, out / "datalist.json", indent=1)  # a reader never sees half a datalist
    return task


def _slab_cut(slab_mm: float, gap_mm: float, splits: Sequence[str]) -> dict[str, Any]:
    return {"slab_mm": float(slab_mm), "gap_mm": float(gap_mm), "splits": list(splits), "registered": True}


SLAB_TASK = "brainmvp_seg"


def sample_task_datalist() -> str:
    """The datalist of the sample fine-tuning task (:func:`icbm_slab_task`), written on first use.

    A datalist written by an earlier cut of the volume (other slabs, no validation split) is rewritten.

    Returns:
        Path of ``<sample dir>/tasks/brainmvp_seg/datalist.json``.
    """
    from medcoss_monai.samples.sample_data import sample_dir

    folder = sample_dir() / "tasks" / SLAB_TASK
    path = folder / "datalist.json"
    try:
        current = json.loads(path.read_text(encoding="utf-8")).get("cut")
    except (OSError, ValueError, AttributeError):
        current = None
    if current != _slab_cut(SLAB_MM, GAP_MM, SLAB_SPLITS):
        icbm_slab_task(folder)
    return str(path)
