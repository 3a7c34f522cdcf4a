"""PubMed 20k RCT (MedCoSS's "PudMed20k" downstream set): sentence classification with its official split.

Layout as published (``Franck-Dernoncourt/pubmed-rct``): ``PubMed_20k_RCT/{train,dev,test}.txt``, each
abstract opened by ``###<PMID>`` and followed by ``LABEL<TAB>sentence`` lines (BACKGROUND, OBJECTIVE,
METHODS, RESULTS, CONCLUSIONS). The reference reads the three files as its three splits.
"""

from __future__ import annotations

from typing import Any

from medcoss_monai.data.folder_datalists import datalist_from_labelled_sentences
from medcoss_monai.data.prepare.common import PrepareContext, find_file

__all__ = ["PUBMED_CLASSES", "convert_pudmed20k"]

PUBMED_CLASSES = ("BACKGROUND", "CONCLUSIONS", "METHODS", "OBJECTIVE", "RESULTS")
"""The five sentence roles, sorted (their label indices)."""


def convert_pudmed20k(ctx: PrepareContext) -> dict[str, Any]:
    """PubMed 20k RCT -> ``{"text", "label", "abstract_id"}`` items: train / dev / test as the three splits.

    Args:
        ctx: the run's context (``--root``: the ``PubMed_20k_RCT`` folder or the repository holding it).

    Returns:
        The datalist with ``classes``.
    """
    train = find_file(ctx.root, ["train.txt", "PubMed_20k_RCT/train.txt"], ctx.title)
    for name in ("dev.txt", "test.txt"):
        find_file(train.parent, name, ctx.title, depth=0)
    datalist = datalist_from_labelled_sentences(train.parent, classes=PUBMED_CLASSES)
    datalist["split"] = {"official": "train.txt, dev.txt, test.txt"}
    return datalist
