"""Fusion passes: rewrite the patterns exporters emit into the fused ops of ``ops/fused.py``.

Each pass walks the graph for one pattern and replaces it by one node whose output keeps the
name (and so the type) of the pattern's last value. A pattern matches only when every value it
swallows has no reader outside the pattern and is not a graph output, and only on float32 (the
fused kernels' dtype). Passes run in an order where later ones build on earlier results:

1. GELU: ``x * 0.5 * (1 + erf(x / √2))`` in any of its association orders → ``phi::Gelu``.
2. Linear: ``MatMul`` by a constant matrix, ``+ bias`` row, then Relu/GELU/Tanh/Sigmoid →
   ``phi::Linear`` (one GEMM with its epilogue); then ``+ residual`` of the output's shape.
3. Attention scores: ``MatMul(q, Transpose(k))`` with the last two axes swapped → a
   ``phi::Linear`` with ``trans_b`` (no transpose copy); a product ``/ c`` or ``* c`` by a
   scalar constant → its ``alpha``.
4. Masked softmax: ``Softmax(s + mask)`` → ``phi::Softmax(s, mask)`` (one pass). Then the whole
   attention over heads split and merged by transposes, ``Transpose(softmax(alpha·QKᵀ + mask)·V)``
   → ``phi::Attention(q, k, v, mask)`` on the (batch, seq, heads, dim) tensors (CPU).
5. Layer norm: the decomposed mean/variance pattern (exports before opset 17) and
   ``LayerNormalization(a + b)`` → ``phi::LayerNorm`` with the residual fused.
6. Convolution: 2-D ``Conv`` by constant weights, a following inference ``BatchNormalization``
   folded into its weights and bias, ``+ residual`` and ReLU/Clip → ``phi::Conv`` (one pass).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from phi_engine.graph.ir import Graph, Node, TensorType

__all__ = ["fuse"]

F32 = np.dtype(np.float32)
_ACTIVATIONS = {("", "Relu"): "relu", ("", "Tanh"): "tanh", ("", "Sigmoid"): "sigmoid"}
_ACTIVATIONS[("phi", "Gelu")] = "gelu"


def fuse(graph: Graph, *, attention: bool = True) -> None:
    """Apply every fusion pass in place (see the module docstring). ``attention=False`` leaves
    attention as products and a softmax (the CUDA backend runs those with cuBLAS)."""
    for rewrite in (
        _gelu,
        _linear,
        _linear_residual,
        _transposed_matmul,
        _scaled_matmul,
        _masked_softmax,
        *((_attention,) if attention else ()),
        _decomposed_layer_norm,
        _layer_norm_residual,
        _conv,
        _conv_batch_norm,
        _conv_residual,
        _conv_activation,
    ):
        _Matcher(graph).run(rewrite)


class _Matcher:
    """Pattern-matching helpers over a graph that is rewritten as matches are found."""

    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self._index()

    def _index(self) -> None:
        self.producer = self.g.producers()
        self.readers = self.g.consumers()
        self.returned = set(self.g.outputs)

    def run(self, rewrite: Any) -> None:
        i = 0
        while i < len(self.g.nodes):
            if rewrite(self, self.g.nodes[i]):
                self._index()  # indices are stale after a rewrite; rescan from the start
                i = 0
            else:
                i += 1

    # ---- queries -------------------------------------------------------------------------

    def const(self, name: str) -> np.ndarray | None:
        return self.g.constants.get(name) if name else None

    def scalar(self, name: str) -> float | None:
        value = self.const(name)
        if value is None or value.size != 1 or value.dtype.kind != "f":
            return None
        return float(value.reshape(()))

    def is_f32(self, *names: str) -> bool:
        return all(self.g.types.get(n) is not None and self.g.types[n].dtype == F32 for n in names)

    def sole_reader(self, name: str) -> Node | None:
        """The one node reading ``name``, if exactly one does and it is not a graph output."""
        readers = self.readers.get(name, [])
        if name in self.returned or len(readers) != 1:
            return None
        return readers[0]

    def private(self, *names: str) -> bool:
        """Each value is read by exactly one node and is not a graph output."""
        return all(self.sole_reader(n) is not None for n in names)

    def made_by(self, name: str, op_type: str, domain: str = "") -> Node | None:
        node = self.producer.get(name)
        if node is not None and node.op_type == op_type and node.domain == domain:
            return node
        return None

    def other_input(self, node: Node, name: str) -> str:
        """For a binary node reading ``name``, its other input."""
        a, b = node.inputs[0], node.inputs[1]
        return b if a == name else a

    # ---- edits ---------------------------------------------------------------------------

    def replace(self, old: list[Node], new: Node) -> None:
        """Put ``new`` where the last of ``old`` was and drop the others."""
        last = max(self.g.nodes.index(n) for n in old)
        self.g.nodes[last] = new
        for n in old:
            if n is not new and n in self.g.nodes and self.g.nodes.index(n) != last:
                self.g.nodes.remove(n)

    def add_constant(self, stem: str, value: np.ndarray) -> str:
        name = self.g.fresh_name(stem)
        self.g.constants[name] = value
        self.g.types[name] = TensorType(value.dtype, tuple(value.shape))
        return name


def _close(value: float | None, target: float) -> bool:
    return value is not None and math.isclose(value, target, rel_tol=1e-4)


def _binary(m: _Matcher, node: Node | None, op_type: str) -> bool:
    return (
        node is not None and node.op_type == op_type and node.domain == "" and len(node.inputs) == 2
    )


# ---- 1. GELU ---------------------------------------------------------------------------------


def _gelu(m: _Matcher, erf: Node) -> bool:
    if erf.op_type != "Erf" or erf.domain or not m.is_f32(erf.inputs[0]):
        return False
    scaled = m.producer.get(erf.inputs[0])
    if scaled is None or not m.private(erf.inputs[0]):
        return False
    x = _gelu_input(m, scaled)
    one = m.sole_reader(erf.outputs[0])
    if x is None or not _binary(m, one, "Add") or one is None:
        return False
    if not _close(m.scalar(m.other_input(one, erf.outputs[0])), 1.0):
        return False
    matched = _gelu_tail(m, x, one.outputs[0])
    if matched is None:
        return False
    nodes, out = matched
    m.replace([scaled, erf, one, *nodes], Node("Gelu", [x], [out], domain="phi"))
    return True


def _gelu_input(m: _Matcher, scaled: Node) -> str | None:
    """x of ``x / √2`` or ``x * (1/√2)``."""
    if _binary(m, scaled, "Div") and _close(m.scalar(scaled.inputs[1]), math.sqrt(2.0)):
        return scaled.inputs[0]
    if _binary(m, scaled, "Mul"):
        for i in (0, 1):
            if _close(m.scalar(scaled.inputs[1 - i]), 1.0 / math.sqrt(2.0)):
                return scaled.inputs[i]
    return None


def _gelu_tail(m: _Matcher, x: str, one_plus: str) -> tuple[list[Node], str] | None:
    """The two Muls combining x, 0.5 and (1 + erf): returns them and the result's name."""
    first = m.sole_reader(one_plus)
    if first is None or not _binary(m, first, "Mul"):
        return None
    other = m.other_input(first, one_plus)
    second = m.sole_reader(first.outputs[0])
    if second is not None and _binary(m, second, "Mul"):
        rest = m.other_input(second, first.outputs[0])
        if other == x and _close(m.scalar(rest), 0.5):  # (x * (1+e)) * 0.5
            return [first, second], second.outputs[0]
        if _close(m.scalar(other), 0.5) and rest == x:  # x * ((1+e) * 0.5)
            return [first, second], second.outputs[0]
    half = m.producer.get(other)  # (x * 0.5) * (1+e)
    if half is None or not _binary(m, half, "Mul") or not m.private(other) or x not in half.inputs:
        return None
    if _close(m.scalar(m.other_input(half, x)), 0.5):
        return [half, first], first.outputs[0]
    return None


