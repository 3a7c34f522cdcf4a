"""Transforms of multi-contrast brain-MRI studies (BrainMVP): stacking, contrast pairs, block masks.

A study item holds its contrasts under ``image`` (``{"t1": path, "t2": path}``). :class:`SplitStudyd`
lifts them to top-level keys so MONAI's ``LoadImaged`` / ``Orientationd`` / ``Spacingd`` (with
``allow_missing_keys``) read them; :class:`StackContrastsd` stacks them into one multi-channel
``image`` on the first contrast's grid. Per-contrast percentile scaling is MONAI's
``ScaleIntensityRangePercentilesd(channel_wise=True)``. For pre-training, :class:`RandContrastPaird`
picks the input contrast and another one of the study, and :class:`RandBlockMaskd` draws the blocks
to replace: one mask per view, drawn independently as in the reference. The fine-tuning side (templates filling missing contrasts, random substitution) is in
:mod:`medcoss_monai.apps.brainmvp.template_fill`. Every crop keeps its ``MetaTensor`` affine: templates
are read at the crop's physical position.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import zlib

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform, ResampleToMatch

from medcoss_monai.errors import BadInputError

__all__ = [
    "CONTRASTS",
    "SplitStudyd",
    "StackContrastsd",
    "RandContrastPaird",
    "CentreOnPointd",
    "REGISTERED_KEY",
    "STUDY_ID_KEY",
    "block_mask",
    "RandBlockMaskd",
]

CONTRASTS = ("t1", "t1ce", "t2", "flair", "pd", "mra", "dwi", "adc")
"""The contrast names of BrainMVP (a study holds any subset)."""

PRESENT_KEY = "present"
"""Item key: per channel of the stacked ``image``, whether the study had that contrast."""
REGISTERED_KEY = "registered"
"""Study key: True when the study is already in the template space (its affine is kept, never centred)."""
STUDY_ID_KEY = "study_id"
"""Item key: an integer id of the crop's study (crops of one study are not each other's InfoNCE negatives)."""


def _plain(x: Any) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)


class SplitStudyd(MapTransform):
    """``{"image": {"t1": p1, "t2": p2}}`` -> ``{"t1": p1, "t2": p2, "contrasts": ["t1", "t2"]}``.

    Args:
        contrasts: the allowed contrast names.
        image_key: key of the study's contrast mapping.
        missing: contrasts to drop (a user segmenting without them: they are not even read).
    """

    def __init__(self, contrasts: Sequence[str] = CONTRASTS, image_key: str = "image", missing: Sequence[str] | str = ()) -> None:
        super().__init__([image_key])
        self.contrasts = tuple(contrasts)
        self.missing = {missing} if isinstance(missing, str) and missing else set(missing or ())
        unknown = self.missing - set(self.contrasts)
        if unknown:
            raise BadInputError(f"--missing {sorted(unknown)}: not among the contrasts {list(self.contrasts)}")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        study = d.pop(self.keys[0])
        if not isinstance(study, Mapping) or not study:
            raise BadInputError(f"study {d.get('study', study)!r}: 'image' must map contrast names to files, got {study!r}")
        unknown = sorted(set(study) - set(self.contrasts))
        if unknown:
            raise BadInputError(f"study {d.get('study', '?')}: unknown contrast(s) {unknown} (known: {list(self.contrasts)})")
        kept = [c for c in self.contrasts if c in study and c not in self.missing]
        d.update({c: study[c] for c in kept})
        d["contrasts"] = kept
        return d


class StackContrastsd(MapTransform):
    """Stack a study's loaded contrasts into one multi-channel ``image`` on the first contrast's grid.

    Args:
        contrasts: channel order; with ``all_channels`` every name gets a channel (zeros where the study
            lacks it, flagged False in ``present``), otherwise only the study's contrasts are stacked.
        all_channels: one channel per name of ``contrasts`` (fine-tuning) or per present contrast (pre-training).
        output_key: key of the stacked image.
    """

    def __init__(self, contrasts: Sequence[str] = CONTRASTS, all_channels: bool = False, output_key: str = "image") -> None:
        super().__init__(list(contrasts), allow_missing_keys=True)
        self.contrasts = tuple(contrasts)
        self.all_channels = all_channels
        self.output_key = output_key
        self.resample = ResampleToMatch(mode="bilinear")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        present = [c for c in self.contrasts if c in d]
        if not present:
            raise BadInputError(f"study {d.get('study', '?')}: none of the contrasts {list(self.contrasts)} is present")
        ref = d[present[0]]
        channels = {}
        for c in present:
            img = d.pop(c)
            if img.shape[1:] != ref.shape[1:] or not torch.allclose(torch.as_tensor(img.affine), torch.as_tensor(ref.affine), atol=1e-3):
                img = self.resample(img, img_dst=ref)  # contrasts of one study on one grid
            channels[c] = _plain(img[:1]).float()
        names = list(self.contrasts) if self.all_channels else present
        zeros = torch.zeros_like(channels[present[0]])
        stacked = torch.cat([channels.get(c, zeros) for c in names])
        meta = {k: v for k, v in ref.meta.items() if k != "affine"} if isinstance(ref, MetaTensor) else {}
        d[self.output_key] = MetaTensor(stacked, affine=torch.as_tensor(ref.affine).clone(), meta=meta)
        d["contrasts"] = names
        d[PRESENT_KEY] = torch.tensor([c in channels for c in names])
        return d


class CentreOnPointd(MapTransform):
    """Translate a volume's affine so its centre lies at ``point`` (mm): a crude alignment to the template space.

    For studies not registered to the template space (scanner coordinates), so that their crops read the
    templates where a brain is. A study flagged ``registered`` (:data:`REGISTERED_KEY`, e.g. the MNI
    slabs of the sample fine-tuning task) keeps its affine. Pre-training and fine-tuning take the one
    ``centre_studies`` of ``bundles/common/brainmvp.json``, so a study is read at the template positions
    the same way in both.

    Args:
        keys: the images (their ``MetaTensor`` affine is changed, not their voxels).
        point: world position (mm) the centre is moved to (the template box's centre).
        registered_key: item key of the flag that leaves a study as it is.
    """

    def __init__(self, keys: KeysCollection, point: Sequence[float], registered_key: str = REGISTERED_KEY) -> None:
        super().__init__(keys)
        self.point = torch.as_tensor(point, dtype=torch.float64)
        self.registered_key = registered_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if bool(d.get(self.registered_key, False)):
            return d
        for key in self.key_iterator(d):
            img = d[key]
            affine = torch.as_tensor(img.affine, dtype=torch.float64).clone()
            centre = affine[:3, :3] @ ((torch.tensor(img.shape[1:], dtype=torch.float64) - 1) / 2) + affine[:3, 3]
            affine[:3, 3] += self.point - centre
            img = img.clone()
            img.affine = affine
            d[key] = img
        return d


class RandContrastPaird(RandomizableTransform, MapTransform):
    """Pick the input contrast of a study and another one to fill view B.

    Writes ``image`` (the input contrast, 1 channel, affine kept), ``other`` (another contrast, or
    zeros for a single-contrast study), ``has_other``, ``contrast`` (index into ``contrasts``),
    ``affine`` (the crop's voxel -> world affine as a plain tensor, for batching) and ``study_id``
    (a hash of the item's ``study`` name; an item without one gets a random id of its own).

    Args:
        contrasts: the model's contrast list (indices point into it).
        image_key: key of the stacked study (channels named by ``data["contrasts"]``).
    """

    def __init__(self, contrasts: Sequence[str] = CONTRASTS, image_key: str = "image") -> None:
        MapTransform.__init__(self, [image_key])
        RandomizableTransform.__init__(self, prob=1.0)
        self.contrasts = tuple(contrasts)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        img = d[self.keys[0]]
        names = list(d["contrasts"])
        unknown = [n for n in names if n not in self.contrasts]
        if unknown:
            raise BadInputError(f"study {d.get('study', '?')}: contrast(s) {unknown} have no template (model contrasts: {list(self.contrasts)})")
        m = int(self.R.randint(len(names)))
        rest = [k for k in range(len(names)) if k != m]
        o = int(rest[self.R.randint(len(rest))]) if rest else None
        affine = torch.as_tensor(img.affine if isinstance(img, MetaTensor) else np.eye(4), dtype=torch.float64)
        d[self.keys[0]] = img[m : m + 1]
        d["other"] = img[o : o + 1] if o is not None else torch.zeros_like(img[:1])
        d["has_other"] = torch.tensor(o is not None)
        d["contrast"] = torch.tensor(self.contrasts.index(names[m]))
        d["affine"] = affine
        d[STUDY_ID_KEY] = torch.tensor(self._study_id(d.get("study")), dtype=torch.int64)
        return d

    def _study_id(self, study: Any) -> int:
        if study is None:
            return -1 - int(self.R.randint(2**31 - 1))  # negative: never equal to a name's hash
        return zlib.crc32(str(study).encode("utf-8"))


def block_mask(size: Sequence[int], block: int, ratio: float, rng: np.random.RandomState) -> np.ndarray:
    """A bool mask of ``size`` made of ``block``-sided cubes, ``round(ratio * n_blocks)`` of them True.

    Args:
        size: spatial size, each side a multiple of ``block``.
        block: block side in voxels.
        ratio: fraction of blocks masked.
        rng: random state.

    Returns:
        ``(1, *size)`` bool array.
    """
    if any(s % block for s in size):
        raise BadInputError(f"crop size {tuple(size)} (roi_size) is not a multiple of the block size {block} (block_size)")
    grid = [s // block for s in size]
    n = int(np.prod(grid))
    flat = np.zeros(n, bool)
    flat[rng.permutation(n)[: int(round(ratio * n))]] = True
    mask = flat.reshape(grid)
    for axis in range(len(grid)):
        mask = np.repeat(mask, block, axis=axis)
    return mask[None]


class RandBlockMaskd(RandomizableTransform, MapTransform):
    """Draw the blocks each view replaces (BrainMVP: 8^3 blocks, 80%) into ``mask_key`` and ``mask_b_key``.

    The reference draws the mask anew for every view (BrainMVP ``utils/ops.py``: ``Uniform_block_replace``
    calls ``torch.randperm`` per call), so view A and view B hide different blocks.

    Args:
        keys: the image whose spatial size the masks take.
        block: block side.
        ratio: fraction of blocks replaced.
        mask_key: output key of view A's mask.
        independent: draw view B's mask independently (reference); False: view B reuses view A's.
        mask_b_key: output key of view B's mask.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        block: int = 8,
        ratio: float = 0.8,
        mask_key: str = "mask",
        independent: bool = True,
        mask_b_key: str = "mask_b",
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=1.0)
        if not 0.0 <= ratio <= 1.0:
            raise BadInputError(f"--mask_ratio must be in [0, 1], got {ratio}")
        self.block, self.ratio, self.mask_key = int(block), float(ratio), mask_key
        self.independent, self.mask_b_key = bool(independent), mask_b_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        size = d[self.keys[0]].shape[1:]
        mask = torch.from_numpy(block_mask(size, self.block, self.ratio, self.R))
        d[self.mask_key] = mask
        d[self.mask_b_key] = torch.from_numpy(block_mask(size, self.block, self.ratio, self.R)) if self.independent else mask.clone()
        return d
