"""Report text: byte-level BPE tokenizer, tokenization and whole-word masking for the MLM pretext.

The chain for a report item is ``ReportTextd -> TokenizeTextd -> WholeWordMaskd``: the first two are
deterministic (cacheable), the mask is drawn anew every time the item is seen.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import optional_import

tokenizers, has_tokenizers = optional_import("tokenizers")
transformers, has_transformers = optional_import("transformers")

__all__ = [
    "SPECIAL_TOKENS",
    "clean_report_text",
    "report_text",
    "train_bpe_tokenizer",
    "load_or_train_tokenizer",
    "load_tokenizer",
    "ReportTextd",
    "TokenizeText",
    "TokenizeTextd",
    "WholeWordMask",
    "WholeWordMaskd",
]

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
"""Special tokens in id order: ``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2, ``<unk>`` = 3, ``<mask>`` = 4."""

_SPECIAL_ROLES = {
    "bos_token": "<s>",
    "cls_token": "<s>",
    "pad_token": "<pad>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}

TokenizerLike = Union[str, os.PathLike, Any]


def _require_hf() -> None:
    if not (has_tokenizers and has_transformers):
        raise ImportError("Report text needs `tokenizers` and `transformers`: `pip install tokenizers transformers`.")


def train_bpe_tokenizer(
    texts: Iterable[str], output_dir: str | os.PathLike, vocab_size: int = 8192, min_frequency: int = 2
) -> Any:
    """Train a byte-level BPE tokenizer on ``texts`` and save it in Hugging Face format.

    The tokenizer has the special tokens of :data:`SPECIAL_TOKENS` and wraps every sequence as
    ``<s> ... </s>``. ``output_dir`` receives ``tokenizer.json``, ``tokenizer_config.json`` and
    ``special_tokens_map.json``, so ``transformers.AutoTokenizer.from_pretrained(output_dir)`` loads it.

    Args:
        texts: the training corpus, one document per string.
        output_dir: folder to write (created if missing; existing tokenizer files are replaced).
        vocab_size: the largest vocabulary to learn (a small corpus may stop below it).
        min_frequency: a pair must occur at least this often to be merged.

    Returns:
        the trained ``transformers.PreTrainedTokenizerFast``.

    Raises:
        ValueError: ``texts`` holds no non-empty string.
    """
    _require_hf()
    corpus = [t for t in texts if isinstance(t, str) and t.strip()]
    if not corpus:
        raise ValueError(f"Cannot train a tokenizer for '{output_dir}': the corpus holds no non-empty text.")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        corpus, vocab_size=int(vocab_size), min_frequency=int(min_frequency), special_tokens=list(SPECIAL_TOKENS)
    )
    backend = bpe._tokenizer  # the plain `tokenizers.Tokenizer` under the convenience wrapper
    bos, eos = backend.token_to_id("<s>"), backend.token_to_id("</s>")
    backend.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **_SPECIAL_ROLES)
    _save_tokenizer(tokenizer, Path(output_dir))
    return tokenizer


def _save_tokenizer(tokenizer: Any, output_dir: Path) -> None:
    """Save in HF format through a temporary folder, then move the files in (safe for concurrent ranks)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".tmp_tokenizer_") as tmp:
        tokenizer.save_pretrained(tmp)
        config_path = Path(tmp, "tokenizer_config.json")
        config = json.loads(config_path.read_text())
        # the generic class name loads with transformers 4.x and 5.x alike
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(config, indent=2))
        special_map = Path(tmp, "special_tokens_map.json")
        if not special_map.exists():  # transformers 5 no longer writes it; 4.x readers expect it
            special_map.write_text(json.dumps(_SPECIAL_ROLES, indent=2))
        for name in os.listdir(tmp):
            os.replace(os.path.join(tmp, name), output_dir / name)


def load_tokenizer(tokenizer: TokenizerLike) -> Any:
    """A tokenizer object as is, or the HF tokenizer saved in the folder ``tokenizer``.

    Raises:
        FileNotFoundError: the folder has no ``tokenizer.json``.
    """
    if not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    _require_hf()
    path = Path(tokenizer)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"No tokenizer in '{path}': 'tokenizer.json' is missing.")
    return transformers.AutoTokenizer.from_pretrained(str(path))