# ---- 2. Linear --------------------------------------------------------------------------------


def _linear(m: _Matcher, mm: Node) -> bool:
    if mm.op_type != "MatMul" or mm.domain or not m.is_f32(*mm.inputs):
        return False
    w = m.const(mm.inputs[1])
    if w is None or w.ndim != 2:
        return False
    nodes, inputs, out = [mm], [mm.inputs[0], mm.inputs[1], ""], mm.outputs[0]
    add = m.sole_reader(out)
    if _binary(m, add, "Add") and add is not None:
        bias = m.const(m.other_input(add, out))
        if bias is not None and bias.size == w.shape[1] and bias.shape[-1:] == (w.shape[1],):
            inputs[2] = m.add_constant("bias", np.ascontiguousarray(bias.reshape(-1), F32))
            nodes.append(add)
            out = add.outputs[0]
    activation = "none"
    act = m.sole_reader(out)
    if act is not None and (act.domain, act.op_type) in _ACTIVATIONS:
        activation = _ACTIVATIONS[(act.domain, act.op_type)]
        nodes.append(act)
        out = act.outputs[0]
    if len(nodes) == 1:
        return False  # a bare MatMul lowers as it is
    m.replace(nodes, Node("Linear", inputs, [out], {"activation": activation}, domain="phi"))
    return True


