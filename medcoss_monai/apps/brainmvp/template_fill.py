"""BrainMVP fine-tuning transforms: modality templates read from a stage's ``model.pt``, filling the
contrasts a study lacks (:class:`TemplateFilld`) and replacing random present ones
(:class:`RandTemplateSubstituted`, augmentation for missing contrasts), at each crop's physical position.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform

from medcoss_monai.apps.brainmvp.templates import sample_at
from medcoss_monai.apps.brainmvp.multicontrast import PRESENT_KEY
from medcoss_monai.errors import BadInputError

__all__ = ["TemplateBank", "TemplateFilld", "RandTemplateSubstituted"]


class TemplateBank:
    """Modality templates read from a BrainMVP ``model.pt`` (``weights_only``), clipped to the inputs' [0, 1] range.

    Args:
        path: the stage's ``model.pt``.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from medcoss_monai.apps.brainmvp.model import TEMPLATES_PREFIX
        from medcoss_monai.networks.checkpoint import load_state

        state = load_state(path, "BrainMVP model.pt")
        prefix = TEMPLATES_PREFIX + "templates."
        self.volumes = {k[len(prefix):]: v.float().clamp(0, 1) for k, v in state.items() if k.startswith(prefix)}
        affine = state.get(TEMPLATES_PREFIX + "affine")
        if not self.volumes or affine is None:
            raise BadInputError(f"{path}: holds no modality templates; it is not a BrainMVP stage's model.pt.")
        self.affine = affine.double()
        self.path = str(path)

    def at(self, contrast: str, affine: Any, size: Sequence[int]) -> torch.Tensor:
        """The template of ``contrast`` on a grid of ``size`` placed by ``affine``: ``(1, *size)``."""
        if contrast not in self.volumes:
            raise BadInputError(f"{self.path}: has no template for '{contrast}' (it has {sorted(self.volumes)})")
        aff = torch.as_tensor(np.asarray(affine), dtype=torch.float64)[None]
        with torch.no_grad():
            return sample_at(self.volumes[contrast], self.affine, aff, list(size))[0]


def _fill(img: MetaTensor, channel: int, value: torch.Tensor) -> MetaTensor:
    out = img.clone()
    out[channel] = value.to(out.dtype)
    return out


class TemplateFilld(MapTransform):
    """Fill the channels of contrasts a study lacks: with their template (``mode="template"``) or zeros.

    Args:
        templates: a :class:`TemplateBank` (or None for ``mode="zero"``).
        mode: ``"template"`` or ``"zero"``.
        image_key: the stacked image (all channels, ``present`` flags from :class:`StackContrastsd`).
    """

    def __init__(self, templates: TemplateBank | None, mode: str = "template", image_key: str = "image") -> None:
        super().__init__([image_key])
        if mode not in ("template", "zero"):
            raise BadInputError(f"--fill must be 'template' or 'zero', got {mode!r}")
        if mode == "template" and templates is None:
            raise BadInputError("--fill template needs the templates: give --templates_ckpt (a BrainMVP stage's model.pt)")
        self.templates, self.mode = templates, mode

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        img = d[self.keys[0]]
        for k, name in enumerate(d["contrasts"]):
            if bool(d[PRESENT_KEY][k]):
                continue
            value = self.templates.at(name, img.affine, img.shape[1:]) if self.mode == "template" else torch.zeros_like(img[:1])
            img = _fill(img, k, value[0])
        d[self.keys[0]] = img
        return d


class RandTemplateSubstituted(RandomizableTransform, MapTransform):
    """Replace 0 to ``max_substituted`` random present contrasts by their templates (at least one stays real).

    Args:
        templates: a :class:`TemplateBank`.
        max_substituted: most contrasts replaced per sample (capped at the present ones minus one).
        prob: probability of substituting at all.
        image_key: the stacked image.
        output_key: where the result goes (default ``image_key``); another key keeps the input, e.g. to
            draw a second, independently substituted copy of the same crop.
    """

    def __init__(
        self,
        templates: TemplateBank | None,
        max_substituted: int = 1,
        prob: float = 0.5,
        image_key: str = "image",
        output_key: str | None = None,
    ) -> None:
        MapTransform.__init__(self, [image_key])
        RandomizableTransform.__init__(self, prob=prob)
        self.templates, self.max_substituted = templates, int(max_substituted)
        self.output_key = output_key or image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        img = d[self.keys[0]]
        d[self.output_key] = img
        present = [k for k in range(len(d["contrasts"])) if bool(d[PRESENT_KEY][k])]
        most = min(self.max_substituted, len(present) - 1)
        if not self._do_transform or most < 1 or self.templates is None:
            return d
        count = int(self.R.randint(1, most + 1))
        for k in self.R.permutation(present)[:count]:
            img = _fill(img, int(k), self.templates.at(d["contrasts"][int(k)], img.affine, img.shape[1:])[0])
        d[self.output_key] = img
        return d
