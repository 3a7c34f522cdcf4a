"""X-ray loading: DICOM (through MONAI's ``PydicomReader``) and PNG/JPEG (``PILReader``) to one gray channel in [0, 1].

A chain for pre-training then repeats the channel with MONAI's ``RepeatChanneld(repeats=3)``.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import ImageReader, MetaTensor, PILReader, PydicomReader
from monai.transforms import EnsureChannelFirst, MapTransform, Transform
from monai.utils import optional_import

pydicom, has_pydicom = optional_import("pydicom")

__all__ = ["LoadXRay", "LoadXRayd", "DICOM_SUFFIXES"]

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
"""File suffixes read as DICOM; files without a suffix are read as DICOM when they carry the DICM preamble."""

_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")  # DICOM tag keys that PydicomReader puts in the metadata
# luma weights (ITU-R BT.601, as PIL's "L" mode) for x-rays stored as colour images
_LUMA = (0.299, 0.587, 0.114)
# full-scale value and bit depth per PIL mode; 32-bit integer "I" images are 16-bit PNGs in practice
_PIL_FULL_SCALE = {
    "1": (1.0, 1),
    "L": (255.0, 8),
    "LA": (255.0, 8),
    "RGB": (255.0, 8),
    "RGBA": (255.0, 8),
    "I;16": (65535.0, 16),
    "I;16B": (65535.0, 16),
    "I;16L": (65535.0, 16),
    "I": (65535.0, 16),
    "F": (1.0, 32),
}


def _tag_value(meta: Mapping, tag: str, default: Any = None) -> Any:
    """First value of a DICOM tag in PydicomReader's JSON-style metadata."""
    entry = meta.get(tag)
    if isinstance(entry, Mapping) and entry.get("Value"):
        return entry["Value"][0]
    return default


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix == "" and path.is_file():
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    return False


