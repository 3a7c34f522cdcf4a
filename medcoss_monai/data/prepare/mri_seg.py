"""The MedCoSS MRI segmentation sets: Vestibular-Schwannoma-SEG (TCIA DICOM + RTSTRUCT) and the Left Atrium
set in UA-MT's h5 layout. Both write NIfTI volumes into ``--cache_dir``.

Vestibular-Schwannoma-SEG, as TCIA's downloader writes it (descriptive folder names)::

    Vestibular-Schwannoma-SEG/VS-SEG-NNN/<study folder>/<series folder>/*.dcm

Each case holds a contrast-enhanced T1 series (description containing ``t1_``), a T2 series (``t2_``), one
RTSTRUCT per image series (it names the series it was drawn on) and RT plans and doses, which are ignored
(facts of KCL-BMEIS/VS_Seg, the collection's authors). The reference (MedCoSS, through UniSeg's
conversion) segments the tumour on the T1 image; its split is ``vs_split.txt`` beside this module.

Left Atrium (2018 Atrial Segmentation Challenge) as UA-MT (yulequan/UA-MT ``data/``) distributes it, which
is how the MedCoSS reference reads it::

    2018LA_Seg_Training Set/<case>/mri_norm2.h5   (datasets ``image``: float, ``label``: 0 / 1, axes x, y, z)
    train.list, test.list                         (80 and 20 case names)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from medcoss_monai.data.prepare.common import PrepareContext, cached_map, find_file, save_nifti_atomic, seeded_split
from medcoss_monai.errors import BadInputError

__all__ = ["VS_SPLIT_FILE", "vs_reference_split", "vs_case_name", "convert_vs", "convert_vs_brainmvp",
           "LA_SPACING_MM",
           "h5_to_nifti", "convert_la"]

VS_SPLIT_FILE = Path(__file__).with_name("vs_split.txt")
"""The reference's VS split, one case a line: ``<train|val> vs_gk_<N>`` (``#`` comments)."""
_VS_CASE = re.compile(r"^VS-SEG-(\d+)$")
LA_SPACING_MM = 0.625
"""The 2018 LA challenge's isotropic voxel size; UA-MT's h5 files keep no geometry."""
VALIDATION_SHARE = {"validation": 0.1}
"""The references train on all their training cases; a seeded tenth of them validates here (best-model choice)."""


def vs_reference_split() -> dict[str, str]:
    """``case name -> "train" | "val"`` of the reference's split."""
    out = {}
    for line in VS_SPLIT_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            split, case = line.split()
            out[case] = split
    return out


def vs_case_name(folder: str) -> str | None:
    """The reference's name of a TCIA case folder (``VS-SEG-001`` -> ``vs_gk_1``), None for other folders."""
    m = _VS_CASE.match(folder)
    return f"vs_gk_{int(m.group(1))}" if m else None


def _vs_series(case: Path) -> tuple[dict[str, tuple[Path, str]], list[tuple[Path, Any]], list[str]]:
    """The MR series of a case by contrast (``t1`` / ``t2`` -> (folder, SeriesInstanceUID)), its RTSTRUCTs
    (file, dataset) and the problems found."""
    import pydicom

    images: dict[str, tuple[Path, str]] = {}
    structures, problems = [], []
    for series in sorted(p for p in case.glob("*/*") if p.is_dir()):
        files = sorted(f for f in series.iterdir() if f.is_file() and not f.name.startswith("."))
        if not files:
            continue
        try:
            ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is a problem of the case, listed with the others
            problems.append(f"{files[0]}: not readable as DICOM ({e.__class__.__name__})")
            continue
        modality = str(getattr(ds, "Modality", ""))
        if modality == "RTSTRUCT":
            structures.append((files[0], ds))
        elif modality == "MR":
            description = str(getattr(ds, "SeriesDescription", "")).lower()
            contrast = "t1" if "t1_" in description else "t2" if "t2_" in description else None
            if contrast is None:
                continue
            if contrast in images:
                problems.append(f"two {contrast.upper()} series ({images[contrast][0].name}, {series.name})")
            images[contrast] = (series, str(ds.SeriesInstanceUID))
    return images, structures, problems


