"""Two independently augmented views of one image, for MoCo (MUSCLE step 1).

The augmentations themselves are MONAI's (``RandResizedCrop`` of this package, ``RandFlip``,
``RandScaleIntensity`` for brightness, ``RandScaleIntensityFixedMean`` for contrast,
``RandGaussianSmooth`` for blur), listed in ``bundles/muscle_mdmoco.json`` with MoCo v2's settings;
what MONAI lacks is a dictionary transform that runs one such chain twice with independent draws
(a MONAI dictionary transform draws once and applies the draw to every key). The images are already
grayscale (one channel); the bundle repeats the channel to three after augmenting.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform, Randomizable
from monai.utils import ensure_tuple

from medcoss_monai.errors import BadInputError

__all__ = ["TwoViews", "TwoViewsd"]


def _as_compose(transform: Callable | Sequence[Callable]) -> Compose:
    return transform if isinstance(transform, Compose) else Compose(list(ensure_tuple(transform)))


class TwoViews(Randomizable):
    """Apply one random augmentation chain twice to an image, with independent draws.

    Args:
        transform: an array transform or a list of them (run as a ``Compose``).

    Returns (when called): the pair ``(view_1, view_2)``.
    """

    def __init__(self, transform: Callable | Sequence[Callable]) -> None:
        self.transform = _as_compose(transform)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> TwoViews:
        """Seed this transform and, from it, the chain (so a seeded dataset gives reproducible views)."""
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed=int(self.R.randint(0, 2**31 - 1)))
        return self

    def randomize(self, data: Any = None) -> None:
        """Nothing to draw here: the chain draws anew on each of its two calls."""

    def __call__(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(img), self.transform(img)


class TwoViewsd(Randomizable, MapTransform):
    """Dictionary twin of :class:`TwoViews`: ``data[key]`` becomes view 1, ``data[name]`` view 2.

    Args:
        keys: the image key(s).
        transform: array transform(s) applied to each view.
        names: keys of the second views, one per key (MUSCLE: ``"key_image"``).
        allow_missing_keys: skip absent keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: Callable | Sequence[Callable],
        names: KeysCollection = ("key_image",),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.names = ensure_tuple(names)
        if len(self.names) != len(self.keys):
            raise BadInputError(f"TwoViewsd needs one name per key, got keys {self.keys} and names {self.names}.")
        self.views = TwoViews(transform)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> TwoViewsd:
        """Seed this transform and the chain."""
        super().set_random_state(seed, state)
        self.views.set_random_state(seed=int(self.R.randint(0, 2**31 - 1)))
        return self

    def randomize(self, data: Any = None) -> None:
        """Nothing to draw here (see :class:`TwoViews`)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, name in self.key_iterator(d, self.names):
            d[key], d[name] = self.views(d[key])
        return d
