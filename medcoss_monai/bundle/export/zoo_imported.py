"""What an exported bundle owes to imported weights: the network its ``train.json`` continues, and their licence.

An imported MedCoSS stage (``python -m medcoss_monai.weights import``) holds the authors' bare encoder; its bundle
continues it as a stage after an imported stage does. Every stage or task trained from imported weights (MedCoSS or
BrainMVP) repeats their source and licence in the bundle's metadata, ``docs/README.md`` and ``LICENSE``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from medcoss_monai import layout
from medcoss_monai.bundle.export import zoo_configs as configs
from medcoss_monai.bundle.export.zoo_sources import Trained

__all__ = ["pretraining_network", "imported_origin", "note_imported_metadata", "note_imported_files"]


def pretraining_network(trained: Trained) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The whole pre-training network of a stage (its ``train.json``'s ``network_def``) and its weights.

    An imported stage (``python -m medcoss_monai.weights import``) holds a bare encoder (the authors'
    ``MedCoSSReferenceEncoder``): ``train.json`` continues it as a stage after an imported stage does
    (:func:`~medcoss_monai.bundle.encoder_chain.follow_previous_encoder`), a ``MedCoSSModel`` around that
    encoder with the stage bundle's pretext heads, freshly initialised (seed 0).
    """
    from monai.bundle import ConfigParser

    from medcoss_monai.networks.medcoss import ENCODERS

    if trained.network.get("_target_") not in ENCODERS:
        return trained.network, trained.state
    heads = configs.inline_config(trained.parser, "network_def") if "network_def" in trained.parser else {}
    keep = ("decoder_hidden_size", "decoder_layers", "decoder_heads", "norm_pix_loss", "tie_mlm_weights")
    network = {"_target_": "medcoss_monai.networks.MedCoSSModel", "encoder_def": dict(trained.network),
               **{k: heads[k] for k in keep if k in heads}}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = ConfigParser({"n": network}).get_parsed_content("n")
    net.encoder.load_state_dict(trained.state, strict=True)
    return network, {k: v.detach().cpu() for k, v in net.state_dict().items()}


def imported_origin(info: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record of the imported weights a trained network descends from, if any.

    Followed from the network's own folder: an imported stage (its ``stage.json``'s ``"imported"``), the
    ``previous_stage`` chain of a curriculum stage, or the ``pretrained_ckpt`` of a fine-tuned task. The
    released weights' licence applies to what was trained from them, so the bundle repeats it.

    Args:
        info: the facts of the exported network (``Trained.info`` of :mod:`.zoo_sources`, ``AppModel.info`` of
            :mod:`.zoo_apps`): its ``task`` and ``pretrained_ckpt``, or the ``config_file`` (``stage.json``) of a stage.

    Returns:
        The ``"imported"`` record (``format``, ``source``, ``licence``, ``sha256``...), or None.
    """
    if info.get("task"):
        if not info.get("pretrained_ckpt"):
            return None
        start = Path(str(info["pretrained_ckpt"]))
        folder = start if start.is_dir() else start.parent
    else:
        folder = Path(str(info.get("config_file", ""))).parent
    seen: set[Path] = set()
    while folder not in seen and (folder / layout.STAGE_RECORD_FILE).is_file():
        seen.add(folder)
        record = layout.read_stage_record(folder)
        if isinstance(record.get("imported"), dict):
            return dict(record["imported"])
        previous = record.get("previous_stage")
        if not previous:
            return None
        folder = layout.stage_dir(folder.parent, str(previous))
    return None


def _imported_words(origin: Mapping[str, Any]) -> tuple[str, str]:
    """Where imported weights come from, and their licence, in words."""
    where = (f"the {origin.get('format', '?')} weights {origin.get('source', '')}, imported with "
             "`python -m medcoss_monai.weights import`")
    return where, str(origin.get("licence", "see the weights' source"))


def note_imported_metadata(metadata: dict[str, Any], origin: Mapping[str, Any], imported_stage: bool) -> None:
    """Say in the metadata where the imported weights come from and under which licence."""
    where, licence = _imported_words(origin)
    if imported_stage:
        metadata["description"] = (f"The authors' released encoder ({where}), not trained further here. "
                                   "network_def returns its pooled features; configs/inference.json writes them for "
                                   "your files.")
    else:
        metadata["description"] += f" Its encoder was initialised from {where}."
    metadata["intended_use"] = f"{metadata.get('intended_use', '')} Weights: {licence}.".strip()


def note_imported_files(out: Path, origin: Mapping[str, Any], imported_stage: bool) -> None:
    """Add the imported weights' source and licence to ``docs/README.md`` and ``LICENSE``."""
    where, licence = _imported_words(origin)
    section = (f"\n## Imported weights\n\nThe encoder {'is' if imported_stage else 'was initialised from'} {where} "
               f"(checkpoint sha256 `{origin.get('sha256', '?')}`).\n\nLicence of those weights: {licence}. It applies "
               "to this bundle's weights too.\n")
    readme = out / "docs" / "README.md"
    readme.write_text(readme.read_text().rstrip("\n") + "\n" + section)
    license_file = out / "LICENSE"
    license_file.write_text(license_file.read_text().rstrip("\n") + f"\n\nWeights in models/: {licence}.\n")
