"""Shared fixtures: the real sample data, fetched once per test session.

- ``sample_data``: the sample folder (:func:`medcoss_monai.samples.sample_data.sample_dir`) after
  :func:`~medcoss_monai.samples.sample_data.fetch` (a no-op, offline, once the cache is complete).
- ``tasks_ready``: the sample folder after every built-in downstream task is prepared (its
  ``tasks/<task>/datalist.json``), for tests that read task datalists without preparing them.
- ``datalist``: a function ``modality -> dict``, the parsed datalist JSON
  (``{"training": [...], "validation": [...], ...}``, paths absolute).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # relative paths in tests (runs/, bundles/) are the checkout's; the bundles themselves run from anywhere
    os.chdir(Path(__file__).resolve().parents[1])
    # the test machines have 2 cores; more threads only contend
    try:
        import torch

        torch.set_num_threads(2)
    except ImportError:
        pass


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """Fetch the sample data once (idempotent; offline after the first fetch) and return its folder."""
    from medcoss_monai.samples.sample_data import fetch

    return fetch(verbose=False)


@pytest.fixture(scope="session")
def tasks_ready(sample_data: Path) -> Path:
    """Prepare every built-in downstream task once (a no-op when the cache holds them) and return the sample folder."""
    from medcoss_monai.samples.tasks import prepare_tasks

    prepare_tasks(verbose=False)
    return sample_data


@pytest.fixture(scope="session")
def brain_slabs(sample_data: Path) -> Path:
    """The BrainMVP sample task's folder: the held-out ICBM 2009c T1 / T2 / labels cut into axial slabs
    (``slab<k>_{t1,t2,seg}.nii.gz``), cut on first use (not by ``tasks_ready``)."""
    from medcoss_monai.apps.brainmvp.studies import sample_task_datalist

    return Path(sample_task_datalist()).parent


@pytest.fixture(scope="session")
def datalist(sample_data: Path) -> Callable[[str], dict[str, Any]]:
    """A loader of the sample datalists: ``datalist("mri")["training"]``."""
    cache: dict[str, dict[str, Any]] = {}

    def load(modality: str) -> dict[str, Any]:
        if modality not in cache:
            # resolved from the fetched folder, not $MEDCOSS_DATA, which a test may have monkeypatched
            with open(sample_data / "datalists" / f"{modality}.json", encoding="utf-8") as f:
                cache[modality] = json.load(f)
        # a copy, so one test editing items cannot change what the next one sees
        return json.loads(json.dumps(cache[modality]))

    return load