def _linear_residual(m: _Matcher, lin: Node) -> bool:
    if lin.op_type != "Linear" or lin.domain != "phi" or len(lin.inputs) > 3:
        return False
    if lin.attrs.get("activation", "none") != "none":
        return False  # the residual would land inside the activation
    add = m.sole_reader(lin.outputs[0])
    if not _binary(m, add, "Add") or add is None:
        return False
    residual = m.other_input(add, lin.outputs[0])
    t_out, t_res = m.g.types.get(lin.outputs[0]), m.g.types.get(residual)
    if t_res is None or t_out is None or t_res.dtype != F32 or t_res.shape != t_out.shape:
        return False
    if t_res.shape is None or residual == lin.outputs[0]:
        return False
    padded = [*lin.inputs, "", ""]
    inputs = [*padded[:3], residual]
    m.replace([lin, add], Node("Linear", inputs, [add.outputs[0]], dict(lin.attrs), domain="phi"))
    return True


# ---- 3. Attention scores -----------------------------------------------------------------------


def _transposed_matmul(m: _Matcher, mm: Node) -> bool:
    if mm.op_type != "MatMul" or mm.domain or not m.is_f32(*mm.inputs):
        return False
    tr = m.made_by(mm.inputs[1], "Transpose")
    if tr is None or not m.private(mm.inputs[1]):
        return False
    rank = m.g.types[tr.inputs[0]].rank
    perm = tr.attrs.get("perm")
    if rank is None or rank < 2 or perm is None:
        return False
    if list(perm) != [*range(rank - 2), rank - 1, rank - 2]:
        return False
    new = Node(
        "Linear", [mm.inputs[0], tr.inputs[0]], list(mm.outputs), {"trans_b": 1}, domain="phi"
    )
    new.attrs["activation"] = "none"
    m.replace([tr, mm], new)
    return True


def _scaled_matmul(m: _Matcher, node: Node) -> bool:
    """A product (phi::Linear without bias, or a float32 MatMul of matrices) times a scalar."""
    if node.op_type == "MatMul" and not node.domain and m.is_f32(*node.inputs):
        if any((m.g.types[n].rank or 0) < 2 for n in node.inputs):
            return False  # vector operands follow numpy's 1-D rules, which phi::Linear does not
        attrs: dict[str, Any] = {"activation": "none"}
    elif node.op_type == "Linear" and node.domain == "phi" and len(node.inputs) <= 2:
        attrs = dict(node.attrs)
    else:
        return False
    if attrs.get("activation", "none") != "none":
        return False
    scale = m.sole_reader(node.outputs[0])
    if scale is None or scale.domain or scale.op_type not in ("Div", "Mul"):
        return False
    if len(scale.inputs) != 2 or (scale.op_type == "Div" and scale.inputs[0] != node.outputs[0]):
        return False
    c = m.scalar(m.other_input(scale, node.outputs[0]))
    if c is None or c == 0.0 or not math.isfinite(c):
        return False
    alpha = float(attrs.get("alpha", 1.0)) * (1.0 / c if scale.op_type == "Div" else c)
    attrs["alpha"] = alpha
    new = Node("Linear", list(node.inputs), list(scale.outputs), attrs, domain="phi")
    m.replace([node, scale], new)
    return True


