"""Digitally reconstructed radiographs (DRRs): CT volumes projected into radiograph-like images.

A radiograph records, per detector pixel, how much of the beam the body absorbed along the ray:
``-log(I / I0) = sum(mu * step)`` (Beer-Lambert), with the linear attenuation ``mu`` proportional to
``1 + HU / 1000`` (water 0 HU, air -1000 HU). :func:`project_ap` sums it along the
anterior-posterior axis of a RAS volume (a parallel-beam AP film) and lays the result out as a film
is read: head up, the patient's right on the image's left. :func:`radiograph_intensity` maps the line
integral to display values, either linearly (``"log"``: the log-transmission a processed film shows)
or as ``1 - exp(-k p)`` (``"exp"``: raw absorbed fraction, saturating in bone). Masks are projected
the same way (a pixel is foreground when its ray crosses the structure) and give segmentation masks
and detection boxes. Rotating the volume about the superior-inferior axis before projecting gives
oblique views (a slightly rotated patient), more than one film per CT.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "MU_WATER_PER_MM",
    "load_ras",
    "attenuation_from_hu",
    "shrink_in_plane",
    "rotate_about_si",
    "project_ap",
    "project_mask",
    "radiograph_intensity",
    "square_resize",
    "mask_box",
    "CXR_LUNG_LABELS",
    "lung_fields",
    "chest_views",
    "head_views",
]

MU_WATER_PER_MM = 0.02
"""Linear attenuation of water at a diagnostic beam energy (~0.2 / cm near 70 keV)."""
CXR_LUNG_LABELS = {"left": (10, 11), "right": (12, 13, 14)}
"""TotalSegmentator lung lobes of the sample ``ct/cxr.nii.gz`` (``ct/cxr_structures.csv``)."""


def _root() -> Path:
    from medcoss_monai.samples.sample_data import sample_dir

    return sample_dir()


def load_ras(path: str, label: bool = False) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A volume as a RAS-oriented array (axis 0 towards the patient's right... as MONAI's ``"RAS"``) and its spacing.

    Args:
        path: NIfTI / NRRD file.
        label: read as integer labels (no interpolation is involved; the dtype is kept).

    Returns:
        ``(array (X, Y, Z), spacing in mm)``.
    """
    from monai.transforms import LoadImage, Orientation

    img = LoadImage(image_only=True, ensure_channel_first=True)(path)
    img = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(img)
    spacing = tuple(float(s) for s in img.pixdim[:3])
    array = np.asarray(img[0])
    return (array.astype(np.int32) if label else array.astype(np.float32)), spacing  # type: ignore[return-value]


def attenuation_from_hu(hu: np.ndarray | torch.Tensor, mu_water: float = MU_WATER_PER_MM) -> torch.Tensor:
    """Linear attenuation per mm from Hounsfield units, ``mu_water * max(0, 1 + HU / 1000)``."""
    hu = torch.as_tensor(hu, dtype=torch.float32)
    return mu_water * torch.clamp(1.0 + hu / 1000.0, min=0.0)


def shrink_in_plane(volume: torch.Tensor, factor: int) -> torch.Tensor:
    """Average ``factor`` x ``factor`` blocks of the axial plane (axes 0, 1) of an (X, Y, Z) volume."""
    if factor <= 1:
        return volume
    v = volume.permute(2, 0, 1)[:, None]  # (Z, 1, X, Y)
    return F.avg_pool2d(v, factor, ceil_mode=True)[:, 0].permute(1, 2, 0)


def rotate_about_si(volume: torch.Tensor, degrees: float, nearest: bool = False) -> torch.Tensor:
    """Rotate an (X, Y, Z) volume in its axial plane about the centre (isotropic in-plane spacing assumed).

    Args:
        volume: attenuation (outside the field: 0) or a mask.
        degrees: rotation angle; 0 returns the volume.
        nearest: nearest-neighbour sampling (masks).

    Returns:
        The rotated volume, same shape.
    """
    if degrees == 0:
        return volume
    a = math.radians(degrees)
    v = volume.float().permute(2, 0, 1)[:, None]  # slices as a batch of 2D images (Z, 1, X, Y)
    # grid_sample's normalised coordinates are per axis; scale by the half-widths so the rotation is rigid
    # in voxels even when the plane is not square: theta = S^-1 R S, S = diag(Y/2, X/2)
    aspect = v.shape[-2] / v.shape[-1]
    theta = torch.tensor([[math.cos(a), -math.sin(a) * aspect, 0.0], [math.sin(a) / aspect, math.cos(a), 0.0]],
                         dtype=torch.float32)
    grid = F.affine_grid(theta.expand(v.shape[0], 2, 3), list(v.shape), align_corners=False)
    out = F.grid_sample(v, grid, mode="nearest" if nearest else "bilinear", padding_mode="zeros", align_corners=False)
    return out[:, 0].permute(1, 2, 0).to(volume.dtype)


