"""Byte-level BPE tokenizer of the report text: train, save and load it (Hugging Face ``tokenizers``).

The tokenizer has the RoBERTa special tokens in a fixed id order (:data:`SPECIAL_TOKENS`) and is saved
as a ``transformers.PreTrainedTokenizerFast`` folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Union

from monai.utils import optional_import

tokenizers, has_tokenizers = optional_import("tokenizers")
transformers, has_transformers = optional_import("transformers")

__all__ = ["SPECIAL_TOKENS", "TokenizerLike", "train_bpe_tokenizer", "load_or_train_tokenizer", "load_tokenizer"]

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
