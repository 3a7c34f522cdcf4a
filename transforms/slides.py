"""Pathology tiles: a region of an SVS/TIFF slide through ``monai.data.WSIReader``, or a PNG/JPEG tile.

Two flavours, because MONAI's ``CacheDataset`` stops caching at the first random transform:

- :class:`LoadSlideTiled` is deterministic: it reads the tile at the item's ``location`` (cacheable).
- :class:`RandLoadSlideTiled` also accepts items without ``location`` and then draws a tissue tile
  at random every time (for datalists that list whole slides only).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import PILReader, WSIReader
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import ensure_tuple_rep

from .tissue import is_slide, tissue_tile_locations

__all__ = ["LoadSlideTile", "LoadSlideTiled", "RandLoadSlideTile", "RandLoadSlideTiled"]


class LoadSlideTile(Transform):
    """Read one tile as a (3, H, W) float32 tensor in [0, 1].

    A slide is read with ``WSIReader(backend=backend)`` at ``location`` (level-0 (y, x) of the top-left
    corner, MONAI's convention), ``size`` (H, W) in pixels of ``level``. A plain image file (PNG,
    JPEG, ...) is read with ``PILReader``, whole, or, given a ``location``, the ``size`` region there
    (a one-level slide). Gray tiles are repeated to 3 channels and alpha is dropped.

    Opened slides are kept per process (``max_open_slides`` most recent) because opening a large
    pyramid costs far more than reading a tile; the handles are dropped when the transform is pickled
    or copied into a DataLoader worker, which reopens its own.

    Args:
        size: default tile size (H, W) when the call gives none.
        level: default pyramid level when the call gives none.
        backend: ``WSIReader`` backend (``"openslide"``, ``"cucim"``, ``"tifffile"``).
        max_open_slides: how many opened slides to keep per process (0: reopen every call).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the tile does not fit inside the slide level, or the file cannot be read.
    """

    def __init__(
        self,
        size: Sequence[int] | int = (224, 224),
        level: int = 0,
        backend: str = "openslide",
        max_open_slides: int = 8,
    ):
        self.size = ensure_tuple_rep(size, 2)
        self.level = int(level)
        self.backend = backend
        self.max_open_slides = int(max_open_slides)
        self.reader = WSIReader(backend=backend)
        self._pil = PILReader(reverse_indexing=False)  # (H, W[, C]) as the image is stored
        self._handles: OrderedDict[str, Any] = OrderedDict()
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = OrderedDict()  # slide handles are process-local C objects
        return state

    def _slide(self, path: str) -> Any:
        if self._pid != os.getpid():  # forked worker: never share the parent's handles
            self._handles, self._pid = OrderedDict(), os.getpid()
        if path in self._handles:
            self._handles.move_to_end(path)
            return self._handles[path]
        try:
            wsi = self.reader.read(path)
        except Exception as e:
            raise ValueError(f"Cannot open slide '{path}' with WSIReader(backend='{self.backend}'): {e}") from e
        if self.max_open_slides > 0:
            self._handles[path] = wsi
            while len(self._handles) > self.max_open_slides:
                _, old = self._handles.popitem(last=False)
                _close(old)
        return wsi

    def __call__(  # type: ignore[override]
        self,
        filename: str | os.PathLike,
        location: Sequence[int] | None = None,
        size: Sequence[int] | int | None = None,
        level: int | None = None,
    ) -> torch.Tensor:
        path = Path(filename)
        if not path.is_file():
            raise FileNotFoundError(f"Pathology file '{path}' does not exist.")
        if not is_slide(path):
            tile = self._load_tile(path)
            return tile if location is None else self._crop(tile, path, location, size)
        if location is None:
            raise ValueError(
                f"Slide '{path}': the item has no 'location'; use RandLoadSlideTiled to draw tissue tiles."
            )
        size = self.size if size is None else ensure_tuple_rep(size, 2)
        level = self.level if level is None else int(level)
        wsi = self._slide(str(path))
        try:
            self._check_fits(wsi, path, location, size, level)
            tile, _ = self.reader.get_data(wsi, location=tuple(int(v) for v in location), size=tuple(size), level=level)
        finally:
            if self.max_open_slides <= 0:
                _close(wsi)
        tile = np.asarray(tile)
        if not tile.flags.writeable:  # openslide regions come as read-only buffers
            tile = tile.copy()
        return _to_rgb_unit(torch.as_tensor(tile), path, 255.0)

    def _check_fits(self, wsi: Any, path: Path, location: Sequence[int], size: Sequence[int], level: int) -> None:
        n_levels = self.reader.get_level_count(wsi)
        if not 0 <= level < n_levels:
            raise ValueError(f"Slide '{path}' has levels 0..{n_levels - 1}; level {level} was asked for.")
        height0, width0 = self.reader.get_size(wsi, 0)
        ds = float(self.reader.get_downsample_ratio(wsi, level))
        y, x = int(location[0]), int(location[1])
        if y < 0 or x < 0 or y + size[0] * ds > height0 + 1e-6 or x + size[1] * ds > width0 + 1e-6:
            raise ValueError(
                f"Tile at location (y, x)=({y}, {x}) of size {tuple(size)} at level {level} does not fit slide "
                f"'{path}' of level-0 size (H, W)=({height0}, {width0})."
            )

    def _crop(self, image: torch.Tensor, path: Path, location: Sequence[int], size: Sequence[int] | int | None) -> torch.Tensor:
        """The ``size`` region at ``location`` (y, x) of a plain image: a one-level slide."""
        h, w = self.size if size is None else ensure_tuple_rep(size, 2)
        y, x = int(location[0]), int(location[1])
        height, width = image.shape[-2:]
        if y < 0 or x < 0 or y + h > height or x + w > width:
            raise ValueError(
                f"Tile at location (y, x)=({y}, {x}) of size {(h, w)} does not fit image '{path}' of size (H, W)=({height}, {width})."
            )
        return image[:, y : y + h, x : x + w].clone()

    def _load_tile(self, path: Path) -> torch.Tensor:
        try:
            array, meta = self._pil.get_data(self._pil.read(str(path)))
        except Exception as e:
            raise ValueError(f"Cannot read pathology tile '{path}': {e}") from e
        array = np.array(array)  # writable copy of PIL's buffer
        array = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
        scale = 65535.0 if str(meta.get("mode", "")).startswith("I") else 255.0
        return _to_rgb_unit(torch.as_tensor(array), path, scale)


def _close(wsi: Any) -> None:
    close = getattr(wsi, "close", None)
    if callable(close):
        close()


def _to_rgb_unit(img: torch.Tensor, path: Path, scale: float) -> torch.Tensor:
    """(C, H, W) integer tile -> (3, H, W) float32 in [0, 1]: drop alpha, repeat gray."""
    if img.ndim != 3:
        raise ValueError(f"Pathology tile from '{path}' has shape {tuple(img.shape)}; expected (C, H, W).")
    if img.shape[0] in (2, 4):
        img = img[:-1]
    if img.shape[0] == 1:
        img = img.repeat(3, 1, 1)
    if img.shape[0] != 3:
        raise ValueError(f"Pathology tile from '{path}' has {img.shape[0]} channels; expected gray, RGB or RGBA.")
    return (img.float() / scale).clamp(0.0, 1.0)


class LoadSlideTiled(MapTransform):
    """Dictionary twin of :class:`LoadSlideTile`: replaces ``item[key]`` (a path) with the tile.

    The tile is read at ``item[location_key]`` with ``item[size_key]`` and ``item[level_key]`` when
    present, else the defaults ``size``/``level``.

    Args:
        keys: keys holding slide or tile paths (normally ``"image"``).
        size, level, backend, max_open_slides: see :class:`LoadSlideTile`.
        location_key, size_key, level_key: item keys of the tile geometry.
        allow_missing_keys: see ``MapTransform``.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        size: Sequence[int] | int = (224, 224),
        level: int = 0,
        backend: str = "openslide",
        max_open_slides: int = 8,
        location_key: str = "location",
        size_key: str = "size",
        level_key: str = "level",
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.loader = LoadSlideTile(size=size, level=level, backend=backend, max_open_slides=max_open_slides)
        self.location_key, self.size_key, self.level_key = location_key, size_key, level_key

    def _location(self, d: Mapping, path: str, size: Sequence[int], level: int) -> Sequence[int] | None:
        return d.get(self.location_key)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            size = ensure_tuple_rep(d.get(self.size_key) or self.loader.size, 2)
            level = int(d[self.level_key]) if d.get(self.level_key) is not None else self.loader.level
            location = self._location(d, str(d[key]), size, level)
            d[key] = self.loader(d[key], location=location, size=size, level=level)
        return d


