"""Evaluation inputs prepared as the run's stages prepared theirs: transforms taken from the stage bundles.

Everything the evaluation feeds a network goes through its modality's stage bundle, read with
:func:`medcoss_monai.layout.read_stage_bundle` and the settings that the run's stage recorded
in its ``stage.json`` (:func:`stage_settings`): an override given to a stage (``--ct_spacing``,
``--hu_window``, sizes...) reaches its probe and its pretext score. A modality without a stage in the
run gets the bundle's defaults. The sizes of the network being scored are imposed on top
(:func:`network_sizes`), since they are what the network takes.

Probe items (:mod:`medcoss_monai.samples.tasks`) are regions of held-out images that the task
derivation has already loaded, and for MRI normalised, as whole images: the probe applies the
bundle's ``eval#transforms`` without the steps that act on a whole source image
(:data:`TASK_APPLIED_STEPS`), which would otherwise run a second time on each region.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from monai.transforms import Compose, NormalizeIntensityd, Resized, ScaleIntensityRangePercentilesd
from torch import nn

from medcoss_monai.layout import read_stage_bundle, recorded_settings, stage_dir
from medcoss_monai.networks.checkpoint import unwrap_network

__all__ = ["SIZE_KEYS", "TASK_APPLIED_STEPS", "network_sizes", "stage_settings", "image_probe_transforms"]

logger = logging.getLogger(__name__)

SIZE_KEYS = ("img_size_2d", "patch_size_2d", "img_size_3d", "patch_size_3d", "max_text_len", "vocab_size")
"""Bundle ids that a network's config fixes for every modality it is fed (the bundles' ``shared_sizes``)."""


def _film_resize(transform: Any) -> bool:
    """The X-ray stage's resize of a whole film (longest side to ``load_size_2d``)."""
    return isinstance(transform, Resized) and transform.resizer.size_mode == "longest"


def _volume_normalisation(transform: Any) -> bool:
    """Intensity steps whose parameters are statistics of the whole volume (percentiles, mean, deviation)."""
    return isinstance(transform, (ScaleIntensityRangePercentilesd, NormalizeIntensityd))


TASK_APPLIED_STEPS: dict[str, Callable[[Any], bool]] = {
    # tiles are cut from a film the task derivation loaded and scaled as a whole
    "xray": _film_resize,
    # sub-volumes are cut from a volume the task derivation normalised as the MRI stage does
    "mri": _volume_normalisation,
}
"""Modality -> which steps of its ``eval#transforms`` its probe items have already been through."""


def network_sizes(network: nn.Module) -> dict[str, Any]:
    """The input sizes a network was built for, as bundle ids.

    Args:
        network: a network with a ``config`` dict (``MedCoSSModel``), possibly wrapped.

    Returns:
        ``{id: value}`` for the ids of :data:`SIZE_KEYS` its config holds (empty without a config).
    """
    config = getattr(unwrap_network(network), "config", None)
    if not isinstance(config, Mapping):
        return {}
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in config.items() if k in SIZE_KEYS}


def stage_settings(run_dir: str | os.PathLike | None, modality: str) -> dict[str, Any]:
    """The settings the run's stage of ``modality`` recorded in its ``stage.json``.

    Args:
        run_dir: the run folder (``output_dir`` of the stages), or None.
        modality: the stage's modality.

    Returns:
        ``{id: value}``; empty when there is no run folder, no such stage or no recorded settings
        (the bundle's defaults then apply).
    """
    if run_dir is None:
        return {}
    return recorded_settings(stage_dir(run_dir, modality))


def image_probe_transforms(
    modality: str, settings: Mapping[str, Any] | None = None, bundles: str | os.PathLike | None = None
) -> Compose:
    """The stage bundle's ``eval#transforms`` for a probe task's items.

    Args:
        modality: ``xray``, ``ct``, ``mri`` or ``pathology``.
        settings: bundle ids to apply (a stage's recorded settings and the network's sizes).
        bundles: the bundles folder (default :func:`medcoss_monai.layout.bundles_dir`).

    Returns:
        a ``Compose`` from ``{"image": path, ...}`` to ``{"image": tensor}`` at the network's input size.
    """
    parser = read_stage_bundle(modality, settings=settings, bundles=bundles)
    chain = list(parser.get_parsed_content("eval#transforms"))
    applied = TASK_APPLIED_STEPS.get(modality)
    if applied is not None:
        kept = [t for t in chain if not applied(t)]
        if len(kept) == len(chain):
            logger.warning(f"the {modality} stage bundle's eval#transforms has no step its probe items skip; all are applied")
        chain = kept
    return Compose(chain)
