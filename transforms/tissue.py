"""Whole-slide helpers: a tissue mask and the locations of tissue tiles, read with MONAI's WSIReader.

Conventions (checked on ``cmu_small_region.svs`` against ``openslide.OpenSlide.read_region``):
``WSIReader.get_data(location=(y, x), size=(h, w), level=l)`` reads rows ``y:y+h`` and columns
``x:x+w`` and returns a ``(C, h, w)`` array; ``location`` is in level-0 pixels and ``size`` in pixels
of ``level``. OpenSlide itself takes ``(x, y)`` and ``(w, h)``; ``get_size`` returns ``(h, w)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from monai.utils import optional_import

# openslide-python is the backend of WSIReader(backend="openslide"); openslide-bin ships the C library.
_, has_openslide = optional_import("openslide")

__all__ = ["SLIDE_SUFFIXES", "is_slide", "tissue_mask", "tissue_tile_locations", "otsu_threshold"]

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif")
"""Suffixes of whole-slide images; a ``.tif`` / ``.tiff`` is one only when OpenSlide opens it (:func:`is_slide`)."""
PLAIN_TIFF_SUFFIXES = (".tif", ".tiff")


def is_slide(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a whole-slide image (read in tiles with WSIReader) rather than a plain tile.

    A TIFF is both a slide format and a tile format (NCT-CRC-HE-100K's 224 x 224 tiles are plain,
    striped TIFFs that OpenSlide does not open): it is a slide when OpenSlide recognises it (a tiled,
    pyramidal TIFF), else a tile that MONAI's ``LoadImage`` reads whole.

    Args:
        path: the file.

    Returns:
        True for a slide.
    """
    lower = str(path).lower()
    if not lower.endswith(SLIDE_SUFFIXES):
        return False
    if not lower.endswith(PLAIN_TIFF_SUFFIXES) or not has_openslide or not os.path.isfile(path):
        return True  # a missing file or library is reported by the slide reader, which names it
    import openslide

    return openslide.OpenSlide.detect_format(str(path)) is not None


def _reader():
    if not has_openslide:
        raise ImportError(
            "Reading slides needs openslide: `pip install openslide-python openslide-bin` "
            "(the second package provides the OpenSlide library)."
        )
    from monai.data import WSIReader

    return WSIReader(backend="openslide")


def _open(reader, slide_path: str | os.PathLike):
    path = Path(slide_path)
    if not path.is_file():
        raise FileNotFoundError(f"Slide '{path}' does not exist.")
    try:
        return reader.read(str(path))
    except Exception as e:  # openslide raises its own error types for unreadable files
        raise ValueError(f"Cannot open slide '{path}' with OpenSlide: {e}") from e


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values``: the cut maximising the between-class variance of a histogram.

    Args:
        values: any array of numbers.
        bins: histogram bins.

    Returns:
        the threshold (values strictly above it are the upper class).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    hist, edges = np.histogram(values, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)  # pixels at or below each cut
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centers)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centers[int(np.argmax(between))])


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1] of a channel-first RGB array: (max - min) / max, 0 where max is 0."""
    rgb = rgb[:3].astype(np.float32)
    cmax, cmin = rgb.max(axis=0), rgb.min(axis=0)
    return np.where(cmax > 0, (cmax - cmin) / np.maximum(cmax, 1e-6), 0.0)


def _is_slide(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in SLIDE_SUFFIXES


def _read_plain_image(path: str | os.PathLike) -> np.ndarray:
    """A PNG/JPEG tile as a channel-first (3, H, W) uint8 array (gray repeated, alpha dropped)."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Image '{p}' does not exist.")
    with Image.open(p) as im:
        rgb = np.asarray(im.convert("RGB"))
    return np.moveaxis(rgb, -1, 0)


def _level_image(slide_path: str | os.PathLike, level: int | None) -> tuple[np.ndarray, int, float, int]:
    """One whole level as (C, H, W) uint8, the level, its downsample and the number of levels.

    A plain image (PNG, JPEG) is a slide with one level.
    """
    if not _is_slide(slide_path):
        if level not in (None, 0):
            raise ValueError(f"'{slide_path}' is a plain image with one level; level {level} was asked for.")
        return _read_plain_image(slide_path), 0, 1.0, 1
    reader = _reader()
    wsi = _open(reader, slide_path)
    try:
        n_levels = reader.get_level_count(wsi)
        level = n_levels - 1 if level is None else int(level)
        if not 0 <= level < n_levels:
            raise ValueError(f"Slide '{slide_path}' has levels 0..{n_levels - 1}; level {level} was asked for.")
        image, _ = reader.get_data(wsi, level=level)  # (C, H, W) uint8, whole level
        downsample = float(reader.get_downsample_ratio(wsi, level))
    finally:
        wsi.close()
    return np.asarray(image), level, downsample, n_levels


