"""Sample tasks cut from held-out 2D images: tiles of the tibia film (``xray_cls``, ``xray_seg``) and
of the H&E tile (``pathology_cls``, ``pathology_seg``); see :mod:`.sample_tasks` for what each holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import Resize
from PIL import Image
from scipy import ndimage as ndi

from medcoss_monai.data.folder_datalists import SPLIT_SEED, split_items
from medcoss_monai.samples.sample_tasks import FILM_LONGEST, FILM_TILE, PATHOLOGY_TILE, _held_out, _source
from medcoss_monai.transforms import LoadXRay
from medcoss_monai.transforms.tissue import otsu_threshold

__all__ = [
    "bone_masks",
    "nuclei_mask",
    "derive_xray_cls",
    "derive_xray_seg",
    "derive_pathology_cls",
    "derive_pathology_seg",
]


def _load_film(path: str, longest: int = FILM_LONGEST) -> np.ndarray:
    """A film in [0, 1], longest side shrunk (area) to at most ``longest``, as (H, W) float32."""
    img = LoadXRay()(path)
    if max(img.shape[1:]) > longest:
        img = Resize(longest, size_mode="longest", mode="area")(img)
    return np.asarray(img[0], dtype=np.float32)


def _save_png(array: np.ndarray, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8)
    Image.fromarray(array).save(path)
    return str(path)


def _tiles(shape: Sequence[int], tile: int) -> list[tuple[int, int]]:
    """Top-left corners of the non-overlapping ``tile`` x ``tile`` grid inside ``shape`` (partial tiles dropped)."""
    return [(r * tile, c * tile) for r in range(shape[0] // tile) for c in range(shape[1] // tile)]


def _largest_components(mask: np.ndarray, min_size: int, keep: int | None = None) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = ndi.sum(mask, labels, index=np.arange(1, n + 1))
    order = [i + 1 for i in np.argsort(sizes)[::-1] if sizes[i] >= min_size][:keep]
    return np.isin(labels, order)


def bone_masks(film: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Body and bone of a limb radiograph with collimator shadows (bone bright, air dark).

    The collimator is the burnt-white region touching the border; air is darker than half of
    Otsu's threshold of the rest; the body is the largest remaining region. Bone is brighter than the
    soft tissue around it, whose thickness (so brightness) varies along the limb: the film minus its
    grey-level opening (structures narrower than ~1/16 of the film removed), thresholded by Otsu
    inside the body, opened and filled.

    Args:
        film: (H, W) film in [0, 1], bright = dense.

    Returns:
        ``(body, bone)``: bool (H, W) masks, bone inside body.
    """
    scale = max(film.shape) / 1024.0
    smooth = ndi.gaussian_filter(film, sigma=2 * scale)
    labels, _ = ndi.label(smooth > 0.97)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))) - {0}
    collimator = np.isin(labels, sorted(border))
    air = smooth < 0.5 * otsu_threshold(smooth[~collimator])
    body = ndi.binary_fill_holes(_largest_components(~collimator & ~air, 1, keep=1))
    step = max(1, int(round(4 * scale)))
    small = smooth[::step, ::step]
    background = ndi.gaussian_filter(ndi.grey_opening(small, size=(31, 31)), 4)
    background = ndi.zoom(background, np.asarray(film.shape) / np.asarray(small.shape), order=1)
    residual = smooth - background[: film.shape[0], : film.shape[1]]
    bone = body & (residual > otsu_threshold(residual[body]))
    bone = ndi.binary_fill_holes(ndi.binary_opening(bone, structure=np.ones((5, 5)), iterations=2))
    bone = _largest_components(bone, int(2000 * scale**2))
    return body, bone & body