def _film_layout(plane: torch.Tensor) -> torch.Tensor:
    """(X, Z) of a RAS volume -> (rows, columns) of an AP film: superior at the top, patient's right on the left."""
    return torch.flip(plane, dims=(0, 1)).t()


def project_ap(mu: torch.Tensor, step_mm: float) -> torch.Tensor:
    """Line integral of attenuation along the anterior-posterior axis (axis 1 of a RAS volume).

    Args:
        mu: attenuation per mm, (X, Y, Z).
        step_mm: voxel size along Y.

    Returns:
        ``(Z, X)`` line integrals laid out as an AP film (see :func:`_film_layout`).
    """
    return _film_layout(mu.sum(dim=1) * step_mm)


def project_mask(mask: torch.Tensor) -> torch.Tensor:
    """``(Z, X)`` boolean: the AP ray of a pixel crosses the structure, laid out as :func:`project_ap`."""
    return _film_layout(mask.bool().any(dim=1))


def radiograph_intensity(line_integral: torch.Tensor, scaling: str = "log", gain: float = 0.5) -> torch.Tensor:
    """Film-like display values in [0, 1] from line integrals (absorbing tissue bright, as on a film).

    Args:
        line_integral: ``sum(mu * step)`` per pixel.
        scaling: ``"log"`` (values proportional to the line integral, i.e. ``-log`` transmission, as a
            processed radiograph) or ``"exp"`` (absorbed fraction ``1 - exp(-gain * p)``).
        gain: the ``exp`` scaling's gain.

    Returns:
        Values in [0, 1]; ``"log"`` divides by the 99.5th percentile and clips.
    """
    if scaling == "exp":
        return 1.0 - torch.exp(-gain * line_integral.clamp(min=0))
    if scaling != "log":
        raise ValueError(f"scaling must be 'log' or 'exp', got '{scaling}'.")
    top = torch.quantile(line_integral.flatten().float(), 0.995).clamp(min=1e-6)
    return (line_integral / top).clamp(0.0, 1.0)