# ---- 4. Masked softmax -------------------------------------------------------------------------


def _masked_softmax(m: _Matcher, sm: Node) -> bool:
    if sm.op_type != "Softmax" or sm.domain or sm.version < 13 or not m.is_f32(sm.inputs[0]):
        return False
    rank = m.g.types[sm.inputs[0]].rank
    axis = int(sm.attrs.get("axis", -1))
    if rank is None or axis not in (-1, rank - 1):
        return False
    add = m.made_by(sm.inputs[0], "Add")
    if add is None or not m.private(sm.inputs[0]) or not m.is_f32(*add.inputs):
        return False
    scores, mask = add.inputs
    t_s, t_m = m.g.types[scores], m.g.types[mask]
    if t_s.shape != m.g.types[sm.inputs[0]].shape or t_m.rank is None or t_m.rank > rank:
        scores, mask = mask, scores  # the mask may be the first operand
        t_s, t_m = m.g.types[scores], m.g.types[mask]
        if t_s.shape != m.g.types[sm.inputs[0]].shape or t_m.rank is None or t_m.rank > rank:
            return False
    attrs = {"axis": -1}
    m.replace([add, sm], Node("Softmax", [scores, mask], list(sm.outputs), attrs, domain="phi"))
    return True


# ---- 4b. Attention ------------------------------------------------------------------------------

_HEADS = [0, 2, 1, 3]  # (batch, seq, heads, dim) <-> (batch, heads, seq, dim)


def _heads_of(m: _Matcher, name: str, perm: list[int]) -> str | None:
    """The (batch, seq, heads, dim) tensor that ``name`` is a private ``Transpose(perm)`` of."""
    tr = m.made_by(name, "Transpose")
    if tr is None or not m.private(name) or list(tr.attrs.get("perm") or []) != perm:
        return None
    src = tr.inputs[0]
    return src if m.g.types[src].rank == 4 and m.is_f32(src) else None


