"""``compile()`` and :class:`CompiledModel`: one compile, a plan per input shape, cached.

Compiling does everything that does not depend on the input shapes once: load, support check,
type inference with symbolic dimensions, constant folding, fusion, dead-code removal. The first
request of a new shape specializes the graph to it (shape arithmetic folds to constants), lowers
it to native plans and caches the result; later requests of that shape go straight to the plan.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from phi_engine._native import require_core
from phi_engine.errors import InvalidRequestError, UnsupportedError
from phi_engine.graph import fusion
from phi_engine.graph.ir import Graph, TensorType
from phi_engine.graph.lower import DirectRun, Program, build_program
from phi_engine.graph.onnx_import import ModelSource, from_onnx, load_model
from phi_engine.graph.passes import check_supported, eliminate_dead_code, infer_and_fold
from phi_engine.runtime.backends import get_backend
from phi_engine.runtime.plan import Constant

__all__ = ["DEVICES", "CompiledModel", "compile"]

DEVICES = ("cpu", "reference", "xla", "cuda")
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")

# Element types a native plan holds (others, e.g. bfloat16 or strings, stay with the reference).
_PLAN_DTYPES = frozenset(
    np.dtype(t)
    for t in (np.float32, np.float16, np.float64, np.int8, np.uint8, np.int32, np.int64, np.bool_)
)
"""``cpu``: native kernels, numpy reference where they have no case; ``reference``: numpy only;
``xla``: the graph compiled by JAX/XLA (needs ``jax``); ``cuda``: the native steps run by the CUDA
kernels on a GPU (needs the CUDA module and a device)."""


def compile(
    model: ModelSource,
    device: str = "cpu",
    max_batch: int = 64,
    *,
    fuse: bool = True,
    cache_size: int = 256,
    precision: str = "fp32",
    cuda_graphs: bool = True,
    triton_ops: Sequence[str] = (),
) -> CompiledModel:
    """Compile an ONNX model for inference.

    Args:
        model: A path to an ``.onnx`` file, its bytes, or an ``onnx.ModelProto``.
        device: ``"cpu"`` (native kernels), ``"reference"`` (numpy, for checking), ``"xla"``
            (JAX: a TPU or GPU where JAX sees one, else the CPU; fusion is left to XLA) or
            ``"cuda"`` (phi_engine's CUDA kernels on the first GPU; see
            :mod:`phi_engine.runtime.cuda.plan`).
        max_batch: The largest leading (batch) dimension a request may have, for inputs whose
            leading dimension is symbolic.
        fuse: Apply the fusion passes (linear + bias + activation, GELU, layer norm,
            attention). Off is for debugging and comparison.
        cache_size: Shape specializations kept (least recently used dropped first).
        precision: ``"fp32"`` (float32 everywhere) or, on ``cuda``, the matrix products on the
            tensor cores with float32 accumulation: ``"tf32"`` (float32 operands rounded to a
            10-bit mantissa; about 3e-4 relative error per product), ``"fp16"`` or ``"bf16"``
            (operands in that type: weights converted once, activations cast before each
            product; everything else, softmax and layer norm included, stays float32). On
            ``cpu``, ``"bf16"`` stores the constant weights of linear layers as bfloat16
            (rounded to nearest even, about 0.2 % per weight): products of few rows stream half
            the bytes; activations, accumulation and every other op stay float32.
        cuda_graphs: On ``cuda``, replay each shape's run as one CUDA graph from its second
            run on (off: one launch per step, every run).
        triton_ops: On ``cuda``, ops run by phi_engine's Triton kernels instead of the CUDA
            ones (``"softmax"``, ``"layer_norm"``; needs ``triton`` and ``torch``).

    Returns:
        A :class:`CompiledModel`; :meth:`CompiledModel.run` serves every batch size up to
        ``max_batch`` and every other symbolic dimension.

    Raises:
        InvalidRequestError: not a valid model, or arguments out of range.
        UnsupportedError: the model uses ops, op versions or features phi_engine does not
            support (every offending node is named), or an unknown device.
    """
    if device not in DEVICES:
        raise UnsupportedError(
            f"[compile] device {device!r} is not supported here; choose one of {DEVICES}",
            field="device",
        )
    if not get_backend(device).available():  # only this one: asking XLA imports JAX
        raise UnsupportedError(f"[compile] device {device!r} is not available in this build")
    if precision not in PRECISIONS:
        raise InvalidRequestError(
            f"[compile] precision must be one of {PRECISIONS}, got {precision!r}", field="precision"
        )
    if precision != "fp32" and device != "cuda" and not (precision == "bf16" and device == "cpu"):
        raise UnsupportedError(
            f"[compile] precision {precision!r} is for device 'cuda' (and 'bf16' for 'cpu' too);"
            f" {device!r} runs fp32",
            field="precision",
        )
    if isinstance(triton_ops, str) or not all(isinstance(op, str) for op in triton_ops):
        raise InvalidRequestError(
            "[compile] triton_ops must be a list of op names", field="triton_ops"
        )
    if triton_ops:
        from phi_engine.runtime.cuda import triton_ops as triton_impl

        unknown = sorted(set(triton_ops) - set(triton_impl.OPS))
        if unknown:
            raise InvalidRequestError(
                f"[compile] triton_ops: no Triton kernel for {unknown}; choose from "
                f"{list(triton_impl.OPS)}",
                field="triton_ops",
            )
        if device != "cuda":
            raise UnsupportedError(
                f"[compile] triton_ops select kernels on device 'cuda', not {device!r}",
                field="triton_ops",
            )
        if not triton_impl.available():
            raise UnsupportedError(
                "[compile] triton_ops need the triton and torch packages", field="triton_ops"
            )
    for name, value in (("max_batch", max_batch), ("cache_size", cache_size)):
        if type(value) is not int or value < 1:
            raise InvalidRequestError(
                f"[compile] {name} must be a positive integer, got {value!r}", field=name
            )
    graph = from_onnx(load_model(model))
    check_supported(graph)
    for name in graph.inputs:
        if name not in graph.types:
            raise UnsupportedError(
                f"[compile] graph input {name!r} is not a typed tensor "
                "(sequence, map and optional inputs are not supported)"
            )
    infer_and_fold(graph)
    eliminate_dead_code(graph)
    if device == "xla":
        from phi_engine.runtime.xla import check_graph

        check_graph(graph)  # refused now, naming every op, not at the first request
    elif fuse:
        fusion.fuse(graph, attention=device == "cpu")
        eliminate_dead_code(graph)
    if device == "cpu" and precision == "bf16":
        _bfloat16_weights(graph)
    if precision == "fp16":
        _check_fp16_weights(graph)
    cuda = None
    if device == "cuda":
        from phi_engine.runtime.cuda.program import CudaModelState

        cuda = CudaModelState(
            tf32=precision == "tf32",
            graphs=cuda_graphs,
            operand={"fp16": "float16", "bf16": "bfloat16"}.get(precision),
            triton_ops=tuple(triton_ops),
        )
    return CompiledModel(graph, device, max_batch, cache_size, precision=precision, cuda=cuda)


FLOAT16_MAX = 65504.0


def fits_float16(value: np.ndarray) -> bool:
    """Whether every finite value of ``value`` is within float16's range."""
    finite = value[np.isfinite(value)]
    return not finite.size or float(np.abs(finite).max()) <= FLOAT16_MAX


