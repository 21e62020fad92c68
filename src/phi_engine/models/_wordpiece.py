"""BERT's WordPiece tokenizer in plain Python (no ``tokenizers``, no ``transformers``).

It follows the ``BertNormalizer`` / ``BertPreTokenizer`` / ``WordPiece`` pipeline of a Hugging
Face ``tokenizer.json`` (google-research/bert ``tokenization.py``), and the tests compare it with
the ``tokenizers`` library token for token.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Encoding", "WordPieceTokenizer"]

# CJK Unified Ideographs and their extensions: BERT puts spaces around each such character
# (google-research/bert tokenization.py, _is_chinese_char).
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_punctuation(ch: str) -> bool:
    # BERT counts every non-alphanumeric printable ASCII character ($, +, ^, ...) as punctuation,
    # besides the Unicode P* categories.
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_control(ch: str) -> bool:
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


@dataclass(frozen=True)
class Encoding:
    """A tokenised batch, padded to its longest sequence (int64 arrays of shape ``(B, S)``)."""

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    attention_mask: np.ndarray


class WordPieceTokenizer:
    """BERT's tokenizer: basic splitting, then greedy longest-match-first WordPiece.

    Follows the ``BertNormalizer`` / ``BertPreTokenizer`` / ``WordPiece`` pipeline of
    ``tokenizer.json``: drop control characters, space out CJK ideographs, strip accents and
    lower-case (``do_lower_case``), split on whitespace and punctuation, then cut each word into
    the longest vocabulary pieces from the left (continuations prefixed ``##``); a word with no
    such cut, or longer than ``max_input_chars_per_word``, becomes ``[UNK]``. Special tokens
    written in the text (``[MASK]``, ...) are kept whole, as the fast tokenizer does.
    """

    def __init__(
        self,
        vocab: Sequence[str],
        *,
        lowercase: bool = True,
        strip_accents: bool | None = None,
        tokenize_cjk: bool = True,
        max_input_chars_per_word: int = 100,
    ) -> None:
        """Make a tokenizer over ``vocab`` (token ``i`` has id ``i``).

        Args:
            vocab: The vocabulary in id order; must hold ``[CLS]``, ``[SEP]``, ``[PAD]`` and
                ``[UNK]``.
            lowercase: Lower-case the text.
            strip_accents: Remove combining marks after NFD; ``None`` follows ``lowercase``.
            tokenize_cjk: Treat every CJK ideograph as a word of its own.
            max_input_chars_per_word: Longer words become ``[UNK]``.
        """
        self.vocab = {token: i for i, token in enumerate(vocab)}
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.tokenize_cjk = tokenize_cjk
        self.max_input_chars_per_word = max_input_chars_per_word
        self.special = ("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")
        self.cls_id, self.sep_id = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.pad_id, self.unk_id = self.vocab["[PAD]"], self.vocab["[UNK]"]
        specials = [re.escape(t) for t in self.special if t in self.vocab]
        self._special_re = re.compile("(" + "|".join(specials) + ")")

    @classmethod
    def from_dir(cls, path: Path) -> WordPieceTokenizer:
        """Load ``vocab.txt`` and the options of ``tokenizer_config.json`` from ``path``."""
        vocab = (path / "vocab.txt").read_text(encoding="utf-8").split("\n")
        if vocab and vocab[-1] == "":
            vocab.pop()
        config: dict[str, Any] = {}
        if (path / "tokenizer_config.json").exists():
            config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
        return cls(
            vocab,
            lowercase=bool(config.get("do_lower_case", True)),
            strip_accents=config.get("strip_accents"),
            tokenize_cjk=bool(config.get("tokenize_chinese_chars", True)),
        )

    def _normalize(self, text: str) -> str:
        chars = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD or _is_control(ch):
                continue
            if _is_whitespace(ch):
                chars.append(" ")
            elif self.tokenize_cjk and _is_cjk(cp):
                chars.extend((" ", ch, " "))
            else:
                chars.append(ch)
        text = "".join(chars)
        if self.strip_accents:
            text = "".join(
                c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn"
            )
        if self.lowercase:
            # Character by character, like the fast tokenizer the model ships with: str.lower()
            # would turn a word-final "Σ" into "ς" where it gives "σ".
            text = "".join(c.lower() for c in text)
        return text

    def _basic_split(self, text: str) -> list[str]:
        words = []
        for word in self._normalize(text).split():
            start = 0
            for i, ch in enumerate(word):
                if _is_punctuation(ch):
                    if start < i:
                        words.append(word[start:i])
                    words.append(ch)
                    start = i + 1
            if start < len(word):
                words.append(word[start:])
        return words

    def _wordpiece(self, word: str) -> list[str]:
        if len(word) > self.max_input_chars_per_word:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    pieces.append(piece)
                    start = end
                    break
            else:
                return ["[UNK]"]
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """Split ``text`` into WordPiece tokens (no ``[CLS]``/``[SEP]``)."""
        tokens = []
        for i, part in enumerate(self._special_re.split(text)):
            if i % 2:
                tokens.append(part)
            else:
                for word in self._basic_split(part):
                    tokens.extend(self._wordpiece(word))
        return tokens

    def encode(self, text: str, max_length: int = 512) -> list[int]:
        """Token ids of ``text`` as ``[CLS] tokens [SEP]``, truncated to ``max_length`` ids."""
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        ids = [self.vocab.get(t, self.unk_id) for t in self.tokenize(text)[: max_length - 2]]
        return [self.cls_id, *ids, self.sep_id]

    def __call__(self, texts: Sequence[str], max_length: int = 512) -> Encoding:
        """Encode a batch, padded with ``[PAD]`` to its longest sequence.

        Returns:
            int64 ``input_ids``, ``token_type_ids`` (all 0: one segment) and ``attention_mask``
            (1 for real tokens, 0 for padding), each ``(len(texts), longest)``.
        """
        if isinstance(texts, str) or not texts:
            raise ValueError("texts must be a non-empty sequence of strings")
        encoded = [self.encode(t, max_length) for t in texts]
        seq = max(len(ids) for ids in encoded)
        input_ids = np.full((len(encoded), seq), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encoded), seq), dtype=np.int64)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        return Encoding(input_ids, np.zeros_like(input_ids), mask)
