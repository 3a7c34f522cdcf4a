"""Report text: the text of a report item and its tokenization for the MLM pretext.

The chain for a report item is ``ReportTextd -> TokenizeTextd -> WholeWordMaskd`` (:mod:`.masking`):
the first two are deterministic (cacheable), the mask is drawn anew every time the item is seen.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from .tokenizer import TokenizerLike, load_tokenizer

__all__ = ["clean_report_text", "report_text", "ReportTextd", "TokenizeText", "TokenizeTextd"]


def clean_report_text(text: str | None) -> str:
    """Collapse whitespace (report XML is hand-indented) and strip.

    Args:
        text: a report text, or None.

    Returns:
        The text on one line, without leading or trailing spaces.
    """
    return re.sub(r"\s+", " ", text or "").strip()




def report_text(item: Mapping[str, Any]) -> str:
    """Text of a report datalist item: its ``"text"``, or the content of the file named by ``"text_file"``.

    Args:
        item: a datalist item.

    Returns:
        the report text, whitespace collapsed.

    Raises:
        ValueError: the item has neither key, or the file cannot be decoded as UTF-8.
        FileNotFoundError: ``"text_file"`` names a missing file.
    """
    if isinstance(item.get("text"), str):
        return clean_report_text(item["text"])
    if item.get("text_file"):
        path = Path(item["text_file"])
        if not path.is_file():
            raise FileNotFoundError(f"Report text file '{path}' does not exist.")
        try:
            return clean_report_text(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"Cannot read report text file '{path}': not UTF-8 ({e}).") from e
    raise ValueError(f"Report item has neither 'text' nor 'text_file' (keys: {sorted(item)}).")


class ReportTextd(MapTransform):
    """Fill ``item[key]`` with the report text, read from ``item["text_file"]`` when the text is absent.

    Uses :func:`report_text`, so the text is whitespace-collapsed either way.

    Args:
        keys: the text key (normally ``"text"``).
        text_file_key: the key naming a UTF-8 text file to read when ``key`` is missing.
        allow_missing_keys: see ``MapTransform``.
    """

    def __init__(
        self, keys: KeysCollection = "text", text_file_key: str = "text_file", allow_missing_keys: bool = False
    ):
        super().__init__(keys, allow_missing_keys)
        self.text_file_key = text_file_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            if isinstance(d.get(key), str):
                source = {"text": d[key]}
            elif d.get(self.text_file_key):
                source = {"text_file": d[self.text_file_key]}
            elif self.allow_missing_keys:
                continue
            else:
                raise ValueError(
                    f"Report item has neither '{key}' nor '{self.text_file_key}' (keys: {sorted(map(str, d))})."
                )
            d[key] = report_text(source)
        return d


def _word_ids(text: str, offsets: Sequence[tuple[int, int]], special: Sequence[int]) -> list[int]:
    """Index of the whitespace-delimited word each token belongs to; -1 for special and pad tokens.

    A content token starts a new word when it is the first one, or when whitespace sits at or just
    before its start (byte-level BPE offsets include the leading space of a ``Ġ`` token; WordPiece
    offsets do not). Tokens sharing a character (bytes of one multi-byte character) and tokens that are
    only whitespace never start a word.
    """
    ids, word, prev_end = [], -1, None
    for (start, end), is_special in zip(offsets, special):
        if is_special:
            ids.append(-1)
            continue
        if prev_end is None:
            word += 1
        elif (
            start >= prev_end
            and text[start:end].strip()  # a run of spaces (a lone "Ġ") stays with the word before
            and (text[start : start + 1].isspace() or text[start - 1 : start].isspace())
        ):
            word += 1
        ids.append(word)
        prev_end = max(end, prev_end or 0)
    return ids


class TokenizeText(Transform):
    """Tokenize one text into fixed-length ``input_ids``, ``attention_mask`` and ``word_ids``.

    Sequences are wrapped as ``<s> ... </s>``, truncated and padded to ``max_length``. ``word_ids``
    gives the whitespace-delimited word of each token (-1 for special and pad tokens), which
    :class:`WholeWordMask` needs to mask words whole.

    Args:
        tokenizer: a fast HF tokenizer, or the folder it is saved in.
        max_length: the sequence length L.

    Returns:
        dict of torch.long tensors of shape (L,): ``input_ids``, ``attention_mask``, ``word_ids``.
    """

    def __init__(self, tokenizer: TokenizerLike, max_length: int = 112):
        self.tokenizer = load_tokenizer(tokenizer)
        if not getattr(self.tokenizer, "is_fast", False):
            raise TypeError("TokenizeText needs a fast (Rust) tokenizer for its offsets.")
        self.max_length = int(max_length)

    def __call__(self, text: str) -> dict[str, torch.Tensor]:
        if not isinstance(text, str):
            raise TypeError(f"TokenizeText expects a string, got {type(text).__name__}.")
        enc = self.tokenizer(
            text,
            max_length=self.max_length,
            padding="max_length",
            truncation=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_attention_mask=True,
        )
        special = [s or not a for s, a in zip(enc["special_tokens_mask"], enc["attention_mask"])]
        return {
            "input_ids": torch.as_tensor(enc["input_ids"], dtype=torch.long),
            "attention_mask": torch.as_tensor(enc["attention_mask"], dtype=torch.long),
            "word_ids": torch.as_tensor(_word_ids(text, enc["offset_mapping"], special), dtype=torch.long),
        }


class TokenizeTextd(MapTransform):
    """Dictionary twin of :class:`TokenizeText`: reads ``item[key]`` and adds the token tensors.

    Args:
        keys: the text key (exactly one, normally ``"text"``).
        tokenizer: a fast HF tokenizer, or the folder it is saved in.
        max_length: the sequence length L.
        input_ids_key: output key of the token ids.
        attention_mask_key: output key of the attention mask.
        word_ids_key: output key of the word index of each token (-1 for special/pad).
        allow_missing_keys: see ``MapTransform``.
    """

    def __init__(
        self,
        keys: KeysCollection = "text",
        tokenizer: TokenizerLike = None,
        max_length: int = 112,
        input_ids_key: str = "input_ids",
        attention_mask_key: str = "attention_mask",
        word_ids_key: str = "word_ids",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"TokenizeTextd takes one text key, got {self.keys}.")
        if tokenizer is None:
            raise ValueError("TokenizeTextd needs a tokenizer (object or folder).")
        self.tokenize = TokenizeText(tokenizer, max_length)
        self.out_keys = {"input_ids": input_ids_key, "attention_mask": attention_mask_key, "word_ids": word_ids_key}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            for name, value in self.tokenize(d[key]).items():
                d[self.out_keys[name]] = value
        return d