def _check_fp16_weights(graph: Graph) -> None:
    """Refuse fp16 products whose constant operands float16 cannot hold (they would become
    infinity), naming the node; bf16 has float32's range."""
    for node in graph.nodes:
        if node.op_type not in ("Linear", "MatMul", "Gemm", "Conv"):
            continue
        for name in node.inputs[:2]:
            value = graph.constants.get(name) if name else None
            if value is None or value.dtype != np.float32 or value.size == 0:
                continue
            if not fits_float16(value):
                raise UnsupportedError(
                    f"[compile] node {node.label!r} ({node.op_type}): its weight {name!r} exceeds "
                    "float16's range (65504), so precision 'fp16' would turn it into infinity; "
                    "use precision 'bf16' or 'fp32'",
                    field="precision",
                )


def _native_constants(graph: Graph) -> dict[str, Constant]:
    """Native copies of the weights, shared by every shape's plans.

    The graph's own arrays are then replaced by read-only views of those copies, so the weights
    are held once, not twice (numpy for folding and the reference, native for the plans).
    """
    shared = {}
    for name, value in graph.constants.items():
        if value.dtype in _PLAN_DTYPES and value.size > 0:
            constant = Constant(value if value.flags.c_contiguous else value.copy(order="C"))
            shared[name] = constant
            graph.constants[name] = constant.numpy()
    return shared


def _bfloat16_weights(graph: Graph) -> None:
    """Mark every linear layer with a constant 2-D float32 weight to store it as bfloat16."""
    for node in graph.nodes:
        if node.domain != "phi" or node.op_type != "Linear" or len(node.inputs) < 2:
            continue
        weight = graph.constants.get(node.inputs[1])
        if weight is not None and weight.dtype == np.float32 and weight.ndim == 2:
            node.attrs["weights"] = "bfloat16"