def square_resize(plane: torch.Tensor, pixel_mm: Sequence[float], size: int, nearest: bool = False) -> torch.Tensor:
    """Pad a (rows, columns) image to a square field of view (physical size) and resize it to ``size``.

    Args:
        plane: the image (or a mask when ``nearest``).
        pixel_mm: (row spacing, column spacing) in mm.
        size: output side in pixels.
        nearest: masks: area-average then threshold at 0.5 (keeps thin structures' extent stable).

    Returns:
        ``(size, size)`` float tensor (masks: 0 / 1); padding is 0 (air, no attenuation).
    """
    rows, cols = plane.shape
    height, width = rows * pixel_mm[0], cols * pixel_mm[1]
    side = max(height, width)
    pad_r, pad_c = round((side - height) / pixel_mm[0]), round((side - width) / pixel_mm[1])
    padded = F.pad(plane.float()[None, None], (pad_c // 2, pad_c - pad_c // 2, pad_r // 2, pad_r - pad_r // 2))
    # area-average when shrinking (no aliasing), bilinear when enlarging (area would copy pixels)
    mode = "area" if padded.shape[-1] >= size else "bilinear"
    out = F.interpolate(padded, size=(size, size), mode=mode, **({} if mode == "area" else {"align_corners": False}))[0, 0]
    return (out >= 0.5).float() if nearest else out


def mask_box(mask: torch.Tensor | np.ndarray) -> list[int] | None:
    """Bounding box ``[x1, y1, x2, y2]`` (x = column, y = row, x2/y2 exclusive) of a 2D mask, None if empty."""
    m = np.asarray(mask) > 0
    if not m.any():
        return None
    rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


# ------------------------------------------------------------------ the sample CTs as films


def lung_fields(
    hu: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0), air_hu: float = -400.0, min_fraction: float = 0.1,
    airway_mm2: float = 400.0,
) -> np.ndarray:
    """Lung fields of a chest CT by thresholding: air-like voxels enclosed by the body.

    The body is the largest component above ``air_hu`` + 100 HU, its axial slices hole-filled; air
    inside it is lung, airway or gut gas. Per axial slice, air regions smaller than ``airway_mm2``
    (the trachea and main bronchi, 2-3 cm^2 in cross-section) are dropped; then 3D components smaller
    than ``min_fraction`` of the largest (gut gas) are dropped.

    Args:
        hu: (X, Y, Z) volume in HU.
        spacing: voxel size in mm.
        air_hu: threshold below which a voxel counts as air.
        min_fraction: smallest kept component relative to the largest.
        airway_mm2: in-slice area below which an air region counts as airway.

    Returns:
        Boolean (X, Y, Z) mask.
    """
    from scipy import ndimage as ndi

    labels, n = ndi.label(hu > air_hu + 100)
    if n == 0:
        return np.zeros(hu.shape, bool)
    body = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    filled = np.stack([ndi.binary_fill_holes(body[..., z]) for z in range(body.shape[2])], axis=-1)
    air = filled & (hu < air_hu)
    min_pixels = airway_mm2 / (spacing[0] * spacing[1])
    for z in range(air.shape[2]):
        regions, count = ndi.label(air[..., z])
        if count:
            sizes = np.bincount(regions.ravel())
            air[..., z] &= sizes[regions] >= min_pixels  # label 0 (not air) is False already
    labels, n = ndi.label(air)
    if n == 0:
        return air
    sizes = np.bincount(labels.ravel())[1:]
    return np.isin(labels, 1 + np.nonzero(sizes >= min_fraction * sizes.max())[0])


@functools.lru_cache(maxsize=4)
def _chest_ct(name: str) -> dict[str, Any]:
    """Attenuation and masks (right lung, left lung, lesion) of a sample chest CT, shrunk to ~2 mm in plane."""
    root = _root() / "ct"
    image = f"{name}_image.nrrd" if name != "cxr" else "cxr.nii.gz"
    hu, spacing = load_ras(str(root / image))
    factor = max(1, round(2.0 / spacing[0]))
    if name == "cxr":
        labels, _ = load_ras(str(root / "cxr_mask.nii.gz"), label=True)
        right, left = (np.isin(labels, CXR_LUNG_LABELS[s]) for s in ("right", "left"))
        lesion = np.zeros_like(right)
    else:
        lungs = lung_fields(hu, spacing)
        xs = np.nonzero(hu > -300)[0]  # body midline: RAS axis 0 grows towards the patient's right
        mid = int(np.median(xs))
        right, left = lungs.copy(), lungs.copy()
        right[:mid], left[mid:] = False, False
        lesion, _ = load_ras(str(root / f"{name}_label.nrrd"), label=True)
        lesion = lesion > 0
    masks = {k: shrink_in_plane(torch.as_tensor(m, dtype=torch.float32), factor) > 0 for k, m in
             (("right lung", right), ("left lung", left), ("lesion", lesion))}
    mu = shrink_in_plane(attenuation_from_hu(hu), factor)
    pixel = (spacing[2], spacing[0] * factor)  # film rows run along Z, columns along X
    return {"mu": mu, "masks": masks, "step": spacing[1] * factor, "pixel": pixel, "source": f"ct/{image}"}


def chest_views(name: str, angles: Sequence[float], size: int) -> list[dict[str, Any]]:
    """DRRs of one sample chest CT at several rotations, with projected masks.

    Args:
        name: ``lung1``, ``lung2`` or ``cxr``.
        angles: rotations about the superior-inferior axis, degrees.
        size: image side in pixels.

    Returns:
        Per angle: ``{"angle", "image" (size, size) in [0, 1], "masks": {class: (size, size) bool}, "source"}``.
    """
    ct = _chest_ct(name)
    views = []
    for angle in angles:
        p = project_ap(rotate_about_si(ct["mu"], angle), ct["step"])
        image = square_resize(radiograph_intensity(p), ct["pixel"], size)
        masks = {
            k: square_resize(project_mask(rotate_about_si(m.float(), angle, nearest=True)), ct["pixel"],
                                 size, nearest=True).bool()
            for k, m in ct["masks"].items()
        }
        views.append({"angle": angle, "image": image, "masks": masks, "source": ct["source"]})
    return views


def head_views(angles: Sequence[float], size: int) -> list[dict[str, Any]]:
    """DRRs of the sample head CT (``ct/cranium_ct.nii.gz``) at several rotations (90 degrees: lateral).

    Args:
        angles: rotations about the superior-inferior axis, degrees.
        size: image side in pixels.

    Returns:
        Per angle: ``{"angle", "image" (size, size) in [0, 1], "source"}``.
    """
    hu, spacing = load_ras(str(_root() / "ct" / "cranium_ct.nii.gz"))
    factor = max(1, round(2.0 / spacing[0]))
    mu = shrink_in_plane(attenuation_from_hu(hu), factor)
    out = []
    for angle in angles:
        p = project_ap(rotate_about_si(mu, angle), spacing[1] * factor)
        image = square_resize(radiograph_intensity(p), (spacing[2], spacing[0] * factor), size)
        out.append({"angle": angle, "image": image, "source": "ct/cranium_ct.nii.gz"})
    return out
