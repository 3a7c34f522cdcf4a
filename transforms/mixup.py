"""Intra-modal mixup of report batches (MedCoSS): each token is the sample's own or its partner's.

These transforms act on **collated batches** (leading batch dimension B), not on single items: a
partner is another sample of the same batch (``perm``, a random permutation). Use them on buffer
batches inside the trainer/handler, after the DataLoader, never inside a Dataset's chain. Images
blend with MONAI's ``monai.transforms.MixUp`` (per-sample ``lam ~ Beta(1, 1) = U(0, 1)``); MONAI has
no token-level twin, hence these.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from .twins import RandomizableTwind

__all__ = ["TextMixup", "TextMixupd"]


def _check_batch(x: torch.Tensor, name: str, min_ndim: int = 2) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < min_ndim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} expects a collated batch tensor (B, ...), got {shape}.")


class TextMixup(RandomizableTransform):
    """Per-token mixup of token sequences: each token is taken from a shuffled partner with probability ``1 - r``.

    ``r ~ U(0, 1)`` is drawn once per batch, ``perm`` is a random permutation of the batch and a
    (B, L) Bernoulli choice picks the source of every position; the attention mask and the MLM
    labels (when given) follow the same choice, so a position stays consistent.
    After a call, ``self.r``, ``self.perm`` and ``self.take_partner`` (B, L) hold the draws.

    Args:
        prob: probability of mixing a batch at all.
    """

    def __init__(self, prob: float = 1.0):
        RandomizableTransform.__init__(self, prob=prob)
        self.r: float | None = None
        self.perm: np.ndarray | None = None
        self.take_partner: np.ndarray | None = None

    def randomize(self, shape: tuple[int, int]) -> None:  # type: ignore[override]
        super().randomize(None)
        self.r = float(self.R.uniform(0.0, 1.0))
        self.perm = self.R.permutation(shape[0])
        self.take_partner = self.R.random_sample(shape) < (1.0 - self.r)

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the current draw to a (B, L, ...) tensor."""
        if self.take_partner is None or self.perm is None or tuple(x.shape[:2]) != self.take_partner.shape:
            raise RuntimeError(f"TextMixup: the stored draw does not match a tensor of shape {tuple(x.shape)}.")
        take = torch.as_tensor(self.take_partner, device=x.device).view(*self.take_partner.shape, *([1] * (x.ndim - 2)))
        return torch.where(take, x[torch.as_tensor(self.perm, device=x.device)], x)

    def __call__(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        randomize: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Mix ``input_ids`` (B, L) and, alike, ``attention_mask`` and ``labels``.

        Returns:
            the mixed ``(input_ids, attention_mask, labels)``; a None input stays None.
        """
        _check_batch(input_ids, "TextMixup")
        if randomize:
            self.randomize((input_ids.shape[0], input_ids.shape[1]))
        if not self._do_transform:
            return input_ids, attention_mask, labels
        return tuple(None if t is None else self.mix(t) for t in (input_ids, attention_mask, labels))  # type: ignore[return-value]


class TextMixupd(RandomizableTwind):
    """Dictionary twin of :class:`TextMixup`: one draw for all keys of the batch.

    Args:
        keys: batch keys mixed with the same per-token choice; keys absent from the batch are skipped.
        prob: see :class:`TextMixup`.
        allow_missing_keys: see ``MapTransform`` (True by default, since ``labels`` is optional).
    """

    array_attribute = "mixer"

    def __init__(
        self,
        keys: KeysCollection = ("input_ids", "attention_mask", "labels"),
        prob: float = 1.0,
        allow_missing_keys: bool = True,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=prob)
        self.mixer = TextMixup(prob=1.0)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        present = list(self.key_iterator(d))
        if not self._do_transform or not present:
            return d
        first = d[present[0]]
        _check_batch(first, "TextMixupd")
        self.mixer.randomize((first.shape[0], first.shape[1]))
        for key in present:
            d[key] = self.mixer.mix(d[key])
        return d