def _tibia_tiles() -> tuple[str, np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    item = _held_out("xray", "RG3_J2KI.dcm")
    film = _load_film(item["image"])
    body, bone = bone_masks(film)
    return item["image"], film, body, bone, _tiles(film.shape, FILM_TILE)


def derive_xray_cls(out: Path) -> dict[str, Any]:
    """Tiles of the held-out tibia film: bone (1) or soft tissue without bone (0), from :func:`bone_masks`.

    Args:
        out: the task folder; tiles are written under ``images/``.

    Returns:
        ``{"splits": {...}, "extra": {"classes": [...]}}``.
    """
    path, film, body, bone, corners = _tibia_tiles()
    items = []
    for y, x in corners:
        window = (slice(y, y + FILM_TILE), slice(x, x + FILM_TILE))
        body_share, bone_share = float(body[window].mean()), float(bone[window].mean())
        if bone_share >= 0.25:
            label = 1
        elif bone_share == 0.0 and body_share >= 0.5:
            label = 0
        else:  # mixed or mostly background: ambiguous
            continue
        items.append({"image": _save_png(film[window], out / "images" / f"tibia_y{y}_x{x}.png"), "label": label,
                      "source": _source(path)})
    return {"splits": split_items(items, seed=SPLIT_SEED), "extra": {"classes": ["soft tissue", "bone"]}}


def derive_xray_seg(out: Path) -> dict[str, Any]:
    """Tiles of the held-out tibia film and their bone masks (:func:`bone_masks`), PNG 0/255.

    Args:
        out: the task folder; tiles under ``images/``, masks under ``masks/``.

    Returns:
        ``{"splits": {...}, "extra": {"classes": [...], "mask_values": [0, 255]}}``.
    """
    path, film, body, bone, corners = _tibia_tiles()
    _save_png(film, out / "tibia_film.png")
    _save_png(bone, out / "tibia_bone_mask.png")
    items = []
    for y, x in corners:
        window = (slice(y, y + FILM_TILE), slice(x, x + FILM_TILE))
        if body[window].mean() < 0.5:
            continue
        items.append({
            "image": _save_png(film[window], out / "images" / f"tibia_y{y}_x{x}.png"),
            "label": _save_png(bone[window], out / "masks" / f"tibia_y{y}_x{x}.png"),
            "source": _source(path),
        })
    return {"splits": split_items(items, seed=SPLIT_SEED),
            "extra": {"classes": ["background", "bone"], "mask_values": [0, 255]}}


def nuclei_mask(rgb: np.ndarray, min_size: int = 30) -> np.ndarray:
    """Nuclei of an H&E image: the haematoxylin channel of a colour deconvolution, Otsu's threshold.

    Optical densities are unmixed with the haematoxylin / eosin / DAB vectors of Ruifrok & Johnston
    (2001); the haematoxylin density, lightly smoothed, is thresholded by Otsu, opened, filled, and
    regions under ``min_size`` pixels are dropped.

    Args:
        rgb: (H, W, 3) uint8 image.
        min_size: smallest nucleus kept, in pixels.

    Returns:
        bool (H, W) mask.
    """
    rgb_from_hed = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
    rgb_from_hed /= np.linalg.norm(rgb_from_hed, axis=1, keepdims=True)
    density = -np.log(np.maximum(np.asarray(rgb, np.float64)[..., :3], 1.0) / 255.0)
    haematoxylin = ndi.gaussian_filter((density @ np.linalg.inv(rgb_from_hed))[..., 0], 1.0)
    mask = haematoxylin > otsu_threshold(haematoxylin)
    mask = ndi.binary_fill_holes(ndi.binary_opening(mask, structure=np.ones((3, 3)), iterations=2))
    return _largest_components(mask, min_size)


def _he_tiles() -> tuple[str, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    path = _held_out("pathology", "target_image.png")["image"]
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return path, rgb, nuclei_mask(rgb), _tiles(rgb.shape[:2], PATHOLOGY_TILE)


def _derive_pathology(out: Path, segmentation: bool) -> dict[str, Any]:
    path, rgb, nuclei, corners = _he_tiles()
    windows = [(y, x, (slice(y, y + PATHOLOGY_TILE), slice(x, x + PATHOLOGY_TILE))) for y, x in corners]
    items = []
    if segmentation:
        for y, x, window in windows:
            items.append({
                "image": _save_png(rgb[window], out / "images" / f"he_y{y}_x{x}.png"),
                "label": _save_png(nuclei[window], out / "masks" / f"he_y{y}_x{x}.png"),
                "source": _source(path),
            })
        extra: dict[str, Any] = {"classes": ["background", "nucleus"], "mask_values": [0, 255]}
    else:
        share = np.array([nuclei[w].mean() for _, _, w in windows])
        low, high = np.percentile(share, [100 / 3, 200 / 3])
        for (y, x, window), s in zip(windows, share):
            if low < s < high:  # the middle third is ambiguous
                continue
            items.append({"image": _save_png(rgb[window], out / "images" / f"he_y{y}_x{x}.png"), "label": int(s >= high),
                          "source": _source(path)})
        extra = {"classes": ["few nuclei", "many nuclei"]}
    return {"splits": split_items(items, seed=SPLIT_SEED), "extra": extra}


def derive_pathology_cls(out: Path) -> dict[str, Any]:
    """Tiles of the held-out H&E image: many (1) or few (0) nuclei (upper / lower third of the nuclei share).

    Args:
        out: the task folder; tiles under ``images/``.

    Returns:
        ``{"splits": {...}, "extra": {"classes": [...]}}``.
    """
    return _derive_pathology(out, segmentation=False)


def derive_pathology_seg(out: Path) -> dict[str, Any]:
    """Tiles of the held-out H&E image and their nuclei masks (:func:`nuclei_mask`), PNG 0/255.

    Args:
        out: the task folder; tiles under ``images/``, masks under ``masks/``.

    Returns:
        ``{"splits": {...}, "extra": {"classes": [...], "mask_values": [0, 255]}}``.
    """
    return _derive_pathology(out, segmentation=True)