def _attention(m: _Matcher, out: Node) -> bool:
    """``Transpose(softmax(alpha·QKᵀ + mask)·V)`` over heads split by transposes → one
    ``phi::Attention`` on the (batch, seq, heads, dim) tensors, with no transpose left.

    After passes 3 and 4 the scores are ``phi::Linear(Transpose(q), Transpose(k), trans_b)`` (or
    with k transposed to (batch, heads, dim, seq) by one Transpose, as torch exports it) and the
    softmax a ``phi::Softmax`` with the mask; V's product is a MatMul and the heads are merged by
    ``Transpose(perm=[0, 2, 1, 3])``.
    """
    if out.op_type != "Transpose" or out.domain or list(out.attrs.get("perm") or []) != _HEADS:
        return False
    mm = m.made_by(out.inputs[0], "MatMul")
    if mm is None or not m.private(out.inputs[0]) or len(mm.inputs) != 2:
        return False
    sm = m.made_by(mm.inputs[0], "Softmax", "phi")
    if sm is None or not m.private(mm.inputs[0]) or int(sm.attrs.get("axis", -1)) not in (-1, 3):
        return False
    lin = m.made_by(sm.inputs[0], "Linear", "phi")
    if lin is None or not m.private(sm.inputs[0]) or any(lin.inputs[2:]):
        return False
    if lin.attrs.get("activation", "none") != "none":
        return False
    trans_b = bool(lin.attrs.get("trans_b", 0))
    q = _heads_of(m, lin.inputs[0], _HEADS)
    k = _heads_of(m, lin.inputs[1], _HEADS if trans_b else [0, 2, 3, 1])
    v = _heads_of(m, mm.inputs[1], _HEADS)
    if q is None or k is None or v is None:
        return False
    # Batch and heads of k and v: q's, or 1 (broadcast, as the products allow). Known to differ
    # otherwise, the products would broadcast q instead, which the fused op does not: leave them.
    # Unknown here (an export that computes its head shapes), the op checks them at run time.
    q_shape = m.g.types[q].shape
    for other in (k, v):
        shape = m.g.types[other].shape
        if q_shape is None or shape is None:
            continue
        for d in (0, 2):
            a, b = q_shape[d], shape[d]
            if isinstance(a, int) and isinstance(b, int) and a != b and b != 1:
                return False
    mask = sm.inputs[1] if len(sm.inputs) > 1 and sm.inputs[1] else None
    if mask is not None and (m.g.types[mask].rank or 5) > 4:
        return False
    alpha = float(lin.attrs.get("alpha", 1.0)) * float(sm.attrs.get("scale", 1.0))
    nodes = [m.producer[name] for name in (lin.inputs[0], lin.inputs[1], mm.inputs[1])]
    inputs = [q, k, v] + ([mask] if mask is not None else [])
    new = Node("Attention", inputs, list(out.outputs), {"alpha": alpha}, domain="phi")
    m.replace([*nodes, lin, sm, mm, out], new)
    return True


# ---- 5. Layer norm -------------------------------------------------------------------------------


def _reduce_last_axis(m: _Matcher, node: Node | None, rank: int | None) -> bool:
    """``ReduceMean`` over the last axis only, keeping dims."""
    if node is None or node.op_type != "ReduceMean" or node.domain or rank is None:
        return False
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        value = m.const(node.inputs[1])
        axes = None if value is None else value.tolist()
    if axes is None or [a % rank for a in axes] != [rank - 1]:
        return False
    return int(node.attrs.get("keepdims", 1)) == 1


def _decomposed_layer_norm(m: _Matcher, sub: Node) -> bool:
    """(x - mean) / sqrt(mean((x - mean)^2) + eps) * gamma + beta."""
    if not _binary(m, sub, "Sub") or not m.is_f32(*sub.inputs):
        return False
    x, mean_name = sub.inputs
    rank = m.g.types[x].rank
    mean = m.producer.get(mean_name)
    if not _reduce_last_axis(m, mean, rank) or mean is None or mean.inputs[0] != x:
        return False
    readers = m.readers.get(sub.outputs[0], [])
    if len(readers) != 2 or sub.outputs[0] in m.returned:
        return False
    pow_ = next((n for n in readers if n.op_type == "Pow" or n.op_type == "Mul"), None)
    div = next((n for n in readers if n.op_type == "Div"), None)
    if pow_ is None or div is None or div.inputs[0] != sub.outputs[0]:
        return False
    if pow_.op_type == "Pow" and not _close(m.scalar(pow_.inputs[1]), 2.0):
        return False
    if pow_.op_type == "Mul" and pow_.inputs != [sub.outputs[0], sub.outputs[0]]:
        return False
    chain = _variance_chain(m, pow_, rank)
    if chain is None or chain[-1].outputs[0] != div.inputs[1]:
        return False
    eps = m.scalar(m.other_input(chain[2], chain[1].outputs[0]))
    mul = m.sole_reader(div.outputs[0])
    if eps is None or not _binary(m, mul, "Mul") or mul is None:
        return False
    gamma = m.other_input(mul, div.outputs[0])
    add = m.sole_reader(mul.outputs[0])
    beta = m.other_input(add, mul.outputs[0]) if _binary(m, add, "Add") and add else ""
    if m.const(gamma) is None or (beta and m.const(beta) is None):
        return False
    nodes = [mean, sub, *chain, div, mul] + ([add] if beta and add else [])
    out = nodes[-1].outputs[0]
    if not m.private(mean_name, *(n.outputs[0] for n in [*chain, div])):
        return False
    if beta == "" and not m.private(mul.outputs[0]) and mul.outputs[0] != out:
        return False
    attrs = {"axis": -1, "epsilon": eps}
    m.replace(nodes, Node("LayerNorm", [x, gamma, beta], [out], attrs, domain="phi"))
    return True


