"""Whole-word masking of token ids for the MLM pretext (BERT's 80 / 10 / 10 rule)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from .tokenizer import TokenizerLike, load_tokenizer
from .twins import RandomizableTwind

__all__ = ["WholeWordMask", "WholeWordMaskd"]


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


class WholeWordMaskd(RandomizableTwind):
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

    array_attribute = "masker"

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

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], d[self.labels_key] = self.masker(d[key], d.get(self.word_ids_key))
        return d
