"""The masked-image pretext score of a network on a modality's held-out files.

The score is the stage's own loss (masked-patch MSE, per-patch normalised targets) on the
``test`` items of its datalist, which no stage trains on, prepared exactly as the stage prepares its
training data: the stage bundle's ``train#deterministic_transforms`` once per file, then its
``train#random_transforms`` ``test#repeats`` times per file (crops at the scale and with the
intensity handling the stage trains with), drawn from a fixed seed, so every network is scored on
the same crops and the same masks. The bundle is read with the settings the run's stage recorded
(:func:`medcoss_monai.evaluation.preprocessing.stage_settings`), so its overrides apply here too.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from monai.transforms import Compose
from torch import nn

from medcoss_monai.layout import read_stage_bundle
from medcoss_monai.evaluation.preprocessing import network_sizes

__all__ = ["held_out_batches", "held_out_mae_mse"]


def held_out_batches(
    modality: str,
    settings: Mapping[str, Any] | None = None,
    batch_size: int = 16,
    seed: int = 0,
    bundles: str | os.PathLike | None = None,
) -> Iterator[torch.Tensor]:
    """Batches of held-out image crops of a modality, as its stage bundle prepares training data.

    Args:
        modality: an image modality with a ``bundles/stage_<modality>.json``.
        settings: bundle ids to apply (the stage's recorded settings, the sizes of the network scored).
        batch_size: crops per batch.
        seed: the seed of the random crops (the same crops on every call).
        bundles: folder of the stage bundles (default: the repository's ``bundles/``).

    Yields:
        (B, C, ...) float tensors.
    """
    # the cache key holds the settings as JSON text (plain values) and the data folder
    key = json.dumps(dict(settings or {}), sort_keys=True)
    crops = _held_out_crops(modality, key, seed, str(bundles) if bundles else None, os.environ.get("MEDCOSS_DATA", ""))
    for start in range(0, len(crops), batch_size):
        yield torch.stack(crops[start : start + batch_size])  # a new tensor: the cached crops stay intact


@functools.lru_cache(maxsize=8)
def _held_out_crops(modality: str, settings_json: str, seed: int, bundles: str | None, data: str) -> list[torch.Tensor]:
    """The held-out crops of a modality, cut once per process: every row of a forgetting matrix scores the same ones."""
    parser = read_stage_bundle(modality, settings=json.loads(settings_json), bundles=bundles)
    items = parser.get_parsed_content("test#datalist")
    repeats = int(parser.get_parsed_content("test#repeats"))
    deterministic = Compose(parser.get_parsed_content("train#deterministic_transforms"))
    random = Compose(parser.get_parsed_content("train#random_transforms"))
    random.set_random_state(seed)
    crops: list[torch.Tensor] = []
    for item in items:
        base = deterministic(dict(item))
        for _ in range(repeats):
            out = random(dict(base))
            for sample in out if isinstance(out, list) else [out]:  # crops_per_volume samples of a 3D item
                crops.append(torch.as_tensor(sample["image"]).float())
    return crops


def held_out_mae_mse(
    network: nn.Module,
    modality: str,
    device: torch.device | str = "cpu",
    settings: Mapping[str, Any] | None = None,
    mask_ratio: float | None = None,
    batch_size: int = 16,
    seed: int = 0,
    bundles: str | os.PathLike | None = None,
) -> float:
    """Masked-patch MSE of ``network`` on the held-out crops of :func:`held_out_batches`.

    The masking noise is drawn from ``seed`` per crop, so networks of the same architecture are
    scored on the same masks.

    Args:
        network: a network with a ``pretext="mae"`` forward (``pred``, ``target``, ``mask``).
        modality: the image modality.
        device: where to run.
        settings: bundle ids to apply; the network's own sizes are the default for the size ids.
        mask_ratio: share of masked patches; None: the stage's ``mask_ratio`` (with ``settings``).
        batch_size: crops per forward.
        seed: crops and masks seed.
        bundles: folder of the stage bundles.

    Returns:
        the mean squared error over all masked patches of all crops.
    """
    settings = {**network_sizes(network), **(settings or {})}
    if mask_ratio is None:
        mask_ratio = float(read_stage_bundle(modality, settings=settings, bundles=bundles).get_parsed_content("mask_ratio"))
    gen = torch.Generator().manual_seed(seed)
    err = count = 0.0
    n_patches = 0
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            for x in held_out_batches(modality, settings, batch_size, seed, bundles):
                x = x.to(device)
                if not n_patches:  # the number of patches comes from the network itself
                    n_patches = network(x[:1], pretext="mae", mask_ratio=mask_ratio)["noise"].shape[1]
                noise = torch.rand(len(x), n_patches, generator=gen).to(device)
                out = network(x, pretext="mae", mask_ratio=mask_ratio, noise=noise)
                per_patch = ((out["pred"].float() - out["target"].float()) ** 2).mean(dim=-1)
                mask = out["mask"].float()
                err += float((per_patch * mask).sum())
                count += float(mask.sum())
    finally:
        network.train(was_training)
    return err / max(count, 1.0)
