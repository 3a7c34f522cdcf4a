"""Intensity recipes. MONAI covers them all, so this module defines nothing; use in a chain:

- CT, HU window to [0, 1]: ``ScaleIntensityRanged(keys, a_min=-1000, a_max=1000, b_min=0.0, b_max=1.0, clip=True)``.
- MRI, percentile clip + z-score: ``ScaleIntensityRangePercentilesd(keys, lower=0.5, upper=99.5, b_min=0.0,
  b_max=1.0, clip=True)`` then ``NormalizeIntensityd(keys)``. The linear map to [0, 1] does not change the
  z-score; ``b_min``/``b_max`` must be numbers, since ``clip=True`` with ``b_min=b_max=None`` makes MONAI
  call ``clamp(None, None)``, which raises.
- X-ray and pathology: the loaders (:class:`~medcoss_monai.transforms.LoadXRayd`,
  :class:`~medcoss_monai.transforms.LoadSlideTiled`) already return [0, 1].
"""

from __future__ import annotations

__all__: list[str] = []