def _variance_chain(m: _Matcher, square: Node, rank: int | None) -> list[Node] | None:
    """square → ReduceMean → Add(eps) → Sqrt: the four nodes, or None."""
    var = m.sole_reader(square.outputs[0])
    if not _reduce_last_axis(m, var, rank) or var is None:
        return None
    add = m.sole_reader(var.outputs[0])
    if not _binary(m, add, "Add") or add is None:
        return None
    sqrt = m.sole_reader(add.outputs[0])
    if sqrt is None or sqrt.op_type != "Sqrt" or sqrt.domain:
        return None
    return [square, var, add, sqrt]


def _layer_norm_residual(m: _Matcher, ln: Node) -> bool:
    is_onnx = ln.op_type == "LayerNormalization" and not ln.domain
    is_ours = ln.op_type == "LayerNorm" and ln.domain == "phi" and len(ln.inputs) <= 3
    if not (is_onnx or is_ours) or not m.is_f32(ln.inputs[0]):
        return False
    if is_onnx and (any(o for o in ln.outputs[1:]) or int(ln.attrs.get("stash_type", 1)) != 1):
        return False
    add = m.made_by(ln.inputs[0], "Add")
    if add is None or not m.private(ln.inputs[0]) or not m.is_f32(*add.inputs):
        return False
    a, b = add.inputs
    if m.g.types[a].shape != m.g.types[b].shape or m.g.types[a].shape is None:
        return False
    rank = m.g.types[a].rank or 0
    axis = int(ln.attrs.get("axis", -1))
    attrs = {
        "axis": axis if axis >= 0 else axis + rank,
        "epsilon": float(ln.attrs.get("epsilon", 1e-5)),
    }
    beta = ln.inputs[2] if len(ln.inputs) > 2 else ""
    new = Node("LayerNorm", [a, ln.inputs[1], beta, b], [ln.outputs[0]], attrs, domain="phi")
    m.replace([add, ln], new)
    return True


# ---- 6. Convolution ------------------------------------------------------------------------------


def _conv(m: _Matcher, node: Node) -> bool:
    """A 2-D float32 Conv by constant weights → phi::Conv with explicit pads."""
    if node.op_type != "Conv" or node.domain or not m.is_f32(node.inputs[0]):
        return False
    w = m.const(node.inputs[1])
    bias = m.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if (
        w is None
        or w.ndim != 4
        or w.dtype != F32
        or (len(node.inputs) > 2 and node.inputs[2] and bias is None)
    ):
        return False
    pads = _explicit_pads(m, node, w.shape[2:])
    if pads is None:
        return False
    attrs = {
        "strides": list(node.attrs.get("strides", [1, 1])),
        "pads": pads,
        "dilations": list(node.attrs.get("dilations", [1, 1])),
        "group": int(node.attrs.get("group", 1)),
        "activation": "none",
    }
    inputs = [node.inputs[0], node.inputs[1], node.inputs[2] if bias is not None else ""]
    m.replace([node], Node("Conv", inputs, list(node.outputs), attrs, domain="phi"))
    return True