def _prepack_weights(graph: Graph, constants: dict[str, Constant]) -> list[Any]:
    """Pack the weights of fused linear layers now, as their plans' GEMMs will pack them.

    A GEMM with an epilogue packs its constant weight when its plan is built (the packed kernel
    wins at every size there), so the first request of every model would pay for it. Packing
    here, into the cache the plans share, moves that cost (and memory) to compile time; the
    handles keep the packed copies alive as long as the model.
    """
    if not constants:
        return []
    core = require_core()
    handles = []
    for node in graph.nodes:
        if node.domain != "phi" or node.op_type != "Linear" or len(node.inputs) < 2:
            continue
        fused = any(node.inputs[2:4]) or node.attrs.get("activation", "none") != "none"
        dtype = node.attrs.get("weights", "float32")  # bfloat16 weights are always packed
        weight = constants.get(node.inputs[1])
        if (
            (fused or dtype == "bfloat16")
            and weight is not None
            and weight.spec.dtype == "float32"
            and len(weight.spec.shape) == 2
        ):
            trans_b = bool(node.attrs.get("trans_b", 0))
            handles.append(core.prepack_constant(weight._native, trans_b, dtype))
    return handles


class CompiledModel:
    """A compiled model: run it with :meth:`run`; thread-safe."""

    def __init__(
        self,
        graph: Graph,
        device: str,
        max_batch: int,
        cache_size: int,
        *,
        precision: str = "fp32",
        cuda: Any = None,
    ) -> None:
        self.graph = graph
        self.device = device
        self.max_batch = max_batch
        self._cache_size = cache_size
        self._programs: OrderedDict[tuple[tuple[int, ...], ...], Program] = OrderedDict()
        self._lock = threading.Lock()
        self._last: tuple[tuple[tuple[int, ...], ...], DirectRun] | None = None
        self._constants = _native_constants(graph) if device in ("cpu", "cuda") else {}
        self._packed = _prepack_weights(graph, self._constants) if device == "cpu" else []
        self._cuda = cuda  # runtime.cuda.program.CudaModelState on device "cuda"
        self.precision = precision

    @property
    def inputs(self) -> dict[str, TensorType]:
        """Each input's dtype and shape (symbolic dimensions are strings), in order."""
        return {name: self.graph.types[name] for name in self.graph.inputs}

    @property
    def outputs(self) -> dict[str, TensorType]:
        """Each output's dtype and shape as far as known before a run, in order."""
        return {name: self.graph.types[name] for name in self.graph.outputs if name}

    def run(
        self, inputs: Mapping[str, Any] | Sequence[Any], threads: int = 0, *, check: bool = True
    ) -> dict[str, np.ndarray]:
        """Run the model.

        Args:
            inputs: Arrays by input name, or a sequence in input order. Non-array values are
                converted to the input's dtype; arrays must already have it.
            threads: Threads per kernel (0: the default, see :func:`phi_engine.set_num_threads`).
            check: Check the inputs. ``False`` is for callers that already did (the serving
                layer checks each request on arrival): a mapping of every input name to a
                C-contiguous array of its dtype, consistent shapes and at most ``max_batch`` rows.

        Returns:
            Every output by name.

        Raises:
            InvalidRequestError: a missing or unknown input, a wrong dtype, rank or fixed
                dimension, inconsistent symbolic dimensions, or a batch over ``max_batch``
                (the error's ``field`` names the input).
        """
        feeds = self._check_inputs(inputs) if check else dict(inputs)
        # The shapes of the last run and how to run them: a server sends the same shapes run
        # after run, and the cache's key, lock and order cost more than the model on small ones.
        key = tuple(feeds[name].shape for name in self.graph.inputs)
        last = self._last
        if last is not None and last[0] == key and type(threads) is int and threads >= 0:
            return last[1](feeds, threads)
        program = self.program({name: a.shape for name, a in feeds.items()})
        direct = program.direct_run() if type(program) is Program else None
        self._last = (key, direct or program.run)
        return program.run(feeds, threads)

    def program(self, shapes: Mapping[str, Sequence[int]]) -> Program:
        """The program for these input shapes, built on first use and cached."""
        key = tuple(tuple(int(d) for d in shapes[name]) for name in self.graph.inputs)
        with self._lock:
            found = self._programs.get(key)
            if found is not None:
                self._programs.move_to_end(key)
                return found
        program = self._specialize(dict(zip(self.graph.inputs, key, strict=True)))
        with self._lock:
            self._programs[key] = program
            self._programs.move_to_end(key)
            while len(self._programs) > self._cache_size:
                evicted, _ = self._programs.popitem(last=False)
                last = self._last
                if last is not None and last[0] == evicted:
                    self._last = None  # an evicted program is not kept alive by the fast path
        return program

    @property
    def cached_shapes(self) -> list[dict[str, tuple[int, ...]]]:
        """The input shapes whose programs are cached, least recently used first."""
        with self._lock:
            keys = list(self._programs)
        return [dict(zip(self.graph.inputs, key, strict=True)) for key in keys]

    def _specialize(self, shapes: dict[str, tuple[int, ...]]) -> Program:
        g = self.graph.copy()
        for name, shape in shapes.items():
            g.types[name] = TensorType(g.types[name].dtype, shape)
        for name in list(g.types):
            if name not in g.constants and name not in shapes:
                del g.types[name]  # re-inferred from the concrete shapes
        infer_and_fold(g)
        eliminate_dead_code(g)
        if self.device == "xla":
            from phi_engine.runtime.xla import XlaProgram

            return XlaProgram(g)  # type: ignore[return-value]  # Program's run() interface
        if self.device == "cuda":
            from phi_engine.runtime.cuda.program import CudaProgram

            program = build_program(g, self._constants, "cpu", record=True)
            return CudaProgram(program, self._cuda)
        return build_program(g, self._constants, self.device)

    def _check_inputs(self, inputs: Mapping[str, Any] | Sequence[Any]) -> dict[str, np.ndarray]:
        names = self.graph.inputs
        if isinstance(inputs, Mapping):
            unknown = [k for k in inputs if k not in names]
            if unknown:
                raise InvalidRequestError(
                    f"[run] unknown input {unknown[0]!r}; the model's inputs are {names}",
                    field=str(unknown[0]),
                )
            given = dict(inputs)
        elif isinstance(inputs, Sequence) and not isinstance(inputs, (str, bytes)):
            if len(inputs) != len(names):
                raise InvalidRequestError(
                    f"[run] expected {len(names)} inputs {names}, got {len(inputs)}",
                    field="inputs",
                )
            given = dict(zip(names, inputs, strict=True))
        else:
            raise InvalidRequestError(
                "[run] inputs must be a mapping of name -> array or a sequence of arrays",
                field="inputs",
            )
        feeds: dict[str, np.ndarray] = {}
        symbols: dict[str, tuple[int, str]] = {}
        for name in names:
            if name not in given:
                raise InvalidRequestError(f"[run] missing input {name!r}", field=name)
            feeds[name] = self._check_one(name, given[name], symbols)
        return feeds

    def _check_one(self, name: str, value: Any, symbols: dict[str, tuple[int, str]]) -> np.ndarray:
        t = self.graph.types[name]
        if isinstance(value, np.ndarray):
            if value.dtype != t.dtype:
                raise InvalidRequestError(
                    f"[run] input {name!r} must be {t.dtype.name}, got {value.dtype.name}",
                    field=name,
                )
            array = value
        else:
            try:
                array = np.asarray(value, dtype=t.dtype)
            except (TypeError, ValueError) as exc:
                raise InvalidRequestError(
                    f"[run] input {name!r} is not convertible to {t.dtype.name}: {exc}", field=name
                ) from exc
        if t.shape is None:
            return array
        if array.ndim != len(t.shape):
            raise InvalidRequestError(
                f"[run] input {name!r} must have rank {len(t.shape)} (shape {list(t.shape)}), "
                f"got shape {list(array.shape)}",
                field=name,
            )
        for axis, (want, got) in enumerate(zip(t.shape, array.shape, strict=True)):
            if isinstance(want, int):
                if want != got:
                    raise InvalidRequestError(
                        f"[run] input {name!r} dimension {axis} must be {want}, got {got}",
                        field=name,
                    )
                continue
            if axis == 0 and got > self.max_batch:
                raise InvalidRequestError(
                    f"[run] input {name!r}: batch {got} is over max_batch={self.max_batch}",
                    field=name,
                )
            seen = symbols.setdefault(want, (got, name))
            if seen[0] != got:
                raise InvalidRequestError(
                    f"[run] input {name!r} dimension {axis} ({want!r}) is {got}, but input "
                    f"{seen[1]!r} has {want!r} = {seen[0]}",
                    field=name,
                )
        return array
