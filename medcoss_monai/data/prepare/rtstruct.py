"""DICOM RT structure sets (RTSTRUCT) rasterised onto the grid of the image series they were drawn on.

An RTSTRUCT stores each region of interest (ROI) as closed planar polygons in patient coordinates (mm,
DICOM's LPS frame), one or more per image slice. :func:`rasterise` maps every polygon to the continuous
voxel indices of the image (through its origin, spacing and direction, as ITK reads the series), and
fills, on the slice it lies on, the voxels whose **centre** is inside the polygon; polygons of one slice
are combined by exclusive or, so a polygon inside another cuts a hole, as the standard intends.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcoss_monai.data.prepare.common import write_itk_atomic

__all__ = ["TUMOUR_NAMES", "read_series", "referenced_series_uid", "pick_roi", "rasterise",
           "series_and_mask_to_nifti"]

TUMOUR_NAMES = ("tv", "tumour", "tumor", "vs", "gtv")
"""ROI names (lower case) taken for a tumour; an ROI whose name contains ``tumo`` also is."""


def read_series(folder: str | os.PathLike) -> Any:
    """The single DICOM series of ``folder`` as an ITK float image, slices ordered by position.

    Raises:
        ValueError: the folder holds no image series, or more than one.
    """
    import itk

    names = itk.GDCMSeriesFileNames.New(Directory=str(folder))
    uids = names.GetSeriesUIDs()
    if len(uids) != 1:
        raise ValueError(f"holds {len(uids)} DICOM image series, expected one")
    # float: MR values are unsigned and may pass 32767; the cache is compressed anyway
    return itk.imread(list(names.GetFileNames(uids[0])), itk.F)


def referenced_series_uid(rtstruct: Any) -> str:
    """The SeriesInstanceUID of the image series an RTSTRUCT was drawn on ("" when it names none)."""
    try:
        frame = rtstruct.ReferencedFrameOfReferenceSequence[0]
        return str(frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID)
    except (AttributeError, IndexError):
        return ""


def pick_roi(rtstruct: Any, names: Sequence[str] = TUMOUR_NAMES) -> tuple[int, str] | None:
    """The ROI to rasterise: the first named like a tumour, else the first ROI with contours.

    The fallback follows the collection's own conversion (KCL-BMEIS/VS_Seg exports the first structure,
    the tumour).

    Returns:
        ``(ROI number, ROI name)``, or None when the structure set holds no contour at all.
    """
    with_contours = {int(c.ReferencedROINumber) for c in getattr(rtstruct, "ROIContourSequence", [])
                     if getattr(c, "ContourSequence", None)}
    rois = [(int(r.ROINumber), str(r.ROIName)) for r in getattr(rtstruct, "StructureSetROISequence", [])
            if int(r.ROINumber) in with_contours]
    for number, name in rois:
        if name.strip().lower() in names or "tumo" in name.lower():
            return number, name
    return rois[0] if rois else None


def _world_to_index(image: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(M, origin)`` with continuous index ``(i column, j row, k slice) = M @ (p - origin)``."""
    import itk

    direction = itk.array_from_matrix(image.GetDirection()).astype(np.float64)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    return np.linalg.inv(direction @ np.diag(spacing)), np.asarray(image.GetOrigin(), dtype=np.float64)


def rasterise(rtstruct: Any, roi_number: int, image: Any, tolerance: float = 0.25) -> np.ndarray:
    """The mask of one ROI on the image grid, as an array ``(slice, row, column)`` of 0 / 1 (ITK's order).

    Args:
        rtstruct: the structure set (pydicom dataset).
        roi_number: the ROI to fill.
        image: the ITK image the structure set was drawn on.
        tolerance: how far (in slices) a polygon may lie from a slice centre.

    Returns:
        uint8 mask, the shape of ``itk.array_view_from_image(image)``.

    Raises:
        ValueError: a polygon off the image's slices, or between two slices.
    """
    from matplotlib.path import Path as Polygon

    size = tuple(int(n) for n in image.GetLargestPossibleRegion().GetSize())  # (columns, rows, slices)
    mask = np.zeros(size[::-1], dtype=bool)
    to_index, origin = _world_to_index(image)
    contours = [c for c in rtstruct.ROIContourSequence if int(c.ReferencedROINumber) == roi_number]
    for roi in contours:
        for contour in getattr(roi, "ContourSequence", []):
            points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
            index = (points - origin) @ to_index.T
            k = int(np.rint(np.median(index[:, 2])))
            if np.abs(index[:, 2] - k).max() > tolerance or not 0 <= k < size[2]:
                raise ValueError(f"ROI {roi_number}: a polygon lies at slice {np.median(index[:, 2]):.2f}, not on one "
                                 f"of the image's {size[2]} slices")
            if len(index) < 3:
                continue  # a point or a segment encloses no voxel centre
            lo = np.clip(np.floor(index[:, :2].min(axis=0)).astype(int), 0, None)
            hi = np.minimum(np.ceil(index[:, :2].max(axis=0)).astype(int) + 1, size[:2])
            if (hi <= lo).any():
                continue  # wholly outside the slice
            cols, rows = np.meshgrid(np.arange(lo[0], hi[0]), np.arange(lo[1], hi[1]))
            inside = Polygon(index[:, :2]).contains_points(np.column_stack([cols.ravel(), rows.ravel()]))
            mask[k, lo[1]:hi[1], lo[0]:hi[0]] ^= inside.reshape(cols.shape)
    return mask.astype(np.uint8)


def series_and_mask_to_nifti(series: str, rtstruct_file: str, roi_number: int, image_out: str, mask_out: Path) -> None:
    """Convert an image series and one ROI of its structure set into two NIfTI files on the same grid.

    The image is written first, the mask last: after a kill, a case without its mask is redone whole.

    Args:
        series: the image series folder.
        rtstruct_file: the structure set drawn on it.
        roi_number: the ROI to rasterise.
        image_out: the image ``.nii.gz``.
        mask_out: the mask ``.nii.gz``.
    """
    import itk
    import pydicom

    image = read_series(series)
    mask = rasterise(pydicom.dcmread(rtstruct_file), roi_number, image)
    write_itk_atomic(image, Path(image_out))
    label = itk.image_from_array(mask)
    label.CopyInformation(image)
    write_itk_atomic(label, Path(mask_out))