class LoadXRay(Transform):
    """Load a 2D radiograph as a channel-first float32 ``MetaTensor`` (1, H, W) in [0, 1].

    - DICOM: pixel data through ``PydicomReader`` (compressed transfer syntaxes decode through
      pydicom's handlers; JPEG 2000 needs Pillow with OpenJPEG, which the Pillow wheels include).
      Stored values are scaled by the full range of ``BitsStored`` (``2**BitsStored - 1``; signed
      data is shifted first; a modality rescale slope/intercept, if any, is applied to that range
      too), so a film keeps its exposure rather than being stretched to its own min/max.
      ``MONOCHROME1`` (bright = low values) is inverted, so bone is always bright.
    - PNG/JPEG/other 2D images: through ``PILReader``, scaled by the integer dtype's range
      (8-bit by 255, 16-bit by 65535); colour images become gray by luma.

    Axes follow the image: H = rows (top to bottom), W = columns (left to right), so saving
    ``out[0]`` as a PNG shows the film as a viewer would.

    Metadata kept: ``filename_or_obj``, ``affine``, ``spatial_shape``, ``photometric_interpretation``
    and ``bits_stored`` (the DICOM header itself is dropped: it is large, can carry patient data and
    differs between files, which would break collation).

    Args:
        dtype: output dtype.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a single 2D image, or its pixel data cannot be decoded (the
            message names the file and the transfer syntax).
    """

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        # swap_ij=False keeps (rows, cols); prune_metadata=False keeps the tags read below
        self._dicom = PydicomReader(swap_ij=False, prune_metadata=False)
        self._pil = PILReader(reverse_indexing=False)

    def __call__(self, filename: str | os.PathLike) -> MetaTensor:
        path = Path(filename)
        if not path.is_file():
            raise FileNotFoundError(f"X-ray file '{path}' does not exist.")
        img = self._load_dicom(path) if _is_dicom(path) else self._load_image(path)
        if img.ndim != 3 or img.shape[0] != 1:
            raise ValueError(f"X-ray '{path}' is not a single 2D image: shape {tuple(img.shape)} after loading.")
        img = img.clamp(0.0, 1.0).to(self.dtype)
        return img

    def _load_dicom(self, path: Path) -> MetaTensor:
        try:
            with warnings.catch_warnings():
                # projection radiographs have no ImagePositionPatient/ImageOrientationPatient, by design
                warnings.filterwarnings("ignore", message=".*ImageOrientationPatient.*")
                img = _read(self._dicom, path)
        except Exception as e:  # decoding errors come from deep inside pydicom: say which file and syntax
            raise ValueError(f"Cannot decode DICOM X-ray '{path}' ({_transfer_syntax(path)}): {e}") from e
        meta = img.meta
        photometric = str(_tag_value(meta, "00280004", "MONOCHROME2")).upper()
        bits_stored = int(_tag_value(meta, "00280101", _tag_value(meta, "00280100", 16)))
        signed = int(_tag_value(meta, "00280103", 0)) == 1
        if not photometric.startswith("MONOCHROME"):
            raise ValueError(
                f"X-ray '{path}' has PhotometricInterpretation {photometric}; a grayscale film is expected."
            )
        low, high = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
        # PydicomReader applies RescaleSlope/Intercept when present; map the stored range the same way
        slope, intercept = float(_tag_value(meta, "00281053", 1.0)), float(_tag_value(meta, "00281052", 0.0))
        low, high = sorted((low * slope + intercept, high * slope + intercept))
        img = (img.float() - low) / (high - low)
        if photometric == "MONOCHROME1":
            img = 1.0 - img
        for key in [k for k in img.meta if isinstance(k, str) and _TAG.match(k)]:
            del img.meta[key]
        img.meta["photometric_interpretation"] = photometric
        img.meta["bits_stored"] = bits_stored
        return img

    def _load_image(self, path: Path) -> MetaTensor:
        try:
            img = _read(self._pil, path)
        except Exception as e:
            raise ValueError(f"Cannot read X-ray image '{path}': {e}") from e
        mode = str(img.meta.get("mode", "L"))
        if mode not in _PIL_FULL_SCALE:
            raise ValueError(f"X-ray image '{path}' has PIL mode '{mode}'; expected one of {sorted(_PIL_FULL_SCALE)}.")
        if img.shape[0] in (2, 4):  # LA / RGBA: drop alpha
            img = img[:-1]
        if img.shape[0] == 3:
            img = sum(w * img[c : c + 1].float() for c, w in enumerate(_LUMA))
        scale, bits = _PIL_FULL_SCALE[mode]
        img = img.float() / scale
        img.meta["spatial_shape"] = np.asarray(img.shape[1:])  # PILReader records (W, H)
        img.meta["photometric_interpretation"] = "MONOCHROME2"
        img.meta["bits_stored"] = bits
        return img


def _read(reader: ImageReader, path: Path) -> MetaTensor:
    """Read with this reader only (``LoadImage`` would fall back on other readers, with other axis conventions)."""
    array, meta = reader.get_data(reader.read(str(path)))
    if isinstance(array, np.ndarray) and not array.flags.writeable:  # PIL hands out read-only buffers
        array = array.copy()
    meta["filename_or_obj"] = str(path)
    return EnsureChannelFirst()(MetaTensor.ensure_torch_and_prune_meta(array, meta))


def _transfer_syntax(path: Path) -> str:
    if not has_pydicom:
        return "pydicom missing"
    try:
        uid = pydicom.dcmread(str(path), stop_before_pixels=True).file_meta.TransferSyntaxUID
        return f"transfer syntax {uid.name}"
    except Exception:
        return "unreadable header"


class LoadXRayd(MapTransform):
    """Dictionary twin of :class:`LoadXRay`: replaces each file path in ``keys`` with the loaded image.

    Args:
        keys: keys holding file paths (normally ``"image"``).
        dtype: output dtype.
        allow_missing_keys: see ``MapTransform``.
    """

    def __init__(
        self, keys: KeysCollection = "image", dtype: torch.dtype = torch.float32, allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadXRay(dtype=dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d
