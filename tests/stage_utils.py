"""Helpers shared by the stage tests: run a stage bundle in-process with small overrides."""

from __future__ import annotations

import csv
from pathlib import Path

from monai.bundle import run

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"

# small but real: every stage reads the real sample files through its own transforms
TINY = {
    "report": {"max_items": 48, "batch_size": 16},
    "xray": {"train#repeats": 4, "batch_size": 4},
    "ct": {"train#repeats": 1, "batch_size": 2, "crops_per_volume": 2},
    "mri": {"train#repeats": 1, "batch_size": 2, "crops_per_volume": 1},
    "pathology": {"train#repeats": 1, "batch_size": 8, "max_items": 16},
}


def run_stage(modality: str, output_dir: Path, epochs: int = 1, overlays=(), **overrides) -> Path:
    """Run ``bundles/stage_<modality>.json`` through MONAI's bundle API; return the stage folder."""
    configs = [str(BUNDLES / f"stage_{modality}.json")] + [str(BUNDLES / o) for o in overlays]
    args = {"output_dir": str(output_dir), "progress_bar": False, "train#trainer#max_epochs": epochs}
    args.update(TINY[modality])
    args.update(overrides)
    run(config_file=configs if len(configs) > 1 else configs[0], **args)
    return Path(output_dir) / f"stage_{modality}"


def read_history(stage_dir: Path) -> list[dict]:
    with open(stage_dir / "loss_history.csv", newline="") as f:
        return list(csv.DictReader(f))


def bundle_section(modality: str, section: str, **overrides):
    """A section of ``bundles/stage_<modality>.json`` as the stage itself parses it (e.g. ``train#preprocessing``).

    Tests read the transform chains from the bundles, so a change of recipe is tested, not a copy of it.
    ``overrides`` replace bundle ids first (``tokenizer`` may be an object: nothing is evaluated from it).
    """
    from medcoss_monai.layout import read_bundle

    parser = read_bundle(BUNDLES / f"stage_{modality}.json", {"output_dir": ".", **overrides})
    parser.parse()
    return parser.get_parsed_content(section)