def load_or_train_tokenizer(
    output_dir: str | os.PathLike, texts: Iterable[str] | None = None, vocab_size: int = 8192, min_frequency: int = 2
) -> Any:
    """Load the tokenizer saved in ``output_dir``, or train one on ``texts`` and save it there.

    Args:
        output_dir: the tokenizer folder (a stage's ``tokenizer/``).
        texts: the corpus, used only when no tokenizer is saved yet.
        vocab_size: see :func:`train_bpe_tokenizer`.
        min_frequency: see :func:`train_bpe_tokenizer`.

    Returns:
        a ``transformers.PreTrainedTokenizerFast``.

    Raises:
        ValueError: nothing is saved in ``output_dir`` and no ``texts`` were given.
    """
    if (Path(output_dir) / "tokenizer.json").is_file():
        return load_tokenizer(output_dir)
    if texts is None:
        raise ValueError(f"No tokenizer in '{output_dir}' and no texts to train one on.")
    return train_bpe_tokenizer(texts, output_dir, vocab_size=vocab_size, min_frequency=min_frequency)


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


class WholeWordMask(RandomizableTransform):
    """BERT-style masking of whole words for masked-language modelling.

    ``round(mlm_probability * n_words)`` words (at least one) are chosen among the non-special words of
    a sequence; every sub-token of a chosen word is a target. Each target token becomes ``<mask>``
    with probability 0.8, a random non-special token with 0.1, and stays as is with 0.1. Special and
    pad tokens (``word_ids == -1``) are never chosen.

    Args:
        mlm_probability: fraction of words to predict.
        tokenizer: a HF tokenizer (or its folder); supplies the three ids below when they are None.
        mask_token_id: id of ``<mask>``.
        vocab_size: random replacements are drawn from ``[0, vocab_size)`` minus the special ids.
        special_token_ids: ids never drawn as random replacements (and never masked if ``word_ids`` is absent).
        mask_replace_prob: share of targets replaced by ``<mask>``.
        random_replace_prob: share of targets replaced by a random token.

    Call with ``input_ids`` (L,) and ``word_ids`` (L,); returns ``(masked_ids, labels)``, both long,
    ``labels`` = original id on target positions and -100 elsewhere.
    """

    def __init__(
        self,
        mlm_probability: float = 0.15,
        tokenizer: TokenizerLike = None,
        mask_token_id: int | None = None,
        vocab_size: int | None = None,
        special_token_ids: Sequence[int] | None = None,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
    ):
        RandomizableTransform.__init__(self, prob=1.0)
        if not 0.0 < mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1], got {mlm_probability}.")
        if mask_replace_prob < 0 or random_replace_prob < 0 or mask_replace_prob + random_replace_prob > 1:
            raise ValueError("mask_replace_prob and random_replace_prob must be >= 0 and sum to at most 1.")
        tok = load_tokenizer(tokenizer) if tokenizer is not None else None
        if tok is not None:
            mask_token_id = tok.mask_token_id if mask_token_id is None else mask_token_id
            vocab_size = len(tok) if vocab_size is None else vocab_size
            special_token_ids = tok.all_special_ids if special_token_ids is None else special_token_ids
        if mask_token_id is None or vocab_size is None:
            raise ValueError("WholeWordMask needs a tokenizer or both mask_token_id and vocab_size.")
        self.mlm_probability = float(mlm_probability)
        self.mask_token_id = int(mask_token_id)
        self.special_token_ids = sorted({int(i) for i in (special_token_ids or [])} | {self.mask_token_id})
        self.replacement_ids = np.setdiff1d(np.arange(int(vocab_size)), self.special_token_ids)
        self.mask_replace_prob = float(mask_replace_prob)
        self.random_replace_prob = float(random_replace_prob)
        # kept to find words from the tokens when an item comes without `word_ids`
        self.tokenizer = tok
        self._target: np.ndarray | None = None
        self._action: np.ndarray | None = None
        self._random_ids: np.ndarray | None = None

    def _fallback_word_ids(self, ids: np.ndarray) -> np.ndarray:
        """Word ids from the tokens themselves: a byte-level ``Ġ`` or a WordPiece non-``##`` token starts a word."""
        special = np.isin(ids, self.special_token_ids)
        if self.tokenizer is None:  # no vocabulary to look at: every token is a word
            starts = ~special
        else:
            tokens = [str(t) for t in self.tokenizer.convert_ids_to_tokens(ids.tolist())]
            if any(t.startswith("Ġ") for t in tokens):  # byte-level BPE marks word starts
                starts = np.array([t.startswith("Ġ") for t in tokens])
            else:  # WordPiece marks continuations
                starts = np.array([not t.startswith("##") for t in tokens])
            starts &= ~special
            content = np.flatnonzero(~special)
            if content.size:  # the first word has no leading space
                starts[content[0]] = True
        word = np.cumsum(starts) - 1
        return np.where(special, -1, word)

    def randomize(self, word_ids: np.ndarray) -> None:  # type: ignore[override]
        """Draw the target tokens and, per token, mask / random / keep plus the random replacement.

        Sets ``self._target`` bool (L,), ``self._action`` int (L,) with 0 = mask, 1 = random, 2 = keep,
        and ``self._random_ids`` (L,).
        """
        super().randomize(None)
        words = np.unique(word_ids[word_ids >= 0])
        target = np.zeros(word_ids.shape, dtype=bool)
        if words.size:
            n_pick = max(1, int(round(self.mlm_probability * words.size)))
            chosen = self.R.choice(words, size=min(n_pick, words.size), replace=False)
            target = np.isin(word_ids, chosen)
        u = self.R.random_sample(word_ids.shape)
        action = np.where(
            u < self.mask_replace_prob, 0, np.where(u < self.mask_replace_prob + self.random_replace_prob, 1, 2)
        )
        random_ids = self.replacement_ids[self.R.randint(0, len(self.replacement_ids), size=word_ids.shape)]
        self._target, self._action, self._random_ids = target, action, random_ids

    def __call__(  # type: ignore[override]
        self, input_ids: torch.Tensor, word_ids: torch.Tensor | None = None, randomize: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.as_tensor(input_ids).long()
        if ids.ndim != 1:
            raise ValueError(
                f"WholeWordMask acts on one sequence (L,), got shape {tuple(ids.shape)}; mask before collation."
            )
        ids_np = ids.cpu().numpy()
        words = self._fallback_word_ids(ids_np) if word_ids is None else torch.as_tensor(word_ids).cpu().numpy()
        if words.shape != ids_np.shape:
            raise ValueError(f"word_ids shape {words.shape} differs from input_ids shape {ids_np.shape}.")
        if randomize:
            self.randomize(words)
        target, action, random_ids = self._target, self._action, self._random_ids
        if target is None or target.shape != words.shape:
            raise RuntimeError("WholeWordMask: no draw for a sequence of this length; call with randomize=True.")
        labels = np.where(target, ids_np, -100)
        masked = ids_np.copy()
        masked[target & (action == 0)] = self.mask_token_id
        masked[target & (action == 1)] = random_ids[target & (action == 1)]
        return torch.as_tensor(masked, dtype=torch.long), torch.as_tensor(labels, dtype=torch.long)


class WholeWordMaskd(RandomizableTransform, MapTransform):
    """Dictionary twin of :class:`WholeWordMask`.

    Args:
        keys: the token-id key (exactly one, normally ``"input_ids"``); masked ids replace it.
        mlm_probability, tokenizer, mask_token_id, vocab_size, special_token_ids, mask_replace_prob,
            random_replace_prob: see :class:`WholeWordMask`.
        word_ids_key: key of the word index per token, from :class:`TokenizeTextd`; when it is missing,
            words are found from the tokens (``Ġ`` / ``##`` markers), which needs ``tokenizer``.
        labels_key: output key of the MLM targets (-100 where not masked).
        allow_missing_keys: see ``MapTransform``.
    """

    def __init__(
        self,
        keys: KeysCollection = "input_ids",
        mlm_probability: float = 0.15,
        tokenizer: TokenizerLike = None,
        mask_token_id: int | None = None,
        vocab_size: int | None = None,
        special_token_ids: Sequence[int] | None = None,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        word_ids_key: str = "word_ids",
        labels_key: str = "labels",
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        if len(self.keys) != 1:
            raise ValueError(f"WholeWordMaskd takes one token-id key, got {self.keys}.")
        self.masker = WholeWordMask(
            mlm_probability,
            tokenizer,
            mask_token_id,
            vocab_size,
            special_token_ids,
            mask_replace_prob,
            random_replace_prob,
        )
        self.word_ids_key = word_ids_key
        self.labels_key = labels_key

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> WholeWordMaskd:
        super().set_random_state(seed, state)
        self.masker.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], d[self.labels_key] = self.masker(d[key], d.get(self.word_ids_key))
        return d
