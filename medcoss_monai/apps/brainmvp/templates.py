"""Learnable modality templates of BrainMVP: one volume per MRI contrast in a fixed template space.

A template is read at the physical position of whatever it stands in for: a crop (or a whole
volume) with affine ``A`` (voxel -> world, mm) takes the template values at world points
``A @ [i, j, k, 1]``, mapped into the template's voxels by the inverse of the template space's
affine and sampled with ``grid_sample`` (trilinear, so the template gets gradients). Points
outside the template box read 0 (the background of images scaled to [0, 1]); nothing is clamped
into an index error, whatever the crop's size or position.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medcoss_monai.errors import BadInputError

__all__ = ["template_space_affine", "sample_at", "ModalityTemplates"]


def template_space_affine(spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """The voxel -> world affine of an axis-aligned RAS template box.

    Args:
        spacing: voxel size in mm per axis.
        origin: world position (mm) of voxel (0, 0, 0).

    Returns:
        A 4x4 float64 affine.
    """
    affine = np.eye(4)
    affine[:3, :3] = np.diag(np.asarray(spacing, dtype=np.float64))
    affine[:3, 3] = np.asarray(origin, dtype=np.float64)
    return affine


def sample_at(volume: torch.Tensor, volume_affine: torch.Tensor, affines: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Values of ``volume`` at the voxel centres of grids of shape ``size`` placed by ``affines``.

    Args:
        volume: ``(B, D0, D1, D2)`` (one volume per grid) or ``(D0, D1, D2)`` (shared).
        volume_affine: ``(4, 4)`` voxel -> world affine of ``volume``.
        affines: ``(B, 4, 4)`` voxel -> world affines of the grids (a crop's ``MetaTensor.affine``).
        size: the grid shape ``(d0, d1, d2)``.

    Returns:
        ``(B, 1, d0, d1, d2)``: trilinear samples, 0 outside the volume; differentiable w.r.t. ``volume``.
    """
    affines = affines.to(device=volume.device, dtype=torch.float64)
    batch = affines.shape[0]
    if volume.dim() == 3:
        volume = volume.unsqueeze(0).expand(batch, *volume.shape)
    dims = volume.shape[1:]
    axes = [torch.arange(s, dtype=torch.float64, device=volume.device) for s in size]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    grid = torch.cat([grid, torch.ones_like(grid[:, :1])], dim=1)  # (N, 4) homogeneous voxel indices
    to_volume = torch.linalg.inv(volume_affine.to(device=volume.device, dtype=torch.float64)) @ affines  # (B, 4, 4)
    points = (to_volume @ grid.T).transpose(1, 2)[..., :3]  # (B, N, 3) voxel indices in the volume
    extent = torch.tensor([max(s - 1, 1) for s in dims], dtype=torch.float64, device=volume.device)
    normalised = 2.0 * points / extent - 1.0
    # grid_sample's last axis lists (x, y, z) = (dim 2, dim 1, dim 0) of the volume
    normalised = normalised.flip(-1).reshape(batch, *size, 3).to(volume.dtype)
    return F.grid_sample(volume.unsqueeze(1), normalised, mode="bilinear", padding_mode="zeros", align_corners=True)


class ModalityTemplates(nn.Module):
    """One learnable template volume per contrast, in a fixed template space.

    Each contrast's template is its own parameter (``templates.<contrast>`` in the state dict), so an
    optimizer keeps state only for contrasts that were trained, and a contrast absent from the data
    stays at its initial value rather than drifting under weight decay.

    Args:
        contrasts: contrast names, in the order of the integer contrast indices used elsewhere.
        shape: template box shape in voxels.
        spacing: voxel size (mm).
        origin: world position (mm) of voxel (0, 0, 0).
        init_value: initial template intensity (inputs are scaled to [0, 1]).
    """

    def __init__(
        self,
        contrasts: Sequence[str],
        shape: Sequence[int],
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        origin: Sequence[float] = (-96.0, -132.0, -78.0),
        init_value: float = 0.0,
    ) -> None:
        super().__init__()
        if len(set(contrasts)) != len(contrasts) or not contrasts:
            raise BadInputError(f"--contrasts must be distinct names, got {list(contrasts)}")
        self.contrasts = tuple(contrasts)
        self.shape = tuple(int(s) for s in shape)
        self.templates = nn.ParameterDict(
            {c: nn.Parameter(torch.full(self.shape, float(init_value))) for c in self.contrasts}
        )
        # saved with the weights: whoever loads the templates knows where they are
        self.register_buffer("affine", torch.as_tensor(template_space_affine(spacing, origin)))

    def index(self, contrast: str) -> int:
        """The integer index of a contrast name."""
        if contrast not in self.contrasts:
            raise KeyError(f"no template for contrast '{contrast}' (templates: {list(self.contrasts)})")
        return self.contrasts.index(contrast)

    def volume(self, contrast: str | int) -> torch.Tensor:
        """The whole template of one contrast (name or index), ``(D0, D1, D2)``."""
        name = self.contrasts[contrast] if isinstance(contrast, int) else contrast
        return self.templates[name]

    def crop(self, contrast: torch.Tensor | Sequence[int], affines: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Each sample's contrast template at its grid's physical position.

        Args:
            contrast: ``(B,)`` contrast indices.
            affines: ``(B, 4, 4)`` voxel -> world affines of the grids.
            size: grid shape.

        Returns:
            ``(B, 1, *size)``.
        """
        idx = [int(i) for i in contrast]
        used = sorted(set(idx))
        out = torch.empty(len(idx), 1, *size, device=self.affine.device, dtype=self.volume(used[0]).dtype)
        for c in used:  # one grid_sample per contrast, so the gradient reaches only that template
            rows = [b for b, i in enumerate(idx) if i == c]
            out[rows] = sample_at(self.volume(c), self.affine, affines[rows], size)
        return out