def tissue_mask(slide_path: str | os.PathLike, level: int | None = None) -> tuple[np.ndarray, int, float]:
    """Tissue mask of a slide: Otsu's threshold on HSV saturation of one whole level.

    Stained tissue is saturated while glass background is near white or grey, whatever its
    brightness; when the level has almost no colour (a grayscale scan) the mask falls back on Otsu's
    threshold of the inverted grayscale (tissue darker than glass). A tile that is tissue
    throughout (no glass: its saturation has one mode) is all tissue.

    Args:
        slide_path: a slide OpenSlide can read (SVS, TIFF, NDPI, MRXS, ...) or a plain RGB image.
        level: pyramid level to threshold; None picks the lowest resolution (the cheapest to read).

    Returns:
        ``(mask, level, downsample)``: a bool ``(H, W)`` array for that level (True = tissue), the level
        used, and its downsample factor relative to level 0.
    """
    image, level, downsample, _ = _level_image(slide_path, level)
    sat = _saturation(image)
    if np.percentile(sat, 99) - np.percentile(sat, 1) > 0.05:
        threshold = otsu_threshold(sat)
        # glass is unsaturated; with none in the image Otsu would split tissue from tissue
        mask = sat > threshold if (sat < 0.1).mean() > 0.02 else np.ones(sat.shape, bool)
    else:
        gray = 255.0 - np.asarray(image[:3], dtype=np.float32).mean(axis=0)
        mask = gray > otsu_threshold(gray)
    return mask, level, downsample


def tissue_tile_locations(
    slide_path: str | os.PathLike, tile_size: int = 224, level: int = 0, min_tissue: float = 0.5
) -> list[tuple[int, int]]:
    """Non-overlapping tiles of a slide level that are mostly tissue.

    The level is cut into a grid of ``tile_size`` x ``tile_size`` tiles (partial tiles at the right and
    bottom edges are dropped); a tile is kept when the tissue mask covers at least ``min_tissue`` of it.

    Args:
        slide_path: the slide, or a plain RGB image (one level).
        tile_size: tile side in pixels of ``level``.
        level: the level the tiles are read at.
        min_tissue: minimum tissue fraction in [0, 1].

    Returns:
        ``(y, x)`` of each kept tile's top-left corner in level-0 pixels (the ``location`` that
        ``WSIReader.get_data(..., size=(tile_size, tile_size), level=level)`` takes), row by row.
    """
    if _is_slide(slide_path):
        reader = _reader()
        wsi = _open(reader, slide_path)
        try:
            n_levels = reader.get_level_count(wsi)
            if not 0 <= level < n_levels:
                raise ValueError(f"Slide '{slide_path}' has levels 0..{n_levels - 1}; level {level} was asked for.")
            height, width = reader.get_size(wsi, level)
            tile_ds = float(reader.get_downsample_ratio(wsi, level))
        finally:
            wsi.close()
    else:
        (_, height, width), tile_ds = _read_plain_image(slide_path).shape, 1.0
        if level != 0:
            raise ValueError(f"'{slide_path}' is a plain image with one level; level {level} was asked for.")
    mask, _, mask_ds = tissue_mask(slide_path)
    locations = []
    for row in range(int(height) // tile_size):
        for col in range(int(width) // tile_size):
            # the tile in level-0 pixels, then in mask pixels
            y0, x0 = row * tile_size * tile_ds, col * tile_size * tile_ds
            span = tile_size * tile_ds
            r0, c0 = int(y0 / mask_ds), int(x0 / mask_ds)
            r1 = max(int(round((y0 + span) / mask_ds)), r0 + 1)
            c1 = max(int(round((x0 + span) / mask_ds)), c0 + 1)
            if mask[r0:r1, c0:c1].mean() >= min_tissue:
                locations.append((int(round(y0)), int(round(x0))))
    return locations