def _explicit_pads(m: _Matcher, node: Node, kernel: tuple[int, ...]) -> list[int] | None:
    """ONNX pads (top, left, bottom, right), resolving auto_pad where the input size is static."""
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", "VALID"):
        pads = list(node.attrs.get("pads", [0, 0, 0, 0])) if auto == "NOTSET" else [0, 0, 0, 0]
        return pads if len(pads) == 4 else None
    shape = m.g.types[node.inputs[0]].shape
    if shape is None or not all(isinstance(d, int) for d in shape[2:]):
        return None
    strides = node.attrs.get("strides", [1, 1])
    dilations = node.attrs.get("dilations", [1, 1])
    begin, end = [], []
    for size, k, s, d in zip(shape[2:], kernel, strides, dilations, strict=True):
        assert isinstance(size, int)
        total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else large)
        end.append(large if auto == "SAME_UPPER" else small)
    return begin + end


def _is_conv(node: Node | None, *, fresh: bool = True) -> bool:
    if node is None or node.op_type != "Conv" or node.domain != "phi":
        return False
    plain = node.attrs.get("activation", "none") == "none" and len(node.inputs) <= 3
    return plain or not fresh


def _conv_batch_norm(m: _Matcher, node: Node) -> bool:
    """phi::Conv → BatchNormalization (inference) with constant statistics: fold into weights."""
    if node.op_type != "BatchNormalization" or node.domain or any(o for o in node.outputs[1:]):
        return False
    conv = m.producer.get(node.inputs[0])
    if not _is_conv(conv) or conv is None or not m.private(node.inputs[0]):
        return False
    if int(node.attrs.get("training_mode", 0)):
        return False
    stats = [m.const(n) for n in node.inputs[1:5]]
    if any(s is None for s in stats):
        return False
    scale, beta, mean, var = (np.asarray(s, np.float64) for s in stats if s is not None)
    factor = scale / np.sqrt(var + float(node.attrs.get("epsilon", 1e-5)))
    w = np.asarray(m.const(conv.inputs[1]), np.float64)
    b = m.const(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else np.zeros(w.shape[0])
    new_w = m.add_constant("conv_w", (w * factor[:, None, None, None]).astype(F32))
    new_b = m.add_constant(
        "conv_b", ((np.asarray(b, np.float64) - mean) * factor + beta).astype(F32)
    )
    attrs = dict(conv.attrs)
    m.replace(
        [conv, node],
        Node("Conv", [conv.inputs[0], new_w, new_b], [node.outputs[0]], attrs, domain="phi"),
    )
    return True


def _conv_residual(m: _Matcher, conv: Node) -> bool:
    if not _is_conv(conv):
        return False
    add = m.sole_reader(conv.outputs[0])
    if add is None or not _binary(m, add, "Add"):
        return False
    residual = m.other_input(add, conv.outputs[0])
    t_out, t_res = m.g.types.get(conv.outputs[0]), m.g.types.get(residual)
    if t_out is None or t_res is None or t_res.dtype != F32 or t_res.shape != t_out.shape:
        return False
    if t_res.shape is None or residual == conv.outputs[0]:
        return False
    inputs = [*[*conv.inputs, "", ""][:3], residual]
    m.replace([conv, add], Node("Conv", inputs, [add.outputs[0]], dict(conv.attrs), domain="phi"))
    return True


def _conv_activation(m: _Matcher, conv: Node) -> bool:
    if not _is_conv(conv, fresh=False) or conv.attrs.get("activation", "none") != "none":
        return False
    act = m.sole_reader(conv.outputs[0])
    if act is None:
        return False
    attrs = dict(conv.attrs)
    if (act.domain, act.op_type) in _ACTIVATIONS:
        attrs["activation"] = _ACTIVATIONS[(act.domain, act.op_type)]
    elif act.op_type == "Clip" and not act.domain and act.version >= 11:
        bounds = [m.scalar(n) if n else None for n in [*act.inputs[1:], "", ""][:2]]
        given = [n for n in act.inputs[1:] if n]
        if len([b for b in bounds if b is not None]) != len(given):
            return False  # a bound that is not a compile-time constant
        attrs.update(activation="clip", clip_min=bounds[0], clip_max=bounds[1])
    else:
        return False
    m.replace([conv, act], Node("Conv", list(conv.inputs), list(act.outputs), attrs, domain="phi"))
    return True
