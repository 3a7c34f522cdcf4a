"""The forgetting matrix of a run: probes and pretext scores after every stage, a heatmap and a summary.

``python -m medcoss_monai.evaluation.forgetting --run_dir runs/medcoss`` evaluates a randomly
initialised network of the run's architecture (row ``scratch``, fixed seed) and the network saved by
every finished stage (rows ``stage_<m>``, in curriculum order) with
:func:`medcoss_monai.evaluation.probes.evaluate_stage` and writes:

- ``<run>/forgetting.csv``: columns ``after``, the probe columns ``text, xray, ct, mri, pathology`` and the
  pretext columns ``text_mlm_acc, xray_mae_mse, ...`` (empty until that modality has been trained);
- ``<run>/forgetting.png``: a heatmap (colour per column, best = yellow; numbers are the scores);
- ``<run>/forgetting_summary.json``: average forgetting and backward transfer
  (:func:`medcoss_monai.evaluation.matrix.forgetting_summary`), timings, and the settings each
  modality was prepared with.

Each modality is prepared as the run's stage of that modality recorded in its ``stage.json``
(``--ct_spacing``, ``--hu_window``... given to a stage apply here too). A joint run is evaluated with
``--stages joint --joint_modalities report xray ...``. A first stage imported from released weights
(``python -m medcoss_monai.weights import --out <run>/stage_<name>``) is a row like the others: its
encoder's probes (it has no pretext column of its own).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from torch import nn

from medcoss_monai.errors import install_run_hooks
from medcoss_monai import MODALITIES
from medcoss_monai.layout import (
    FORGETTING_CSV,
    FORGETTING_PNG,
    MODEL_FILE,
    read_stage_record,
    stage_dir,
    stage_model,
)
from medcoss_monai.evaluation.matrix import (
    PROBE_COLUMNS,
    SCRATCH_ROW,
    forgetting_summary,
    format_matrix,
    plot_matrix,
    row_name,
    row_stage,
    write_matrix,
)
from medcoss_monai.evaluation.preprocessing import network_sizes, stage_settings
from medcoss_monai.evaluation.probes import evaluate_stage
from medcoss_monai.networks import MedCoSSModel
from medcoss_monai.networks.checkpoint import load_strict
from medcoss_monai.utils import atomic_write_json

__all__ = [
    "FORGETTING_SUMMARY",
    "stage_order",
    "stage_network_config",
    "build_network",
    "load_stage_network",
    "evaluate_run",
    "main",
]

logger = logging.getLogger(__name__)

FORGETTING_SUMMARY = "forgetting_summary.json"
"""The summary written beside ``forgetting.csv``."""


def _rank(name: str) -> tuple[int, str]:
    """Curriculum order of stages that no chain orders: :data:`MODALITIES` order, then by name."""
    return (MODALITIES.index(name) if name in MODALITIES else len(MODALITIES), name)


def stage_order(run_dir: str | os.PathLike) -> list[str]:
    """Names of the finished stages of a run (their ``model.pt`` present), in curriculum order.

    The order follows the ``previous_stage`` chain of each ``stage.json``; stages without one are
    placed in :data:`~medcoss_monai.MODALITIES` order.

    Args:
        run_dir: the run folder.

    Returns:
        e.g. ``["report", "xray", "ct"]``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    names = (row_stage(p.name) for p in run_dir.iterdir() if p.is_dir())
    done = [n for n in names if n and stage_model(run_dir, n).is_file()]
    previous = {n: str(read_stage_record(stage_dir(run_dir, n)).get("previous_stage") or "") for n in done}
    order: list[str] = []
    # walk the chain from the stages whose predecessor is not a finished stage of this run
    for head in sorted((n for n in done if previous[n] not in done), key=_rank):
        name: str | None = head
        while name is not None and name not in order:
            order.append(name)
            following = sorted((n for n in done if previous[n] == name and n not in order), key=_rank)
            name = following[0] if following else None
    return order + sorted((n for n in done if n not in order), key=_rank)