class RandLoadSlideTile(RandomizableTransform):
    """Read a random tissue tile of a slide: :class:`LoadSlideTile` at a location drawn from the tissue grid.

    Tissue tiles come from :func:`medcoss_monai.transforms.tissue.tissue_tile_locations` (Otsu's threshold on
    saturation of the lowest level, non-overlapping grid); the grid is computed once per
    (slide, size, level) and kept.

    Args:
        size, level, backend, max_open_slides: see :class:`LoadSlideTile`.
        min_tissue: least tissue fraction of a tile.

    Raises:
        ValueError: the slide has no tile with enough tissue.
    """

    def __init__(
        self,
        size: Sequence[int] | int = (224, 224),
        level: int = 0,
        backend: str = "openslide",
        max_open_slides: int = 8,
        min_tissue: float = 0.5,
    ):
        RandomizableTransform.__init__(self, prob=1.0)
        self.loader = LoadSlideTile(size=size, level=level, backend=backend, max_open_slides=max_open_slides)
        self.min_tissue = float(min_tissue)
        self._grids: dict[tuple[str, int, int], list[tuple[int, int]]] = {}
        self._location: tuple[int, int] | None = None

    def tissue_locations(self, path: str, size: Sequence[int], level: int) -> list[tuple[int, int]]:
        """Level-0 (y, x) of the tissue tiles of ``path`` that can hold a tile of ``size`` at ``level``."""
        side = int(max(size))  # the grid is square; a grid cell of the longer side holds the tile
        key = (str(path), side, int(level))
        if key not in self._grids:
            self._grids[key] = tissue_tile_locations(path, tile_size=side, level=level, min_tissue=self.min_tissue)
        if not self._grids[key]:
            raise ValueError(
                f"Slide '{path}' has no {side}x{side} tile at level {level} with tissue >= {self.min_tissue}."
            )
        return self._grids[key]

    def randomize(self, locations: Sequence[tuple[int, int]]) -> None:  # type: ignore[override]
        super().randomize(None)
        self._location = tuple(locations[self.R.randint(len(locations))])  # type: ignore[assignment]

    def __call__(  # type: ignore[override]
        self,
        filename: str | os.PathLike,
        location: Sequence[int] | None = None,
        size: Sequence[int] | int | None = None,
        level: int | None = None,
        randomize: bool = True,
    ) -> torch.Tensor:
        """Read the tile at ``location``, or at a random tissue location when it is None."""
        size = self.loader.size if size is None else ensure_tuple_rep(size, 2)
        level = self.loader.level if level is None else int(level)
        if location is None and is_slide(filename):
            if randomize:
                self.randomize(self.tissue_locations(str(filename), size, level))
            location = self._location
        return self.loader(filename, location=location, size=size, level=level)