def convert_vs(ctx: PrepareContext) -> dict[str, Any]:
    """Vestibular-Schwannoma-SEG -> T1 volumes with their tumour masks (and T2 with its own, when present).

    Items: ``{"image": T1, "label": T1 mask, "t2": T2, "mask_t2": T2 mask, "case": "vs_gk_N",
    "group": "vs:VS-SEG-NNN", "structure": ROI name}``, volumes and masks in
    ``<cache_dir>/VS_nii/<case>_{t1,seg_t1,t2,seg_t2}.nii.gz``. The reference's ``val`` cases test; a
    seeded tenth of its ``train`` cases validates.

    Args:
        ctx: the run's context (``--root``: the folder holding the ``VS-SEG-NNN`` case folders, or above it).

    Returns:
        The datalist with ``classes``; cases outside the reference's lists are counted under ``filtered``,
        listed cases absent from the download under ``missing``.
    """
    from medcoss_monai.data.prepare.rtstruct import pick_roi, referenced_series_uid, series_and_mask_to_nifti

    first = find_file(ctx.root, "VS-SEG-*", ctx.title, depth=2)
    cases = sorted((p for p in first.parent.glob("VS-SEG-*") if p.is_dir() and vs_case_name(p.name)),
                   key=lambda p: int(p.name.rsplit("-", 1)[1]))
    wanted = vs_reference_split()
    out_dir = ctx.cache() / "VS_nii"
    jobs, pending, unlisted, found = [], [], 0, set()
    for case in cases:
        name = vs_case_name(case.name)
        if name not in wanted:
            unlisted += 1
            continue
        found.add(name)
        images, structures, problems = _vs_series(case)
        by_series = {referenced_series_uid(ds): (f, ds) for f, ds in structures}
        item: dict[str, Any] = {"case": name, "group": f"vs:{case.name}"}
        case_jobs, outs = [], []
        for contrast in ("t1", "t2"):
            if contrast not in images:
                if contrast == "t1":
                    problems.append("no T1 MR series (SeriesDescription with 't1_')")
                continue
            series, uid = images[contrast]
            if uid not in by_series:
                if contrast == "t1":
                    problems.append(f"no RTSTRUCT drawn on the T1 series {series.name}")
                continue
            rt_file, rt = by_series[uid]
            roi = pick_roi(rt)
            if roi is None:
                problems.append(f"{rt_file}: the structure set holds no contour")
                continue
            image_out, mask_out = out_dir / f"{name}_{contrast}.nii.gz", out_dir / f"{name}_seg_{contrast}.nii.gz"
            case_jobs.append(((str(series), str(rt_file), roi[0], str(image_out)), mask_out))
            outs.append((mask_out, case))
            # extra keys must not start with "label_" or "image_": MONAI's Spacingd takes those for meta data
            keys = ("image", "label") if contrast == "t1" else ("t2", "mask_t2")
            item.update({keys[0]: str(image_out), keys[1]: str(mask_out)})
            if contrast == "t1":
                item["structure"] = roi[1]
        if problems:
            ctx.bad(case, "; ".join(problems))
            continue
        jobs += case_jobs
        pending.append((wanted[name], item, outs))
    failures, _ = cached_map(series_and_mask_to_nifti, jobs, ctx.workers, desc="VS cases", progress=ctx.progress)
    train, test = [], []
    for split, item, outs in pending:
        failed = [(case, failures[mask]) for mask, case in outs if mask in failures]
        if failed:
            ctx.bad(failed[0][0], "; ".join(reason for _, reason in failed))
            continue
        (train if split == "train" else test).append(item)
    splits, record = seeded_split(train, VALIDATION_SHARE, ctx.seed, group=lambda it: it["group"])
    return {
        "classes": ["background", "vestibular schwannoma"],
        "training": splits["training"], "validation": splits["validation"], "test": test,
        "split": {"reference": "yeerwen/UniSeg Downstream/splits_final_VS.pkl (val -> test)", "validation": record},
        "filtered": {"cases not in the reference split": unlisted},
        "missing": sorted(set(wanted) - found, key=lambda n: int(n.rsplit("_", 1)[1])),
    }


