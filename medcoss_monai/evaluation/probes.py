"""Frozen-encoder probes and pretext scores of one network: one row of the forgetting matrix.

For one network (the encoder after some stage, or a randomly initialised one) :func:`evaluate_stage`
returns one row:

- ``text``, ``xray``, ``ct``, ``mri``, ``pathology``: a linear probe (standardised pooled features,
  scikit-learn logistic regression, fixed seed and split) on each modality's probe task, AUC:

  ====== ================================================================================
  text   few-shot multi-label: the 8 most frequent major MeSH headings of the Indiana
         reports, the first 100 ``training`` and 1,000 ``test`` reports of ``text_cls``,
         macro-AUC (a random encoder is far from chance here: random embeddings averaged
         over a report are a bag of words)
  xray   ``xray_cls``: bone vs soft-tissue tiles of the held-out tibia film
  ct     ``ct_cls``: heart vs no-heart sub-volumes of the held-out chest CT
  mri    ``mri_cls``: cerebellum vs cerebrum sub-volumes of the held-out ICBM 2009c T1
  path.  ``pathology_cls``: many vs few nuclei tiles of the held-out H&E image
  ====== ================================================================================

  Every probe item (training and test) is cut from files no pre-training stage trains on, and is
  prepared by its stage bundle's ``eval#transforms`` with the run's recorded settings
  (:mod:`medcoss_monai.evaluation.preprocessing`).

- ``text_mlm_acc`` and ``<modality>_mae_mse``: the pretext score of every modality already trained,
  computed with the current encoder and the head saved at that modality's own stage (its
  ``model.pt``'s ``mae_decoder*`` / ``mlm_head*`` keys), on held-out items with fixed masking:
  masked-token top-1 accuracy on the report ``validation`` split, masked-patch MSE on crops of the
  modality's held-out ``test`` files, cut as its stage cuts training crops
  (:mod:`medcoss_monai.evaluation.heldout`).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from torch import nn

from medcoss_monai.layout import MODEL_FILE, read_stage_bundle, stage_model
from medcoss_monai.samples.tasks import load_task_datalist
from medcoss_monai.evaluation.features import linear_probe, pooled_features
from medcoss_monai.evaluation.heldout import held_out_mae_mse
from medcoss_monai.evaluation.matrix import CSV_COLUMNS, PRETEXT_COLUMNS, PROBE_COLUMNS
from medcoss_monai.evaluation.preprocessing import image_probe_transforms, network_sizes, stage_settings
from medcoss_monai.evaluation.text_probe import TEXT_TASK, probe_tokenizer, text_mlm_accuracy, text_probe
from medcoss_monai.networks.checkpoint import load_state, state_dict_of, unwrap_network

__all__ = ["PROBE_TASKS", "HEAD_PREFIXES", "image_probe", "network_with_stage_heads", "evaluate_stage"]

PROBE_TASKS = {"text": TEXT_TASK, "xray": "xray_cls", "ct": "ct_cls", "mri": "mri_cls", "pathology": "pathology_cls"}
"""Probe column -> the derived task (:mod:`medcoss_monai.samples.tasks`) it reads."""

HEAD_PREFIXES = ("mae_decoder", "mlm_head")
"""State-dict key prefixes of the pretext heads, loaded from a modality's own stage for its pretext score."""


