"""Data helpers: the sample-data fetcher and datalists, report corpora, slide tiling, rehearsal loading,
converters of sample formats, the downstream tasks (``tasks``: registry and datalists; ``sample_tasks``:
how each is cut from the held-out sample files) and users' dataset layouts (``layouts``).

Names are imported from their submodules on first use (PEP 562), so that
``python -m medcoss_monai.data.samples`` runs its module once, without a runpy warning, and starts
without importing MONAI/torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    **dict.fromkeys(
        (
            "DISTRIBUTIONS",
            "HELD_OUT",
            "MADE_FILES",
            "MODALITIES",
            "SHA256",
            "SampleDataFetchError",
            "SampleDataMissingError",
            "datalist_path",
            "fetch",
            "load_datalist",
            "require_datalist",
            "sample_dir",
            "verify",
        ),
        "samples",
    ),
    **dict.fromkeys(("load_report_corpus", "parse_indiana_report", "report_text", "text_group", "split_by_text"), "reports"),
    **dict.fromkeys(("inv3_to_nifti", "first_volume", "resample_labels_onto"), "converters"),
    **dict.fromkeys(("tissue_mask", "tissue_tile_locations", "otsu_threshold"), "slides"),
    **dict.fromkeys(("RehearsalLoader", "BUFFER_FLAG", "SOURCE_KEY"), "rehearsal"),
    **dict.fromkeys(("BadInputError", "check_datalist", "EXPECTED_SPATIAL_DIMS"), "checks"),
    **dict.fromkeys(("DATASET_CACHES", "cache_folder", "stage_dataset", "settings_digest"), "caching"),
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
