"""The shared part of a random dictionary transform that draws through its array twin (MONAI's array /
dictionary pair): seeding the dictionary transform seeds the array transform it holds with the same state."""

from __future__ import annotations

import numpy as np
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["RandomizableTwind"]


class RandomizableTwind(RandomizableTransform, MapTransform):
    """A random dictionary transform whose draws are made by the array transform held in ``array_attribute``.

    Subclasses set the class attribute ``array_attribute`` (e.g. ``"masker"``) and create that transform in
    ``__init__``; :meth:`set_random_state` then seeds both, so a seeded dataset gives the same draws as
    the array transform seeded alone.
    """

    array_attribute: str = ""

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandomizableTwind:
        """Seed this transform and its array twin.

        Args:
            seed: see ``Randomizable.set_random_state``.
            state: see ``Randomizable.set_random_state``.

        Returns:
            This transform.
        """
        super().set_random_state(seed, state)
        getattr(self, self.array_attribute).set_random_state(seed, state)
        return self