def image_probe(
    network: nn.Module,
    modality: str,
    device: torch.device | str = "cpu",
    settings: Mapping[str, Any] | None = None,
    batch_size: int = 8,
    seed: int = 0,
    bundles: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Linear probe on a modality's classification task (``training`` split fits, ``test`` split scores).

    Args:
        network: the network.
        modality: ``xray``, ``ct``, ``mri`` or ``pathology``.
        device: where to run.
        settings: ids of the modality's stage bundle to apply (a stage's recorded settings); the
            network's own sizes are the default for the size ids.
        batch_size: items per forward.
        seed: the probe's random state.
        bundles: the bundles folder.

    Returns:
        :func:`~medcoss_monai.evaluation.features.linear_probe`'s metrics.
    """
    data = load_task_datalist(PROBE_TASKS[modality])
    transform = image_probe_transforms(modality, {**network_sizes(network), **(settings or {})}, bundles)
    feats = {
        split: pooled_features(network, DataLoader(Dataset(list(data[split]), transform), batch_size=batch_size), device)
        for split in ("training", "test")
    }
    labels = {split: np.array([it["label"] for it in data[split]]) for split in ("training", "test")}
    return linear_probe(feats["training"], labels["training"], feats["test"], labels["test"], seed=seed)


def network_with_stage_heads(
    network: nn.Module, stage_model: str | os.PathLike, head_prefixes: Sequence[str] = HEAD_PREFIXES
) -> nn.Module:
    """A copy of ``network`` whose pretext heads are those saved in ``stage_model`` (the encoder stays current).

    Args:
        network: the current network.
        stage_model: a stage's ``model.pt`` (plain state dict).
        head_prefixes: top-level key prefixes of the heads (``mae_decoder`` matches ``mae_decoder_3d.x`` too).
            Head tensors tied to encoder tensors (the MLM decoder weight shared with the text
            embedding) are not loaded: they belong to the current encoder.

    Returns:
        the copy, on the network's device.

    Raises:
        FileNotFoundError: ``stage_model`` is missing.
        ValueError: it holds no head key, a head tensor's shape differs from the network's, or head
            keys are missing or unknown (renamed).
    """
    path = Path(stage_model)
    if not path.is_file():
        raise FileNotFoundError(f"Stage weights '{path}' do not exist.")
    prefixes = tuple(head_prefixes)
    state = state_dict_of(load_state(path, f"stage {MODEL_FILE}"), path)
    heads = {k: v for k, v in state.items() if k.split(".", 1)[0].startswith(prefixes)}
    if not heads:
        raise ValueError(f"'{path}' holds no pretext-head key (prefixes {list(prefixes)}).")
    model = copy.deepcopy(unwrap_network(network))
    own = model.state_dict()
    # a head tensor tied to an encoder tensor (the MLM output = the text embedding) is encoder: keep it current
    encoder_storage = {v.data_ptr() for k, v in own.items() if not k.split(".", 1)[0].startswith(prefixes)}
    heads = {k: v for k, v in heads.items() if k not in own or own[k].data_ptr() not in encoder_storage}
    wrong = [
        f"{k}: saved {tuple(v.shape)} vs network {tuple(own[k].shape)}"
        for k, v in heads.items()
        if k in own and own[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(f"Pretext heads in '{path}' do not fit the network: " + "; ".join(wrong[:5]))
    expected = {k for k, v in own.items() if k.split(".", 1)[0].startswith(prefixes) and v.data_ptr() not in encoder_storage}
    missing, unexpected = sorted(expected - set(heads)), sorted(set(heads) - set(own))
    if missing or unexpected:
        # a half-loaded head would score the stage with random weights: refuse instead
        raise ValueError(
            f"Pretext heads in '{path}' do not match the network: {len(missing)} missing {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}."
        )
    model.load_state_dict(heads, strict=False)  # the encoder keys stay the current network's
    return model


def evaluate_stage(
    network: nn.Module,
    run_dir: str | os.PathLike | None,
    after: str,
    trained: Sequence[str] = (),
    device: torch.device | str = "cpu",
    img_size_2d: Sequence[int] | None = None,
    img_size_3d: Sequence[int] | None = None,
    probes: Sequence[str] = PROBE_COLUMNS,
    tokenizer: Any = None,
    text_n_train: int = 100,
    text_n_test: int = 1000,
    mlm_n_items: int | None = None,
    max_length: int | None = None,
    mask_ratio: float | None = None,
    seed: int = 0,
    timings: dict[str, float] | None = None,
    current: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """One row of the forgetting matrix for ``network``.

    Each modality's inputs are prepared by its stage bundle with the settings the run's stage of that
    modality recorded (bundle defaults where the run has no such stage), under the network's sizes.

    Args:
        network: the current network (copied for pretext scores; not modified).
        run_dir: the run folder: its stages' ``stage.json`` (settings), ``model.pt`` (heads) and tokenizer.
        after: the row name (``scratch``, ``stage_report``, ...).
        trained: modalities trained so far (their pretext columns are filled), e.g. ``["report", "ct"]``.
        device: where to run.
        img_size_2d: the 2D input size; None: the network's.
        img_size_3d: the 3D input size; None: the network's.
        probes: probe columns to compute (others stay empty).
        tokenizer: the report tokenizer; None finds it with :func:`~medcoss_monai.evaluation.text_probe.probe_tokenizer`.
        text_n_train: training reports of the text probe.
        text_n_test: test reports of the text probe.
        mlm_n_items: validation reports for ``text_mlm_acc`` (None: all).
        max_length: token sequence length; None: the report stage's ``max_text_len``.
        mask_ratio: MAE mask ratio of the MSE; None: each stage's ``mask_ratio``.
        seed: probe and masking seed.
        timings: if given, filled with seconds per column.
        current: the modality (or modalities, for a joint stage) whose pretext heads are the
            network's own (the stage just trained: its ``model.pt`` may not be written yet); the
            others are loaded from their stages.

    Returns:
        dict over :data:`~medcoss_monai.evaluation.matrix.CSV_COLUMNS` (None where not computed).
    """
    row: dict[str, Any] = {c: None for c in CSV_COLUMNS}
    row["after"] = after
    timings = timings if timings is not None else {}
    network = unwrap_network(network)
    sizes = network_sizes(network)
    sizes.update({k: list(v) for k, v in (("img_size_2d", img_size_2d), ("img_size_3d", img_size_3d)) if v is not None})

    def settings(modality: str) -> dict[str, Any]:
        # what the run's stage recorded, under the sizes of the network being scored
        return {**stage_settings(run_dir, modality), **sizes}

    if "text" in probes or "report" in trained:
        report = read_stage_bundle("report", settings=settings("report"))
        if tokenizer is None:
            tokenizer = probe_tokenizer(run_dir, vocab_size=int(report.get_parsed_content("vocab_size")))
        if max_length is None:
            max_length = int(report.get_parsed_content("max_text_len"))
    for column in probes:
        start = time.time()
        if column == "text":
            row[column] = text_probe(network, tokenizer, device, text_n_train, text_n_test, max_length, seed=seed)["auc"]
        else:
            row[column] = image_probe(network, column, device, settings(column), seed=seed)["auc"]
        timings[column] = time.time() - start
    own_heads = {current} if isinstance(current, str) else set(current or ())
    for modality in trained:
        column = PRETEXT_COLUMNS.get(modality)
        if column is None:
            continue
        start = time.time()
        scorer = network if modality in own_heads else network_with_stage_heads(network, stage_model(run_dir or ".", modality))
        if modality == "report":
            row[column] = text_mlm_accuracy(scorer, tokenizer, device, mlm_n_items, max_length, seed=seed)
        else:
            row[column] = held_out_mae_mse(scorer, modality, device, settings(modality), mask_ratio, seed=seed)
        del scorer
        timings[column] = time.time() - start
    return row
