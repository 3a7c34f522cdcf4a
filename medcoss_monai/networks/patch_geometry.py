"""How an encoder with ``patch_embed_2d``/``patch_embed_3d`` cuts images into patches, for its pretext heads.

:class:`PatchGeometry` gives an encoder the methods the MAE decoder, its target and the reconstruction
pictures use (``patch_size``, ``patch_dim``, ``grid_size``, ``grid_size_of``, ``patchify``, ``unpatchify``)
from its two :class:`~medcoss_monai.networks.encoder.PatchEmbed` projections, so an encoder other than
:class:`~medcoss_monai.networks.UnifiedEncoder` (the reference architecture of the released weights) can be
pre-trained further by :class:`~medcoss_monai.networks.MedCoSSModel`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from medcoss_monai.networks.encoder import PatchEmbed, patchify, unpatchify

__all__ = ["PatchGeometry"]


class PatchGeometry:
    """Patch geometry of an encoder holding ``patch_embed_2d`` and ``patch_embed_3d``.

    ``default_grid_2d``/``default_grid_3d`` (class or instance attributes) are the grids ``grid_size``
    reports: the grid a decoder's position table is built for (other grids are interpolated).
    A 1-channel 2D image is read as 3 equal channels when the 2D projection takes 3, as ``embed_image`` does.
    """

    patch_embed_2d: PatchEmbed
    patch_embed_3d: PatchEmbed
    default_grid_2d: tuple[int, ...] = (14, 14)
    default_grid_3d: tuple[int, ...] = (12, 12, 1)

    def _patch_embed(self, kind: str) -> PatchEmbed:
        if kind not in ("2d", "3d"):
            raise ValueError(f"input kind {kind!r} has no patches (expected '2d' or '3d').")
        return self.patch_embed_2d if kind == "2d" else self.patch_embed_3d

    def patch_size(self, kind: str) -> tuple[int, ...]:
        """Patch size of ``"2d"`` or ``"3d"`` inputs."""
        return tuple(self._patch_embed(kind).patch_size)

    def patch_dim(self, kind: str) -> int:
        """Values per flattened patch (patch voxels x channels of the projection)."""
        pe = self._patch_embed(kind)
        return math.prod(pe.patch_size) * pe.in_channels

    def grid_size(self, kind: str) -> tuple[int, ...]:
        """The grid a pretext decoder's position table is built for (``default_grid_2d``/``_3d``)."""
        self._patch_embed(kind)
        return tuple(self.default_grid_2d if kind == "2d" else self.default_grid_3d)

    def grid_size_of(self, x: torch.Tensor) -> tuple[int, ...]:
        """Token grid of this input: ``(L,)`` for text, the patch grid of the image's size."""
        kind = self.kind_of(x)  # type: ignore[attr-defined]
        return (int(x.shape[1]),) if kind == "text" else self._patch_embed(kind).grid_of(x.shape[2:])

    def as_projected(self, x: torch.Tensor) -> torch.Tensor:
        """The image with the channels its projection reads (a grey 2D image repeated to 3 channels)."""
        if x.ndim == 4 and x.shape[1] == 1 and self.patch_embed_2d.in_channels == 3:
            return x.expand(-1, 3, -1, -1)
        return x

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) images -> (B, L, patch_dim) patches in token order."""
        return patchify(self.as_projected(x), self.patch_size(self.kind_of(x)))  # type: ignore[attr-defined]

    def unpatchify(self, patches: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        """(B, L, patch_dim) patches on ``grid`` (2 or 3 axes) -> images."""
        return unpatchify(patches, grid, self.patch_size("2d" if len(grid) == 2 else "3d"))
