"""Exported text bundles read and tokenize reports with MONAI, PyTorch and the HF tokenizer they ship only.

:data:`~medcoss_monai.bundle.export.portable.TEXT_IDS` (``Lambda`` transforms in place of ``ReportTextd`` and
``TokenizeTextd``, the tokenizer loaded by ``transformers.AutoTokenizer``, the evaluator's ``prepare_batch``)
runs on real held-out reports while ``import medcoss_monai`` fails; the token ids and masks must equal the
package's. The exported report stage's ``configs/inference.json`` is run in a subprocess without the
package in ``test_export_text.py`` (it reuses that module's trained stage).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from medcoss_monai.bundle.export.portable import TEXT_IDS, TEXT_IMPORTS, make_portable_transforms, needs_medcoss
from medcoss_monai.transforms import ReportTextd, TokenizeTextd, train_bpe_tokenizer

LENGTH = 112


@pytest.fixture(scope="module")
def tokenizer_dir(datalist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BPE tokenizer trained on 200 sample training reports (as a report stage trains one), in HF format."""
    folder = tmp_path_factory.mktemp("bundle")
    train_bpe_tokenizer([i["text"] for i in datalist("report")["training"][:200]], folder / "models/tokenizer", 2048)
    return folder


def test_text_transforms_equal_the_package_tokenization(datalist, tokenizer_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    test = datalist("report")["test"][:12]
    (tmp_path / "long.txt").write_text("  " + "\n\n".join(i["text"] for i in test[:3]) + "\t\n")  # truncated at 112
    items = [dict(i) for i in test] + [{"text_file": str(tmp_path / "long.txt")}]
    chain = [{"_target_": "medcoss_monai.transforms.ReportTextd", "keys": ["text"]},
             {"_target_": "medcoss_monai.transforms.TokenizeTextd", "keys": "text", "tokenizer": "@tokenizer",
              "max_length": "@max_text_len"},
             {"_target_": "SelectItemsd", "keys": ["input_ids", "attention_mask"]}]
    portable = make_portable_transforms(chain)
    config = {"imports": ["$import os", "$import torch", "$import monai"] + TEXT_IMPORTS, **TEXT_IDS,
              "bundle_root": str(tokenizer_dir), "max_text_len": LENGTH,
              "load": {"_target_": "Compose", "transforms": portable}}
    assert not needs_medcoss(config)
    report, tokenize = ReportTextd("text"), TokenizeTextd("text", str(tokenizer_dir / "models/tokenizer"), LENGTH)
    expected = [tokenize(report(i)) for i in items]
    from monai.bundle import ConfigParser

    with monkeypatch.context() as m:
        m.setitem(sys.modules, "medcoss_monai", None)
        parser = ConfigParser(config)
        load = parser.get_parsed_content("load")
        got = [load(dict(i)) for i in items]
        prepare = parser.get_parsed_content("prepare_batch")
    for item, g, e in zip(items, got, expected):
        for key in ("input_ids", "attention_mask"):
            assert g[key].dtype == torch.long and torch.equal(g[key], e[key]), (item.get("id"), key)
        assert g.get("id") == item.get("id")  # kept: it names the CSV row
    assert int(got[-1]["attention_mask"].sum()) == LENGTH  # the long file fills the length
    assert int(got[0]["attention_mask"].sum()) < LENGTH  # a short report is padded
    batch = {k: torch.stack([g[k] for g in got[:2]]) for k in ("input_ids", "attention_mask")}
    ids, label, args, kwargs = prepare(batch, torch.device("cpu"))
    assert torch.equal(ids, batch["input_ids"]) and label is None and args == ()
    assert torch.equal(kwargs["attention_mask"], batch["attention_mask"])
    json.dumps(config)  # the config is plain JSON
