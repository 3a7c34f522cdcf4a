"""Report text transforms on the real Indiana reports: BPE tokenizer, tokenization, whole-word masking."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset

from medcoss_monai.transforms import (
    SPECIAL_TOKENS,
    ReportTextd,
    TokenizeText,
    TokenizeTextd,
    WholeWordMask,
    WholeWordMaskd,
    load_or_train_tokenizer,
    load_tokenizer,
    train_bpe_tokenizer,
)
from stage_utils import bundle_section

MAX_LEN = 112


@pytest.fixture(scope="module")
def reports(datalist):
    return datalist("report")


@pytest.fixture(scope="module")
def tokenizer_dir(reports, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    train_bpe_tokenizer([i["text"] for i in reports["training"]], out, vocab_size=8192, min_frequency=2)
    return out


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def test_tokenizer_saved_in_hf_format_and_round_trips(tokenizer_dir, tokenizer, reports):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tokenizer_dir / name).is_file(), name
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (
        tokenizer.bos_token,
        tokenizer.pad_token,
        tokenizer.eos_token,
        tokenizer.unk_token,
        tokenizer.mask_token,
    ) == SPECIAL_TOKENS
    assert 1000 < len(tokenizer) <= 8192
    for item in reports["validation"][:50]:
        ids = tokenizer(item["text"])["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
        assert tokenizer.unk_token_id not in ids  # byte-level: nothing is unknown
        assert tokenizer.decode(ids, skip_special_tokens=True) == item["text"]


def test_load_or_train_reuses_saved_tokenizer(tokenizer_dir, tokenizer):
    stamp = os.path.getmtime(tokenizer_dir / "tokenizer.json")
    again = load_or_train_tokenizer(tokenizer_dir, texts=None)
    assert again.get_vocab() == tokenizer.get_vocab()
    assert os.path.getmtime(tokenizer_dir / "tokenizer.json") == stamp


def test_load_or_train_needs_texts_when_nothing_saved(tmp_path):
    with pytest.raises(ValueError, match="no texts"):
        load_or_train_tokenizer(tmp_path / "empty", texts=None)
    with pytest.raises(ValueError, match="no non-empty text"):
        train_bpe_tokenizer(["", "  "], tmp_path / "t")


def test_tokenize_shapes_padding_and_word_ids(tokenizer, reports):
    tokenize = TokenizeTextd("text", tokenizer=tokenizer, max_length=MAX_LEN)
    long_seen = False
    for item in reports["validation"][:100]:
        out = tokenize(item)
        ids, att, words = out["input_ids"], out["attention_mask"], out["word_ids"]
        for t in (ids, att, words):
            assert t.dtype == torch.long and t.shape == (MAX_LEN,)
        n = int(att.sum())
        assert att[:n].eq(1).all() and att[n:].eq(0).all()
        assert ids[n:].eq(tokenizer.pad_token_id).all()
        assert ids[0] == tokenizer.bos_token_id and ids[n - 1] == tokenizer.eos_token_id
        assert words[0] == -1 and words[n - 1 :].eq(-1).all()
        # byte-level BPE: a word starts at a token with a leading space (Ġ), or at the first token
        tokens = tokenizer.convert_ids_to_tokens(ids[1 : n - 1].tolist())
        starts = np.diff(np.concatenate([[-1], words[1 : n - 1].numpy()])) == 1
        expected = np.array([t.startswith("Ġ") for t in tokens])
        expected[0] = True
        np.testing.assert_array_equal(starts, expected)
        long_seen |= len(tokenizer(item["text"])["input_ids"]) > MAX_LEN
    assert long_seen, "no report was long enough to exercise truncation"


def test_word_ids_keep_punctuation_and_spaces_with_their_word(tokenizer):
    out = TokenizeText(tokenizer, max_length=32)("No effusion, x-XXXX.  Lungs clear.")
    words = out["word_ids"][out["word_ids"] >= 0]
    assert int(words.max()) + 1 == 5  # "No", "effusion,", "x-XXXX.", "Lungs", "clear."


def _mask_stats(tokenizer, items, seed=0, p=0.15):
    tokenize = TokenizeTextd("text", tokenizer=tokenizer, max_length=MAX_LEN)
    masker = WholeWordMaskd("input_ids", tokenizer=tokenizer, mlm_probability=p).set_random_state(seed)
    counts = {"words": 0, "chosen": 0, "targets": 0, "mask": 0, "random": 0, "kept": 0}
    special = set(tokenizer.all_special_ids)
    for item in items:
        tok = tokenize(item)
        orig = tok["input_ids"].clone()
        out = masker(tok)
        ids, labels, words = out["input_ids"], out["labels"], out["word_ids"]
        assert ids.dtype == labels.dtype == torch.long and labels.shape == (MAX_LEN,)
        target = labels != -100
        # labels: original id on targets, -100 elsewhere; untouched tokens stay the same
        assert torch.equal(labels[target], orig[target])
        assert torch.equal(ids[~target], orig[~target])
        # never special or pad tokens
        assert not target[words < 0].any()
        # whole words: every sub-token of a word has the same fate
        for w in words.unique():
            if w >= 0:
                in_word = target[words == w]
                assert in_word.all() or not in_word.any()
        n_words = int(words.max()) + 1
        counts["words"] += n_words
        counts["chosen"] += len(words[target].unique())
        counts["targets"] += int(target.sum())
        counts["mask"] += int((ids[target] == tokenizer.mask_token_id).sum())
        replaced = target & (ids != orig) & (ids != tokenizer.mask_token_id)
        counts["random"] += int(replaced.sum())
        counts["kept"] += int((target & (ids == orig)).sum())
        assert not any(int(i) in special for i in ids[replaced])
    return counts


def test_whole_word_mask_ratio_and_80_10_10_split(tokenizer, reports):
    c = _mask_stats(tokenizer, reports["training"][:600])
    assert abs(c["chosen"] / c["words"] - 0.15) < 0.01
    assert c["targets"] > 4000
    assert abs(c["mask"] / c["targets"] - 0.8) < 0.03
    # a random replacement can draw the original token (rarely): count it with "kept"
    assert abs(c["random"] / c["targets"] - 0.1) < 0.02
    assert abs(c["kept"] / c["targets"] - 0.1) < 0.02


def test_whole_word_mask_is_reproducible_and_differs_across_seeds(tokenizer, reports):
    item = TokenizeTextd("text", tokenizer=tokenizer, max_length=MAX_LEN)(reports["validation"][3])
    runs = [
        WholeWordMaskd("input_ids", tokenizer=tokenizer).set_random_state(s)(dict(item))["labels"] for s in (7, 7, 8)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_whole_word_mask_without_word_ids_finds_the_same_words(tokenizer, reports):
    tokenize = TokenizeText(tokenizer, max_length=MAX_LEN)
    masker = WholeWordMask(tokenizer=tokenizer)
    for item in reports["validation"][:30]:
        out = tokenize(item["text"])
        np.testing.assert_array_equal(masker._fallback_word_ids(out["input_ids"].numpy()), out["word_ids"].numpy())


def test_whole_word_mask_needs_ids():
    with pytest.raises(ValueError, match="mask_token_id"):
        WholeWordMask(mlm_probability=0.15)
    masker = WholeWordMask(mask_token_id=4, vocab_size=50, special_token_ids=[0, 1, 2, 3]).set_random_state(0)
    with pytest.raises(ValueError, match="one sequence"):
        masker(torch.zeros(2, 8, dtype=torch.long))


def test_report_text_from_file(tmp_path, reports):
    text = reports["validation"][0]["text"]
    path = tmp_path / "report.txt"
    path.write_text("  " + text.replace(" ", "\n  ", 3) + "\n", encoding="utf-8")
    assert ReportTextd("text")({"text_file": str(path)})["text"] == text
    assert ReportTextd("text")({"text": text})["text"] == text
    with pytest.raises(ValueError, match="neither"):
        ReportTextd("text")({"id": "x"})


def test_report_chain_batches_match_the_contract(tokenizer_dir, reports):
    """The report stage bundle's own ``train#preprocessing``, with its masking rate."""
    tokenizer = load_tokenizer(tokenizer_dir)
    rate = bundle_section("report", "mlm_probability", tokenizer=tokenizer)

    def masked_share(probability: float) -> float:
        chain = bundle_section("report", "train#preprocessing", tokenizer=tokenizer, mlm_probability=probability)
        chain.set_random_state(0)
        batches = list(DataLoader(Dataset(reports["validation"][:64], chain), batch_size=16))
        batch = batches[0]
        assert set(batch) == {"input_ids", "attention_mask", "labels", "source_text"}
        for key in ("input_ids", "attention_mask", "labels"):
            assert batch[key].dtype == torch.long and batch[key].shape == (16, MAX_LEN)
        assert batch["source_text"][0] == reports["validation"][0]["text"]  # names the report if its loss diverges
        assert (batch["labels"] != -100).any() and (batch["labels"][batch["attention_mask"] == 0] == -100).all()
        masked = sum(int((b["labels"] != -100).sum()) for b in batches)
        return masked / sum(int(b["attention_mask"].sum()) for b in batches)

    # whole words are masked at the bundle's rate: twice the rate masks about twice the tokens
    assert masked_share(rate) / masked_share(rate / 2) == pytest.approx(2.0, rel=0.15)
    assert 0.5 * rate < masked_share(rate) < 1.5 * rate