def convert_vs_brainmvp(ctx: PrepareContext) -> dict[str, Any]:
    """Vestibular-Schwannoma-SEG as BrainMVP fine-tunes on it: T2 studies with the T2-grid tumour mask.

    The same conversion and split as :func:`convert_vs` (the files are shared in the cache); each item
    becomes ``{"image": {"t2": T2}, "label": T2 mask, "study": case, "group"}`` (BrainMVP's ``vsseg`` input
    is the T2 alone). Cases without a T2 series and its structure set are counted under ``filtered``.

    Args:
        ctx: the run's context, as for :func:`convert_vs`.

    Returns:
        The datalist of studies.
    """
    data = convert_vs(ctx)
    no_t2 = 0
    for split in ("training", "validation", "test"):
        studies = []
        for item in data[split]:
            if "t2" not in item:
                no_t2 += 1
                continue
            studies.append({"image": {"t2": item["t2"]}, "label": item["mask_t2"], "study": item["case"],
                            "group": item["group"], "structure": item["structure"]})
        data[split] = studies
    data["filtered"]["cases without a T2 series and its RTSTRUCT"] = no_t2
    return data


def h5_to_nifti(h5_file: str, image_out: str, label_out: Path) -> None:
    """Write the ``image`` and ``label`` datasets of a UA-MT ``mri_norm2.h5`` as NIfTI (label last).

    Raises:
        ValueError: a dataset is missing, or the two differ in shape, or the label is not 0 / 1.
    """
    import h5py

    with h5py.File(h5_file, "r") as f:
        missing = [k for k in ("image", "label") if k not in f]
        if missing:
            raise ValueError(f"no '{', '.join(missing)}' dataset (holds {sorted(f)})")
        image, label = np.asarray(f["image"], dtype=np.float32), np.asarray(f["label"])
    if image.ndim != 3 or image.shape != label.shape:
        raise ValueError(f"image {image.shape} and label {label.shape} are not one 3-D grid")
    values = np.unique(label)
    if not set(values.tolist()) <= {0, 1}:
        raise ValueError(f"label values {values[:8].tolist()} are not 0 / 1")
    affine = np.diag([LA_SPACING_MM] * 3 + [1.0])
    save_nifti_atomic(image, affine, image_out)
    save_nifti_atomic(label.astype(np.uint8), affine, label_out)


def _read_list(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def convert_la(ctx: PrepareContext) -> dict[str, Any]:
    """UA-MT's Left Atrium h5 files -> NIfTI image / label pairs with UA-MT's train / test lists.

    Items ``{"image", "label", "case"}`` in ``<cache_dir>/LA_nii/<case>_{image,label}.nii.gz`` (voxels
    :data:`LA_SPACING_MM` mm). ``test.list`` tests; a seeded tenth of ``train.list`` validates.

    Args:
        ctx: the run's context (``--root``: UA-MT's ``data/`` folder, holding ``2018LA_Seg_Training Set/``
            and the two lists).

    Returns:
        The datalist with ``classes``; listed cases without their h5 file are under ``missing``.
    """
    folder = find_file(ctx.root, "2018LA_Seg_Training Set", ctx.title)
    lists = {}
    for split, name in (("train", "train.list"), ("test", "test.list")):
        path = folder.parent / name
        if not path.is_file():
            raise BadInputError(f"{path} not found: UA-MT's data/ folder holds {name} beside '{folder.name}' "
                                f"(the reference's split); put it there.")
        lists[split] = _read_list(path)
    out_dir = ctx.cache() / "LA_nii"
    jobs, items, missing = [], {}, []
    for split, cases in lists.items():
        for case in cases:
            h5 = folder / case / "mri_norm2.h5"
            if not h5.is_file():
                missing.append(case)
                continue
            image_out, label_out = out_dir / f"{case}_image.nii.gz", out_dir / f"{case}_label.nii.gz"
            jobs.append(((str(h5), str(image_out)), label_out))
            items[label_out] = (split, {"image": str(image_out), "label": str(label_out), "case": case}, h5)
    failures, _ = cached_map(h5_to_nifti, jobs, ctx.workers, desc="LA cases", progress=ctx.progress)
    train, test = [], []
    for label_out, (split, item, h5) in items.items():
        if label_out in failures:
            ctx.bad(h5, failures[label_out])
        else:
            (train if split == "train" else test).append(item)
    splits, record = seeded_split(train, VALIDATION_SHARE, ctx.seed)
    return {
        "classes": ["background", "left atrium"],
        "training": splits["training"], "validation": splits["validation"], "test": test,
        "split": {"reference": "yulequan/UA-MT data/train.list + test.list", "validation": record},
        "spacing_mm": [LA_SPACING_MM] * 3,
        "missing": missing,
    }