class RandLoadSlideTiled(RandomizableTransform, LoadSlideTiled):
    """Dictionary twin of :class:`RandLoadSlideTile`: the item's ``location`` when present, else a random tissue tile.

    Args:
        keys, size, level, backend, max_open_slides, location_key, size_key, level_key, allow_missing_keys:
            see :class:`LoadSlideTiled`.
        min_tissue: see :class:`RandLoadSlideTile`.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        size: Sequence[int] | int = (224, 224),
        level: int = 0,
        backend: str = "openslide",
        max_open_slides: int = 8,
        min_tissue: float = 0.5,
        location_key: str = "location",
        size_key: str = "size",
        level_key: str = "level",
        allow_missing_keys: bool = False,
    ):
        LoadSlideTiled.__init__(
            self, keys, size, level, backend, max_open_slides, location_key, size_key, level_key, allow_missing_keys
        )
        RandomizableTransform.__init__(self, prob=1.0)
        self.picker = RandLoadSlideTile(
            size=size, level=level, backend=backend, max_open_slides=0, min_tissue=min_tissue
        )
        self.picker.loader = self.loader  # one set of open handles

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandLoadSlideTiled:
        super().set_random_state(seed, state)
        self.picker.set_random_state(seed, state)
        return self

    def _location(self, d: Mapping, path: str, size: Sequence[int], level: int) -> Sequence[int] | None:
        if d.get(self.location_key) is not None:
            return d[self.location_key]
        if not is_slide(path):
            return None  # a plain tile without a location is read whole
        self.picker.randomize(self.picker.tissue_locations(path, size, level))
        return self.picker._location
