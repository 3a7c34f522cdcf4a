"""The report modality's scores: a few-shot text probe and the masked-token accuracy."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from medcoss_monai.layout import TOKENIZER_DIR, stage_dir
from medcoss_monai.transforms import report_text
from medcoss_monai.samples.sample_data import load_datalist
from medcoss_monai.samples.tasks import load_task_datalist
from medcoss_monai.evaluation.features import linear_probe, pooled_features
from medcoss_monai.networks.checkpoint import unwrap_network
from medcoss_monai.transforms import TokenizeText, WholeWordMask, load_or_train_tokenizer, load_tokenizer

__all__ = ["TEXT_TASK", "probe_tokenizer", "text_probe", "text_mlm_accuracy"]

logger = logging.getLogger(__name__)

TEXT_TASK = "text_cls"
"""The derived task (:mod:`medcoss_monai.samples.tasks`) of the text probe."""

_TOKENIZER_CACHE: dict[str, Any] = {}


def probe_tokenizer(run_dir: str | os.PathLike | None = None, vocab_size: int = 8192) -> Any:
    """The report tokenizer of a run (its ``report`` stage's, else its ``joint`` stage's), else one trained
    on the ``text_cls`` training texts.

    The fallback is trained once per process into a temporary folder (same corpus, same result).

    Args:
        run_dir: the run folder, or None.
        vocab_size: vocabulary of the fallback tokenizer (at most the network's).

    Returns:
        a ``transformers`` fast tokenizer.
    """
    for stage in ("report", "joint") if run_dir is not None else ():
        saved = stage_dir(run_dir, stage) / TOKENIZER_DIR
        if (saved / "tokenizer.json").is_file():
            return load_tokenizer(saved)
    key = f"fallback:{vocab_size}"
    if key not in _TOKENIZER_CACHE:
        texts = [it["text"] for it in load_task_datalist(TEXT_TASK)["training"]]
        folder = tempfile.mkdtemp(prefix="medcoss_probe_tokenizer_")
        logger.info(f"no report-stage tokenizer found; trained one on the {TEXT_TASK} training reports in {folder}")
        _TOKENIZER_CACHE[key] = load_or_train_tokenizer(folder, texts, vocab_size=vocab_size)
    return _TOKENIZER_CACHE[key]


def _check_vocab(network: nn.Module, tokenizer: Any) -> None:
    config = getattr(unwrap_network(network), "config", None) or {}
    vocab = config.get("vocab_size") if isinstance(config, Mapping) else None
    if vocab is not None and len(tokenizer) > int(vocab):
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the network's vocabulary is {vocab}.")


def _text_batches(texts: Sequence[str], tokenizer: Any, max_length: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
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
        max_length: token sequence length (the report stage's ``max_text_len``).
        batch_size: reports per forward.
        seed: the probe's random state.

    Returns:
        :func:`~medcoss_monai.evaluation.features.linear_probe`'s metrics (``auc`` = macro-AUC) plus ``classes``.
    """
    tokenizer = load_tokenizer(tokenizer)
    _check_vocab(network, tokenizer)
    data = load_task_datalist(TEXT_TASK)
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

    The masking rate is the score's own (the same for every network and run), not the stage's
    training ``mlm_probability``.

    Args:
        network: the network (``pretext="mlm"`` forward gives ``logits``).
        tokenizer: the report stage's tokenizer (object or folder).
        device: where to run.
        n_items: first this many validation reports; None for all.
        max_length: token sequence length (the report stage's ``max_text_len``).
        mlm_probability: share of words masked.
        batch_size: reports per forward.
        seed: the masking seed (the same masks for every network).

    Returns:
        the accuracy over all masked tokens.
    """
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