def stage_network_config(run_dir: str | os.PathLike, stages: Sequence[str]) -> dict[str, Any] | None:
    """The network config (``{"_target_": ..., **kwargs}``) from the first stage's ``stage.json`` that has one.

    Args:
        run_dir: the run folder.
        stages: stage names, searched in order.

    Returns:
        the config, or None when no stage recorded one.
    """
    for name in stages:
        config = read_stage_record(stage_dir(run_dir, name)).get("network")
        if isinstance(config, Mapping) and config.get("_target_"):
            return dict(config)
    return None


def build_network(config: Mapping[str, Any] | None, seed: int = 0) -> nn.Module:
    """Instantiate a network from a ``{"_target_": ..., **kwargs}`` config (None: ``MedCoSSModel()``), seeded.

    Args:
        config: the config, as written in ``stage.json`` under ``"network"``.
        seed: ``torch.manual_seed`` before construction, so the random initialisation is fixed.

    Returns:
        the network.
    """
    torch.manual_seed(seed)
    if config is None:
        return MedCoSSModel()
    return ConfigParser({"network": dict(config)}).get_parsed_content("network")


def load_stage_network(config: Mapping[str, Any] | None, model_path: str | os.PathLike, seed: int = 0) -> nn.Module:
    """Build the network and load a stage's ``model.pt``, strictly.

    A row of the forgetting matrix must score the stage's weights: a file whose keys do not match the
    network (renamed, missing or extra) is refused, not half-loaded onto a random network.

    Args:
        config: the network config (:func:`stage_network_config`).
        model_path: the stage's ``model.pt``.
        seed: the seed of the construction (overwritten by the weights).

    Returns:
        the network with the stage's weights.

    Raises:
        CheckpointError: the file cannot be read, or the weights do not fit the architecture (tensor
            shapes or key names differ), naming the file.
    """
    network = build_network(config, seed)
    return load_strict(network, model_path, f"stage {MODEL_FILE}", "It was not written with the network of its stage.json.")


