"""Frozen-encoder probes and pretext scores: the cells of the forgetting matrix.

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

  Every probe item (training and test) is cut from files no pre-training stage trains on.

- ``text_mlm_acc`` and ``<modality>_mae_mse``: the pretext score of every modality already trained,
  computed with the current encoder and the head saved at that modality's own stage
  (``stage_<m>/model.pt``'s ``mae_decoder*`` / ``mlm_head*`` keys), on held-out items with fixed
  masking: masked-token top-1 accuracy on the report ``validation`` split, masked-patch MSE on crops
  of the modality's held-out ``test`` files, cut as its stage cuts training crops.

:class:`ProbeHandler` runs it when a stage completes and appends the row to a CSV.
"""

from __future__ import annotations

import copy
import csv
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medcoss_monai.networks.checkpoint import load_state, state_dict_of, unwrap_network
from medcoss_monai.utils import is_rank0

__all__ = [
    "PROBE_COLUMNS",
    "PRETEXT_COLUMNS",
    "CSV_COLUMNS",
    "COLUMN_MODALITY",
    "PROBE_TASKS",
    "pooled_features",
    "linear_probe",
    "probe_tokenizer",
    "text_probe",
    "image_probe_transforms",
    "image_probe",
    "network_with_stage_heads",
    "text_mlm_accuracy",
    "mae_mse",
    "evaluate_stage",
    "append_row",
    "write_rows",
    "ProbeHandler",
]

logger = logging.getLogger(__name__)

PROBE_COLUMNS = ("text", "xray", "ct", "mri", "pathology")
"""Linear-probe columns, one per modality (``text`` is the report modality)."""

COLUMN_MODALITY = {"text": "report", "xray": "xray", "ct": "ct", "mri": "mri", "pathology": "pathology"}
"""Probe column -> the modality (stage) it measures."""

PRETEXT_COLUMNS = {
    "report": "text_mlm_acc",
    "xray": "xray_mae_mse",
    "ct": "ct_mae_mse",
    "mri": "mri_mae_mse",
    "pathology": "pathology_mae_mse",
}
"""Modality -> its pretext-score column."""

CSV_COLUMNS = ("after",) + PROBE_COLUMNS + tuple(PRETEXT_COLUMNS.values())
"""Columns of ``forgetting.csv`` and of the probe CSV, in order."""

PROBE_TASKS = {"text": "text_cls", "xray": "xray_cls", "ct": "ct_cls", "mri": "mri_cls", "pathology": "pathology_cls"}
"""Probe column -> the derived task (:mod:`medcoss_monai.data.tasks`) it reads."""

HEAD_PREFIXES = ("mae_decoder", "mlm_head")
"""State-dict key prefixes of the pretext heads, loaded from a modality's own stage for its pretext score."""

_TOKENIZER_CACHE: dict[str, Any] = {}


# ------------------------------------------------------------------------------------------ features


