"""Turn sample files that no MONAI reader takes as they are into NIfTI volumes.

- :func:`inv3_to_nifti`: an InVesalius project (``.inv3``, a gzip tar with a raw int16 volume and a
  plist) into a NIfTI CT volume in HU;
- :func:`first_volume`: the first volume of a 4D NIfTI (a functional run) as a 3D NIfTI;
- :func:`mosaic_to_nifti`: a Siemens mosaic DICOM (one whole EPI volume in one 2D frame) as a 3D NIfTI;
- :func:`resample_labels_onto`: a label map onto another image's grid, nearest neighbour.
"""

from __future__ import annotations

import os
import plistlib
import tarfile
from pathlib import Path

import numpy as np

__all__ = ["inv3_to_nifti", "first_volume", "mosaic_to_nifti", "resample_labels_onto", "same_grid"]


def _save(image, path: str | os.PathLike) -> Path:
    """Write a NIfTI image atomically, gzipped when the name ends in ``.gz``."""
    import gzip

    from medcoss_monai.utils import atomic_write_bytes

    data = image.to_bytes()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    return atomic_write_bytes(data, path)


def inv3_to_nifti(inv3: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Convert the CT volume of an InVesalius project to NIfTI.

    The project is a gzip tar holding ``main.plist`` (``matrix.shape`` (z, y, x), ``matrix.dtype``,
    ``spacing`` (x, y, z) in mm) and ``matrix.dat``, the raw little-endian volume in HU with x
    fastest. The NIfTI axes are (x, y, z) with the plist spacing; InVesalius keeps y growing from
    posterior to anterior and z from the skull base up, which is RAS for those two axes. The file
    records no left/right direction, so x is taken as left-to-right (RAS); a flipped x only mirrors
    the head.

    Args:
        inv3: the ``.inv3`` file.
        out: the NIfTI path to write (``.nii.gz``).

    Returns:
        ``out``.

    Raises:
        ValueError: the project has no volume, or its size does not match its plist.
    """
    import nibabel as nib

    inv3 = Path(inv3)
    with tarfile.open(inv3) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        if "main.plist" not in members:
            raise ValueError(f"'{inv3}' holds no main.plist: not an InVesalius project.")
        main = plistlib.loads(tar.extractfile(members["main.plist"]).read())  # type: ignore[union-attr]
        matrix = main.get("matrix", {})
        name = matrix.get("filename", "matrix.dat")
        if name not in members:
            raise ValueError(f"'{inv3}' holds no '{name}' volume.")
        raw = tar.extractfile(members[name]).read()  # type: ignore[union-attr]
    shape, dtype = tuple(int(s) for s in matrix["shape"]), np.dtype(matrix.get("dtype", "int16")).newbyteorder("<")
    if len(raw) != int(np.prod(shape)) * dtype.itemsize:
        raise ValueError(f"'{inv3}': {len(raw)} bytes of volume do not make {shape} values of {dtype}.")
    volume = np.frombuffer(raw, dtype=dtype).reshape(shape)  # (z, y, x)
    spacing = [float(s) for s in main["spacing"]]  # (x, y, z)
    data = np.ascontiguousarray(volume.transpose(2, 1, 0)).astype(np.int16)
    image = nib.Nifti1Image(data, np.diag([*spacing, 1.0]))
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    image.header.set_xyzt_units("mm")
    return _save(image, out)


def first_volume(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """The first volume of a 4D NIfTI as a 3D NIfTI with the same affine and data type.

    Args:
        path: the 4D NIfTI.
        out: the 3D NIfTI to write.

    Returns:
        ``out``.
    """
    import nibabel as nib

    image = nib.load(str(path))
    data = np.asarray(image.dataobj)
    if data.ndim == 4:
        data = data[..., 0]
    out_image = nib.Nifti1Image(np.ascontiguousarray(data), image.affine, header=image.header)
    out_image.header.set_data_shape(data.shape)
    return _save(out_image, out)


def mosaic_to_nifti(dicom: str | os.PathLike, out: str | os.PathLike) -> Path:
    """A Siemens mosaic DICOM as a 3D NIfTI in RAS world coordinates.

    A mosaic holds a whole 2D-multislice volume (e.g. one diffusion-weighted EPI volume) tiled into
    one frame, which neither pydicom nor ITK unpacks; nibabel's mosaic reader reads the tiles and
    the slice geometry from the Siemens CSA header.

    Args:
        dicom: the mosaic DICOM file.
        out: the NIfTI to write.

    Returns:
        ``out``.
    """
    import warnings

    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # on import, nibabel calls its DICOM readers experimental
        from nibabel.nicom.dicomreaders import mosaic_to_nii

        image = mosaic_to_nii(pydicom.dcmread(str(dicom)))
    return _save(image, out)


def resample_labels_onto(labels: str | os.PathLike, reference: str | os.PathLike, out: str | os.PathLike) -> Path:
    """A label map resampled onto a reference image's grid, nearest neighbour so labels stay labels.

    Args:
        labels: the label NIfTI.
        reference: the NIfTI whose grid (shape and affine) the result takes.
        out: the NIfTI to write.

    Returns:
        ``out``.
    """
    import nibabel as nib
    from nibabel.processing import resample_from_to

    atlas, template = nib.load(str(labels)), nib.load(str(reference))
    resampled = resample_from_to(atlas, template, order=0)
    data = np.asarray(resampled.dataobj).astype(atlas.get_data_dtype())
    image = nib.Nifti1Image(data, template.affine, header=atlas.header)
    image.set_qform(template.affine, code=1)
    image.set_sform(template.affine, code=1)
    return _save(image, out)


def same_grid(path: str | os.PathLike, shape: tuple[int, ...], zooms: tuple[float, ...]) -> bool:
    """Whether a NIfTI file reads and has this shape and these voxel sizes (a check of a made file).

    Args:
        path: the NIfTI file.
        shape: expected shape.
        zooms: expected voxel sizes (mm).

    Returns:
        True when both match (voxel sizes to 1e-3 mm); False when not, or the header is unreadable.
    """
    import nibabel as nib

    try:
        image = nib.load(str(path))
        return tuple(image.shape) == tuple(shape) and np.allclose(image.header.get_zooms()[: len(zooms)], zooms, atol=1e-3)
    except Exception:  # an unreadable header is what "not the made file" means here
        return False