def evaluate_run(
    run_dir: str | os.PathLike,
    stages: Sequence[str] | None = None,
    device: torch.device | str = "cpu",
    img_size_2d: Sequence[int] | None = None,
    img_size_3d: Sequence[int] | None = None,
    probes: Sequence[str] = PROBE_COLUMNS,
    text_n_train: int = 100,
    text_n_test: int = 1000,
    mlm_n_items: int | None = None,
    seed: int = 0,
    write: bool = True,
    verbose: bool = True,
    joint_modalities: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Evaluate ``scratch`` and every finished stage of a run; write the CSV, heatmap and summary.

    Args:
        run_dir: the run folder (``output_dir`` of the stages).
        stages: stage names in curriculum order; default :func:`stage_order`.
        device: where to run.
        img_size_2d: 2D input size; default the network's.
        img_size_3d: 3D input size; default the network's.
        probes: probe columns to compute.
        text_n_train: training reports of the text probe.
        text_n_test: test reports of the text probe.
        mlm_n_items: validation reports for ``text_mlm_acc`` (None: all).
        seed: seed of the scratch network, the probes and the masks.
        write: write ``forgetting.csv``, ``forgetting.png`` and ``forgetting_summary.json``.
        verbose: print the matrix and summary.
        joint_modalities: the modalities of a ``joint`` stage (stage name ``joint``): its row scores
            the pretext of each of them with the joint network's own heads.

    Returns:
        ``(rows, summary)``.

    Raises:
        FileNotFoundError: the run folder has no finished stage, or a listed stage has no weights.
    """
    run_dir = Path(run_dir)
    stages = list(stages) if stages is not None else stage_order(run_dir)
    if not stages:
        raise FileNotFoundError(f"'{run_dir}' has no finished stage (no {stage_model(run_dir, '<modality>')}).")
    for name in stages:
        if not stage_model(run_dir, name).is_file():
            raise FileNotFoundError(f"Stage weights '{stage_model(run_dir, name)}' do not exist.")
    # the architecture the run trains (its last recorded network): a first stage imported from released
    # weights records its bare encoder, the stages after it a MedCoSSModel around that encoder
    config = stage_network_config(run_dir, list(reversed(stages)))
    if config is None:
        msg = f"no stage.json in {run_dir} gives the network config; using MedCoSSModel() defaults"
        logger.warning(msg)
        if verbose:
            print(msg)
    scratch: nn.Module | None = build_network(config, seed)
    sizes = network_sizes(scratch)
    size_2d = list(img_size_2d) if img_size_2d is not None else sizes.get("img_size_2d")
    size_3d = list(img_size_3d) if img_size_3d is not None else sizes.get("img_size_3d")
    common = dict(device=device, img_size_2d=size_2d, img_size_3d=size_3d, probes=probes,
                  text_n_train=text_n_train, text_n_test=text_n_test, mlm_n_items=mlm_n_items, seed=seed)
    rows, timings = [], {}
    for index, name in enumerate([None] + stages):
        start = time.time()
        if name is None:
            network, scratch = scratch, None  # held by the loop only: freed after its row
            trained, current, after = [], None, SCRATCH_ROW
        else:
            # each stage with the network its own stage.json records (the run's when it records none)
            own = stage_network_config(run_dir, [name]) or config
            network = load_stage_network(own, stage_model(run_dir, name), seed)
            trained, current, after = stages[:index], name, row_name(name)
            if name == "joint":
                trained = current = list(joint_modalities)
        network = network.to(device)
        row_times: dict[str, float] = {}
        rows.append(evaluate_stage(network, run_dir, after, trained, timings=row_times, current=current, **common))
        timings[after] = {k: round(v, 2) for k, v in row_times.items()}
        if verbose:
            print(f"  {after}: {time.time() - start:.1f} s ({', '.join(f'{k} {v:.1f}s' for k, v in row_times.items())})")
        del network
    summary = forgetting_summary(rows, stages)
    summary["timings_s"] = timings
    summary["img_size_2d"], summary["img_size_3d"] = size_2d, size_3d
    # what each modality was prepared with: the run's record of it (empty: the bundle's defaults)
    summary["stage_settings"] = {m: stage_settings(run_dir, m) for m in MODALITIES}
    if write:
        write_matrix(rows, run_dir / FORGETTING_CSV)  # one atomic write: a kill never leaves half a matrix
        plot_matrix(rows, run_dir / FORGETTING_PNG, title=f"forgetting matrix: {run_dir.name}")
        atomic_write_json(summary, run_dir / FORGETTING_SUMMARY)
    if verbose:
        print(format_matrix(rows, summary))
    return rows, summary


def _names(values: Sequence[str] | None) -> list[str] | None:
    """Names given space- or comma-separated (``report xray`` or ``report,xray``)."""
    return None if values is None else [n for v in values for n in v.split(",") if n]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m medcoss_monai.evaluation.forgetting --run_dir D [--stages report xray ct]``.

    ``--output_dir`` is another name of ``--run_dir`` (the stages' own name of the folder); stage and
    modality lists may be space- or comma-separated.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        the exit status.
    """
    install_run_hooks()  # user errors end with their message; library probes at DEBUG
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", "--output_dir", dest="run_dir", required=True,
                        help="the run folder (output_dir of the stages)")
    parser.add_argument("--stages", nargs="*", default=None, help="stage names in curriculum order (default: from stage.json)")
    parser.add_argument("--joint_modalities", nargs="*", default=[], help="the modalities of a 'joint' stage (--stages joint)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--img_size_2d", nargs=2, type=int, default=None)
    parser.add_argument("--img_size_3d", nargs=3, type=int, default=None)
    parser.add_argument("--probes", nargs="*", default=list(PROBE_COLUMNS), choices=list(PROBE_COLUMNS))
    parser.add_argument("--text_n_train", type=int, default=100)
    parser.add_argument("--text_n_test", type=int, default=1000)
    parser.add_argument("--mlm_n_items", type=int, default=None, help="validation reports of text_mlm_acc (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    evaluate_run(
        args.run_dir, _names(args.stages), args.device, args.img_size_2d, args.img_size_3d, args.probes,
        args.text_n_train, args.text_n_test, args.mlm_n_items, seed=args.seed, joint_modalities=_names(args.joint_modalities),
    )
    print(f"wrote {Path(args.run_dir) / FORGETTING_CSV} and {FORGETTING_PNG}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