def pooled_features(network: nn.Module, dataloader: Iterable[Mapping[str, Any]], device: torch.device | str) -> np.ndarray:
    """Pooled encoder features of every batch (eval mode, no gradients).

    Batches with ``input_ids`` are text (``network(input_ids, attention_mask=...)``), others images
    (``network(image)``); the network's ``pretext=None`` forward gives ``(B, hidden)``.

    Args:
        network: the network (its train/eval mode is restored afterwards).
        dataloader: an iterable of batch dicts.
        device: where to run.

    Returns:
        float32 array (N, hidden).
    """
    was_training = network.training
    network.eval()
    feats = []
    try:
        with torch.no_grad():
            for batch in dataloader:
                if "input_ids" in batch:
                    mask = batch.get("attention_mask")
                    out = network(
                        torch.as_tensor(batch["input_ids"]).to(device),
                        attention_mask=None if mask is None else torch.as_tensor(mask).to(device),
                    )
                else:
                    out = network(torch.as_tensor(batch["image"]).float().to(device))
                feats.append(out.detach().float().cpu().numpy())
    finally:
        network.train(was_training)
    if not feats:
        raise ValueError("pooled_features got an empty dataloader.")
    return np.concatenate(feats, axis=0)


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    multilabel: bool = False,
    seed: int = 0,
    C: float = 1.0,
    max_iter: int = 2000,
) -> dict[str, Any]:
    """Logistic regression on standardised features; AUC (macro over labels / classes) and accuracy.

    Args:
        train_x: (N, D) features.
        train_y: (N,) class indices, or (N, K) 0/1 when ``multilabel``.
        test_x: (M, D) features.
        test_y: like ``train_y``.
        multilabel: one binary classifier per label.
        seed: the solver's random state.
        C: inverse regularisation strength.
        max_iter: solver iterations.

    Returns:
        dict with ``auc`` (binary AUC, or the macro mean over labels / one-vs-rest classes that have
        both values in the test set), ``acc`` (accuracy; multi-label: mean per-label accuracy),
        ``f1_macro``, and for multi-label ``per_label_auc`` (None where undefined).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_x, test_x = np.asarray(train_x, np.float64), np.asarray(test_x, np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(f"Features and labels differ in length: {len(train_x)}/{len(train_y)}, {len(test_x)}/{len(test_y)}.")
    base = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    if multilabel:
        model = make_pipeline(StandardScaler(), OneVsRestClassifier(base))
        model.fit(train_x, train_y.astype(int))
        scores = model.predict_proba(test_x)
        preds = (scores >= 0.5).astype(int)
        per_label = [
            float(roc_auc_score(test_y[:, k], scores[:, k])) if len(np.unique(test_y[:, k])) == 2 else None
            for k in range(test_y.shape[1])
        ]
        defined = [a for a in per_label if a is not None]
        return {
            "auc": float(np.mean(defined)) if defined else float("nan"),
            "acc": float((preds == test_y).mean()),
            "f1_macro": float(f1_score(test_y, preds, average="macro", zero_division=0)),
            "per_label_auc": per_label,
        }
    if len(np.unique(train_y)) < 2:
        raise ValueError("linear_probe needs at least two classes in the training labels.")
    model = make_pipeline(StandardScaler(), base)
    model.fit(train_x, train_y)
    scores = model.predict_proba(test_x)
    preds = model.classes_[np.argmax(scores, axis=1)]
    present = np.unique(test_y)
    if len(present) < 2:
        auc = float("nan")
    elif scores.shape[1] == 2:
        auc = float(roc_auc_score(test_y, scores[:, 1]))
    else:
        auc = float(roc_auc_score(test_y, scores, multi_class="ovr", average="macro", labels=model.classes_))
    return {
        "auc": auc,
        "acc": float(accuracy_score(test_y, preds)),
        "f1_macro": float(f1_score(test_y, preds, average="macro", zero_division=0)),
    }


# ----------------------------------------------------------------------------------------------- text


def probe_tokenizer(run_dir: str | os.PathLike | None = None, vocab_size: int = 8192) -> Any:
    """The report tokenizer of a run (``<run>/stage_report/tokenizer``, or ``stage_joint``'s), else one trained on
    ``text_cls`` training texts.

    The fallback is trained once per process into a temporary folder (same corpus, same result).

    Args:
        run_dir: the run folder, or None.
        vocab_size: vocabulary of the fallback tokenizer (at most the network's).

    Returns:
        a ``transformers`` fast tokenizer.
    """
    from medcoss_monai.data.tasks import load_task_datalist
    from medcoss_monai.transforms import load_or_train_tokenizer, load_tokenizer

    for stage in ("stage_report", "stage_joint") if run_dir is not None else ():
        saved = Path(run_dir) / stage / "tokenizer"
        if (saved / "tokenizer.json").is_file():
            return load_tokenizer(saved)
    key = f"fallback:{vocab_size}"
    if key not in _TOKENIZER_CACHE:
        texts = [it["text"] for it in load_task_datalist("text_cls")["training"]]
        folder = tempfile.mkdtemp(prefix="medcoss_probe_tokenizer_")
        logger.info(f"no report-stage tokenizer found; trained one on the text_cls training reports in {folder}")
        _TOKENIZER_CACHE[key] = load_or_train_tokenizer(folder, texts, vocab_size=vocab_size)
    return _TOKENIZER_CACHE[key]


def _check_vocab(network: nn.Module, tokenizer: Any) -> None:
    config = getattr(unwrap_network(network), "config", None) or {}
    vocab = config.get("vocab_size") if isinstance(config, Mapping) else None
    if vocab is not None and len(tokenizer) > int(vocab):
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the network's vocabulary is {vocab}.")


def _text_batches(texts: Sequence[str], tokenizer: Any, max_length: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    from medcoss_monai.transforms import TokenizeText

    tokenize = TokenizeText(tokenizer, max_length)
    encoded = [tokenize(t) for t in texts]
    batches = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        batches.append({k: torch.stack([e[k] for e in chunk]) for k in ("input_ids", "attention_mask", "word_ids")})
    return batches


def text_probe(
    network: nn.Module,
    tokenizer: Any,
    device: torch.device | str = "cpu",
    n_train: int = 100,
    n_test: int = 1000,
    max_length: int = 112,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, Any]:
    """Few-shot multi-label probe on ``text_cls``: the first ``n_train`` training and ``n_test`` test reports.

    Args:
        network: the network.
        tokenizer: the report tokenizer (object or folder).
        device: where to run.
        n_train: training reports (the split is already shuffled with a fixed seed).
        n_test: test reports.
        max_length: token sequence length.
        batch_size: reports per forward.
        seed: the probe's random state.

    Returns:
        :func:`linear_probe`'s metrics (``auc`` = macro-AUC) plus ``classes``.
    """
    from medcoss_monai.data.tasks import load_task_datalist
    from medcoss_monai.transforms import load_tokenizer

    tokenizer = load_tokenizer(tokenizer)
    _check_vocab(network, tokenizer)
    data = load_task_datalist("text_cls")
    train, test = data["training"][:n_train], data["test"][:n_test]
    if len(test) < n_test:
        logger.warning(f"text probe: only {len(test)} test reports available ({n_test} asked for)")
    feats = {}
    for name, items in (("train", train), ("test", test)):
        batches = _text_batches([it["text"] for it in items], tokenizer, max_length, batch_size)
        feats[name] = pooled_features(network, batches, device)
    result = linear_probe(
        feats["train"], np.array([it["label"] for it in train]), feats["test"], np.array([it["label"] for it in test]),
        multilabel=True, seed=seed,
    )
    return {**result, "classes": data["classes"]}


# ---------------------------------------------------------------------------------------------- images


def image_probe_transforms(
    modality: str,
    img_size_2d: Sequence[int] = (96, 96),
    img_size_3d: Sequence[int] = (64, 64, 16),
    hu_window: Sequence[float] = (-1000.0, 1000.0),
) -> Any:
    """Transforms from a probe task's files to the stage's network input.

    - xray: PNG tile -> gray [0, 1] -> resized (area) to ``img_size_2d`` -> 3 channels;
    - pathology: PNG tile -> RGB [0, 1] -> resized (area) to ``img_size_2d``;
    - ct: NIfTI sub-volume in HU -> ``hu_window`` scaled to [0, 1] -> resized to ``img_size_3d``;
    - mri: NIfTI sub-volume, already normalised as the MRI stage does -> resized to ``img_size_3d``.

    Args:
        modality: ``xray``, ``ct``, ``mri`` or ``pathology``.
        img_size_2d: the 2D stages' input size.
        img_size_3d: the 3D stages' input size.
        hu_window: the CT stage's HU window.

    Returns:
        a ``monai.transforms.Compose`` mapping ``{"image": path, "label": y}`` to ``{"image": tensor, "label": y}``.
    """
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        RepeatChanneld,
        Resized,
        ScaleIntensityRanged,
        SelectItemsd,
    )

    from medcoss_monai.transforms import LoadSlideTiled, LoadXRayd

    keys = ["image"]
    if modality == "xray":
        chain = [LoadXRayd(keys), Resized(keys, spatial_size=tuple(img_size_2d), mode="area"), RepeatChanneld(keys, repeats=3)]
    elif modality == "pathology":
        chain = [LoadSlideTiled(keys), Resized(keys, spatial_size=tuple(img_size_2d), mode="area")]
    elif modality in ("ct", "mri"):
        chain = [LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys)]
        if modality == "ct":
            chain.append(ScaleIntensityRanged(keys, a_min=hu_window[0], a_max=hu_window[1], b_min=0.0, b_max=1.0, clip=True))
        chain.append(Resized(keys, spatial_size=tuple(img_size_3d), mode="trilinear"))
    else:
        raise ValueError(f"No image probe for modality '{modality}'.")
    chain += [EnsureTyped(keys, dtype=torch.float32, track_meta=False), SelectItemsd(["image", "label"])]
    return Compose(chain)


def _image_loader(items: Sequence[dict], transform: Any, batch_size: int) -> Any:
    from monai.data import DataLoader, Dataset

    return DataLoader(Dataset(list(items), transform), batch_size=batch_size, shuffle=False, num_workers=0)


def image_probe(
    network: nn.Module,
    modality: str,
    device: torch.device | str = "cpu",
    img_size_2d: Sequence[int] = (96, 96),
    img_size_3d: Sequence[int] = (64, 64, 16),
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Linear probe on a modality's classification task (``training`` split fits, ``test`` split scores).

    Args:
        network: the network.
        modality: ``xray``, ``ct``, ``mri`` or ``pathology``.
        device: where to run.
        img_size_2d: the 2D stages' input size.
        img_size_3d: the 3D stages' input size.
        batch_size: items per forward.
        seed: the probe's random state.

    Returns:
        :func:`linear_probe`'s metrics.
    """
    from medcoss_monai.data.tasks import load_task_datalist

    data = load_task_datalist(PROBE_TASKS[modality])
    transform = image_probe_transforms(modality, img_size_2d, img_size_3d)
    feats = {s: pooled_features(network, _image_loader(data[s], transform, batch_size), device) for s in ("training", "test")}
    labels = {s: np.array([it["label"] for it in data[s]]) for s in ("training", "test")}
    return linear_probe(feats["training"], labels["training"], feats["test"], labels["test"], seed=seed)


# -------------------------------------------------------------------------------------------- pretext


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
    state = state_dict_of(load_state(path, "stage model.pt"), path)
    heads = {k: v for k, v in state.items() if k.split(".", 1)[0].startswith(tuple(head_prefixes))}
    if not heads:
        raise ValueError(f"'{path}' holds no pretext-head key (prefixes {list(head_prefixes)}).")
    model = copy.deepcopy(unwrap_network(network))
    own = model.state_dict()
    # a head tensor tied to an encoder tensor (the MLM output = the text embedding) is encoder: keep it current
    encoder_storage = {v.data_ptr() for k, v in own.items() if not k.split(".", 1)[0].startswith(tuple(head_prefixes))}
    heads = {k: v for k, v in heads.items() if k not in own or own[k].data_ptr() not in encoder_storage}
    wrong = [f"{k}: saved {tuple(v.shape)} vs network {tuple(own[k].shape)}" for k, v in heads.items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise ValueError(f"Pretext heads in '{path}' do not fit the network: " + "; ".join(wrong[:5]))
    expected = {k for k, v in own.items() if k.split(".", 1)[0].startswith(tuple(head_prefixes)) and v.data_ptr() not in encoder_storage}
    missing, unexpected = sorted(expected - set(heads)), sorted(set(heads) - set(own))
    if missing or unexpected:
        # a half-loaded head would score the stage with random weights: refuse instead
        raise ValueError(
            f"Pretext heads in '{path}' do not match the network: {len(missing)} missing {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}."
        )
    model.load_state_dict(heads, strict=False)  # the encoder keys stay the current network's
    return model


def text_mlm_accuracy(
    network: nn.Module,
    tokenizer: Any,
    device: torch.device | str = "cpu",
    n_items: int | None = None,
    max_length: int = 112,
    mlm_probability: float = 0.15,
    batch_size: int = 64,
    seed: int = 0,
) -> float:
    """Masked-token top-1 accuracy on the report ``validation`` split (held out from pre-training), fixed masks.

    Args:
        network: the network (``pretext="mlm"`` forward gives ``logits``).
        tokenizer: the report stage's tokenizer (object or folder).
        device: where to run.
        n_items: first this many validation reports; None for all.
        max_length: token sequence length.
        mlm_probability: share of words masked.
        batch_size: reports per forward.
        seed: the masking seed (the same masks for every network).

    Returns:
        the accuracy over all masked tokens.
    """
    from medcoss_monai.data.samples import load_datalist
    from medcoss_monai.data.reports import report_text
    from medcoss_monai.transforms import WholeWordMask, load_tokenizer

    tokenizer = load_tokenizer(tokenizer)
    _check_vocab(network, tokenizer)
    items = load_datalist("report")["validation"][: n_items or None]
    masker = WholeWordMask(mlm_probability=mlm_probability, tokenizer=tokenizer)
    masker.set_random_state(seed)
    correct = total = 0
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            for batch in _text_batches([report_text(it) for it in items], tokenizer, max_length, batch_size):
                pairs = [masker(ids, words) for ids, words in zip(batch["input_ids"], batch["word_ids"])]
                ids = torch.stack([p[0] for p in pairs]).to(device)
                labels = torch.stack([p[1] for p in pairs]).to(device)
                out = network(ids, attention_mask=batch["attention_mask"].to(device), pretext="mlm", labels=labels)
                correct += int((out["logits"].argmax(-1) == out["labels"]).sum())
                total += int(out["labels"].numel())
    finally:
        network.train(was_training)
    return correct / max(total, 1)


def mae_mse(
    network: nn.Module,
    modality: str,
    device: torch.device | str = "cpu",
    img_size_2d: Sequence[int] = (96, 96),
    img_size_3d: Sequence[int] = (64, 64, 16),
    mask_ratio: float = 0.75,
    batch_size: int = 16,
    seed: int = 0,
) -> float:
    """Masked-patch MSE (the MAE loss: per-patch-normalised target if the network uses it) on held-out files.

    The crops are cut from the ``test`` files of the modality's sample datalist, which no stage
    trains on, by the stage bundle's own training transforms with a fixed seed
    (:func:`medcoss_monai.evaluation.held_out_mae_mse`); the masks are drawn from ``seed`` too, so
    every network is scored on the same crops and masks.

    Args:
        network: the network (``pretext="mae"`` forward).
        modality: ``xray``, ``ct``, ``mri`` or ``pathology``.
        device: where to run.
        img_size_2d: the 2D stages' input size.
        img_size_3d: the 3D stages' input size.
        mask_ratio: share of masked patches.
        batch_size: crops per forward.
        seed: the crops and noise seed.

    Returns:
        mean squared error over all masked patches of all crops.
    """
    from medcoss_monai.evaluation import held_out_mae_mse

    shared = {"img_size_2d": list(img_size_2d), "img_size_3d": list(img_size_3d)}
    return held_out_mae_mse(network, modality, device, shared, mask_ratio, batch_size, seed)


# -------------------------------------------------------------------------------------------- one row


def evaluate_stage(
    network: nn.Module,
    run_dir: str | os.PathLike | None,
    after: str,
    trained: Sequence[str] = (),
    device: torch.device | str = "cpu",
    img_size_2d: Sequence[int] = (96, 96),
    img_size_3d: Sequence[int] = (64, 64, 16),
    probes: Sequence[str] = PROBE_COLUMNS,
    tokenizer: Any = None,
    text_n_train: int = 100,
    text_n_test: int = 1000,
    mlm_n_items: int | None = None,
    max_length: int = 112,
    mask_ratio: float = 0.75,
    seed: int = 0,
    timings: dict[str, float] | None = None,
    current: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """One row of the forgetting matrix for ``network``.

    Args:
        network: the current network (copied for pretext scores; not modified).
        run_dir: the run folder holding ``stage_<m>/model.pt`` (heads) and ``stage_report/tokenizer``.
        after: the row name (``scratch``, ``stage_report``, ...).
        trained: modalities trained so far (their pretext columns are filled), e.g. ``["report", "ct"]``.
        device: where to run.
        img_size_2d: the 2D stages' input size.
        img_size_3d: the 3D stages' input size.
        probes: probe columns to compute (others stay empty).
        tokenizer: the report tokenizer; None finds it with :func:`probe_tokenizer`.
        text_n_train: training reports of the text probe.
        text_n_test: test reports of the text probe.
        mlm_n_items: validation reports for ``text_mlm_acc`` (None: all).
        max_length: token sequence length.
        mask_ratio: MAE mask ratio for the MSE.
        seed: probe and masking seed.
        timings: if given, filled with seconds per column.
        current: the modality (or modalities, for a joint stage) whose pretext heads are the
            network's own (the stage just trained: its ``model.pt`` may not be written yet); the
            others are loaded from their stages.

    Returns:
        dict over :data:`CSV_COLUMNS` (None where not computed).
    """
    row: dict[str, Any] = {c: None for c in CSV_COLUMNS}
    row["after"] = after
    timings = timings if timings is not None else {}
    network = unwrap_network(network)
    vocab = (getattr(network, "config", None) or {}).get("vocab_size", 8192)
    if ("text" in probes or "report" in trained) and tokenizer is None:
        tokenizer = probe_tokenizer(run_dir, vocab_size=int(vocab))
    for column in probes:
        start = time.time()
        if column == "text":
            row[column] = text_probe(network, tokenizer, device, text_n_train, text_n_test, max_length, seed=seed)["auc"]
        else:
            row[column] = image_probe(network, column, device, img_size_2d, img_size_3d, seed=seed)["auc"]
        timings[column] = time.time() - start
    own_heads = {current} if isinstance(current, str) else set(current or ())
    for modality in trained:
        column = PRETEXT_COLUMNS.get(modality)
        if column is None:
            continue
        start = time.time()
        if modality in own_heads:
            scorer = network
        else:
            scorer = network_with_stage_heads(network, Path(run_dir or ".") / f"stage_{modality}" / "model.pt")
        if modality == "report":
            row[column] = text_mlm_accuracy(scorer, tokenizer, device, mlm_n_items, max_length, seed=seed)
        else:
            row[column] = mae_mse(scorer, modality, device, img_size_2d, img_size_3d, mask_ratio, seed=seed)
        del scorer
        timings[column] = time.time() - start
    return row


def write_rows(rows: Sequence[Mapping[str, Any]], csv_path: str | os.PathLike) -> Path:
    """Write probe rows as one CSV (header :data:`CSV_COLUMNS`), atomically: a kill leaves the old file or the new.

    Args:
        rows: dicts over :data:`CSV_COLUMNS`.
        csv_path: the CSV file.

    Returns:
        the CSV path.
    """
    from medcoss_monai.utils import atomic_write_text

    lines = [",".join(CSV_COLUMNS)]
    for r in rows:
        lines.append(",".join(_fmt(r.get(c)) for c in CSV_COLUMNS))
    return atomic_write_text("\n".join(lines) + "\n", Path(csv_path))


def append_row(row: Mapping[str, Any], csv_path: str | os.PathLike) -> Path:
    """Append a row to a probe CSV (header :data:`CSV_COLUMNS` written first); a row with the same ``after`` is replaced.

    Args:
        row: dict over :data:`CSV_COLUMNS`.
        csv_path: the CSV file.

    Returns:
        the CSV path.
    """
    path = Path(csv_path)
    rows: list[dict[str, Any]] = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r.get("after") != row.get("after")]
    rows.append({c: row.get(c) for c in CSV_COLUMNS})
    return write_rows(rows, path)


def _fmt(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.6f}"
    return str(value)


class ProbeHandler:
    """Runs :func:`evaluate_stage` when a stage completes and appends the row to a probe CSV (rank 0 only).

    Args:
        network: the trained network.
        run_dir: the run folder (``output_dir``).
        modality: this stage's modality; the row is named ``stage_<modality>``.
        trained: modalities trained up to and including this stage (default: read from the
            ``stage.json`` chain of ``run_dir`` plus ``modality``).
        csv_path: the probe CSV (default ``<run_dir>/probes.csv``).
        device: where to run the probes (default: the network's device).
        enabled: False turns the handler off (a bundle switch).
        **kwargs: passed to :func:`evaluate_stage` (``img_size_2d``, ``img_size_3d``, ``text_n_test``...).
    """

    def __init__(
        self,
        network: nn.Module,
        run_dir: str | os.PathLike,
        modality: str,
        trained: Sequence[str] | None = None,
        csv_path: str | os.PathLike | None = None,
        device: torch.device | str | None = None,
        enabled: bool = True,
        **kwargs: Any,
    ) -> None:
        self.network = network
        self.run_dir = Path(run_dir)
        self.modality = modality
        self.trained = list(trained) if trained is not None else None
        self.csv_path = Path(csv_path) if csv_path is not None else self.run_dir / "probes.csv"
        self.device = device
        self.enabled = enabled
        self.kwargs = kwargs

    def attach(self, engine: Any) -> None:
        """Register on ``Events.COMPLETED``.

        Args:
            engine: the trainer.
        """
        from ignite.engine import Events

        if self.enabled:
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Any = None) -> dict[str, Any] | None:
        if not is_rank0():
            return None
        trained = self.trained
        if trained is None:
            from medcoss_monai.bundle.forgetting import stage_order

            trained = [m for m in stage_order(self.run_dir) if m != self.modality] + [self.modality]
        device = self.device or next(unwrap_network(self.network).parameters()).device
        timings: dict[str, float] = {}
        row = evaluate_stage(
            self.network, self.run_dir, f"stage_{self.modality}", trained, device, timings=timings,
            current=self.modality, **self.kwargs,
        )
        append_row(row, self.csv_path)
        logger.info(f"probes after stage_{self.modality}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items() if k != "after"))
        return row
