"""Compiled plans on a CUDA GPU: the CPU backend's steps, run by phi_engine's CUDA kernels.

``phi.compile(model, device="cuda")`` lowers a model exactly as for the CPU (the same fusion,
the same native steps, recorded as they are added) and then runs each native segment here:

* **Device memory.** The weights are uploaded once per model and shared by every shape's
  program. Each run context owns one device arena in which values whose lifetimes do not overlap
  share memory (a reshape is a view: no copy), as the CPU executor's arena does.
* **Streams.** A context runs on a CUDA stream of its own; concurrent runs take different
  contexts (created on demand, kept for reuse), so replicas overlap on one GPU.
* **Pinned buffers.** Inputs are copied into page-locked host memory and uploaded
  asynchronously on the context's stream; outputs come back the same way.
* **CUDA graphs.** A context's first run is eager (one launch per step); the second captures
  upload, every step and download into a CUDA graph, and every later run is a single graph launch
  between two host copies.
* **Fallback.** A step the CUDA kernels do not cover (an op, dtype or attribute) runs on the CPU
  kernels: its inputs come to the host, its outputs go back. Such a segment runs eagerly (no
  graph); :attr:`CudaSegment.host_steps` lists those steps, so nothing is hidden.

Everything goes through the pointer-level API of ``phi_engine._core_cuda`` (``cu`` below): the
tests run this module on a null device that implements that API in numpy (tests/null_cuda.py),
and on a real GPU in tests/gpu.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from phi_engine.errors import InvalidRequestError, PhiEngineError, UnsupportedError
from phi_engine.runtime.plan import Constant, PlanBuilder, PlanRecord, RecordedStep, TensorSpec

__all__ = ["CudaSegment", "DeviceWeights", "plan_memory"]

_ALIGN = 256  # bytes; cudaMalloc's alignment, so every value can take the vectorised paths

DEVICE_LOCK = threading.RLock()
"""Held while a CUDA graph is captured and while a broken context's memory is dropped: CUDA
forbids synchronizing the device while any stream is capturing, and freeing memory may
synchronize. (The CUDA module also puts off any free made during a capture, from any thread,
until the capture ends, so memory a garbage-collected program drops is safe too.)"""

_BINARY = ("add", "sub", "mul", "div", "pow", "maximum", "minimum")
_UNARY = (
    "neg",
    "abs",
    "exp",
    "log",
    "sqrt",
    "reciprocal",
    "erf",
    "relu",
    "gelu",
    "gelu_tanh",
    "tanh",
    "sigmoid",
    "clip",
    "leaky_relu",
)
_REDUCE = {
    "reduce_sum": "sum",
    "reduce_mean": "mean",
    "reduce_max": "max",
    "reduce_min": "min",
    "reduce_prod": "prod",
}
_CAST_DTYPES = ("float32", "float64", "float16", "int8", "uint8", "int32", "int64", "bool")
_HALF_BYTES = {"float16": 2, "bfloat16": 2}


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _nbytes(spec: TensorSpec) -> int:
    return math.prod(spec.shape) * np.dtype(spec.dtype).itemsize


# ---- where values live --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ref:
    """A device address to be resolved when a context binds the steps: ``region`` is "slot"
    (``offset`` is the slot whose arena bytes are meant), "const" (``offset`` is the absolute
    address of uploaded weights) or "error" (an offset into the context's error words)."""

    region: str
    offset: int
    add: int = 0  # bytes past that address (a slice's first element)


class DeviceWeights:
    """A model's constants on one device, uploaded on first use and shared by every program.

    Keys are the shared :class:`Constant` objects the compiler hands to every shape's plans (held
    here, so their ids stay unique), or an array a single program added.
    """

    def __init__(self, cu: Any) -> None:
        self._cu = cu
        self._lock = threading.Lock()
        # (id(value), dtype) -> (value, DeviceBuffer); the value is held so its id stays unique
        self._buffers: dict[tuple[int, str | None], tuple[Any, Any]] = {}

    def address(self, value: np.ndarray | Constant, dtype: str | None = None) -> int:
        """The device address of ``value``, uploaded on first use; with ``dtype`` (a float32
        value as ``float16`` or ``bfloat16``) a converted copy, made on the device."""
        key = (id(value), dtype)
        with self._lock:
            found = self._buffers.get(key)
            if found is None:
                array = value.numpy() if isinstance(value, Constant) else np.asarray(value)
                array = np.ascontiguousarray(array)
                if dtype is not None and dtype != str(array.dtype):
                    array = _to_half(array, dtype)
                buf = self._cu.DeviceBuffer(array.nbytes)
                if array.nbytes:  # waits for the copy: visible to every stream afterwards
                    self._cu.copy_to_device(buf.ptr, array.reshape(-1).view(np.uint8))
                found = (value, buf)
                self._buffers[key] = found
            return int(found[1].ptr)


def _to_half(array: np.ndarray, dtype: str) -> np.ndarray:
    """``array`` rounded to nearest-even as float16 or bfloat16 (the raw 16-bit words for
    bfloat16, which numpy has no type for)."""
    if dtype == "float16":
        from phi_engine.graph.compiled import fits_float16

        if not fits_float16(array):  # compile refuses such weights first; a safety net
            raise UnsupportedError(
                "[compile] a weight exceeds float16's range (65504): precision 'fp16' would "
                "turn it into infinity; use precision 'bf16' or 'fp32'",
                field="precision",
            )
        return array.astype(np.float16)
    u = np.ascontiguousarray(array, np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    words = rounded.astype(np.uint16)
    nan = np.isnan(array)
    words[nan] = np.uint16(0x7FC0)
    return words


def plan_memory(
    sizes: Mapping[int, int], lifetimes: Mapping[int, tuple[int, int]]
) -> tuple[dict[int, int], int]:
    """Offsets for values in one arena: two values share bytes only when their lifetimes
    (inclusive step ranges) do not overlap. Greedy by size, largest first, each at the lowest
    offset that fits. Returns the offsets and the arena's size (both multiples of 256)."""
    placed: list[tuple[int, int, int, int]] = []  # offset, end, first, last
    offsets: dict[int, int] = {}
    for key in sorted(sizes, key=lambda k: (-sizes[k], k)):
        size = _aligned(max(sizes[key], 1))
        first, last = lifetimes[key]
        clashes = sorted(
            (o, e) for o, e, f, la in placed if not (la < first or last < f)
        )  # same time: must not share bytes
        offset = 0
        for o, e in clashes:
            if offset + size <= o:
                break
            offset = max(offset, e)
        offsets[key] = offset
        placed.append((offset, offset + size, first, last))
    total = max((e for _, e, _, _ in placed), default=0)
    return offsets, total


# ---- lowering the recorded steps to launches ----------------------------------------------------


@dataclass
class _Launch:
    """One call of a ``cu`` function (by name) or of a Python launcher taking ``cu`` first
    (:mod:`.triton_ops`); _Ref arguments become addresses when a context binds it."""

    fn: str | Callable[..., None]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class _HostStep:
    """A step the CUDA kernels do not cover, run by a one-step CPU plan."""

    index: int
    step: RecordedStep
    plan: Any  # runtime.plan.Plan
    inputs: list[tuple[str, int]]  # (plan input name, slot) for the non-constant inputs
    reason: str


@dataclass
class _Item:
    launches: list[_Launch] = field(default_factory=list)
    host: _HostStep | None = None


class _Unsupported(Exception):
    """This step stays on the CPU (the message says why)."""


class CudaSegment:
    """One native segment's steps on a CUDA device (see the module docstring).

    Args:
        record: The segment's steps as the CPU lowering added them.
        inputs: The segment's input names, in the order values are handed over.
        outputs: The names of the values it returns.
        cu: The pointer-level CUDA module (``phi_engine._core_cuda`` or a stand-in).
        weights: The model's device constants.
        tf32: Let cuBLAS use TF32 tensor cores for float32 products (about 3e-4 relative error).
        operand: ``"float16"`` or ``"bfloat16"``: matrix products take operands of that type on
            the tensor cores (weights converted once, activations cast into scratch memory before
            each product) and accumulate and write float32; every other step stays float32.
            ``None``: float32 products.
        graphs: Capture a CUDA graph on a context's second run (when no step runs on the host).
    """

    def __init__(
        self,
        record: PlanRecord,
        inputs: Sequence[str],
        outputs: Sequence[str],
        cu: Any,
        weights: DeviceWeights,
        *,
        tf32: bool = False,
        graphs: bool = True,
        operand: str | None = None,
        triton_ops: Sequence[str] = (),
    ) -> None:
        self._record = record
        self._triton_ops = frozenset(triton_ops)
        self._operand = operand
        self._scratch: dict[int, tuple[int, int]] = {}  # key (< 0) -> (bytes, step index)
        self._local = DeviceWeights(cu)  # this program's own constants
        self._lowering_index = 0
        self._cu = cu
        self._weights = weights
        self._tf32 = tf32
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self._root: dict[int, int] = {}  # slot -> the slot whose storage it views
        self._items: list[_Item] = []
        self.host_steps: list[tuple[str, str]] = []  # (op, why) of each step run on the CPU
        self.kernels: list[tuple[str, str]] = []  # (op, "cuda" | "triton" | "cpu") of each step
        for index, step in enumerate(record.steps):
            self._lowering_index = index
            self._items.append(self._lower(index, step))
        self.graphs = graphs and not self.host_steps
        self._place()
        self._lock = threading.Lock()
        self._idle: list[_Context] = []

    # ---- lowering -------------------------------------------------------------------------------

    def _spec(self, slot: int) -> TensorSpec:
        return self._record.specs[slot]

    def _storage(self, slot: int) -> int:
        while slot in self._root:
            slot = self._root[slot]
        return slot

    def _ref(self, slot: int | None) -> _Ref | int:
        if slot is None:
            return 0
        root = self._storage(slot)
        if root in self._record.constants:
            return _Ref("const", self.constant(self._record.constants[root]))
        return _Ref("slot", root)

    def constant(self, value: np.ndarray | Constant, dtype: str | None = None) -> int:
        """The device address of a constant: the model's shared weights (a :class:`Constant`)
        from the model-wide cache, anything made for this program alone (a transposed weight, a
        divisor table) from the segment's own, freed with it."""
        if isinstance(value, Constant):
            return self._weights.address(value, dtype)
        return self._local.address(value, dtype)

    def scratch(self, nbytes: int) -> _Ref:
        """Arena memory for the step being lowered only (e.g. an operand cast to half)."""
        key = -1 - len(self._scratch)
        self._scratch[key] = (nbytes, self._lowering_index)
        return _Ref("slot", key)

    def _lower(self, index: int, step: RecordedStep) -> _Item:
        fn = _LOWERINGS.get(step.op)
        try:
            if fn is None:
                raise _Unsupported(f"no CUDA kernel for {step.op!r}")
            launches = fn(self, step)
        except _Unsupported as why:
            self.host_steps.append((step.op, str(why)))
            self.kernels.append((step.op, "cpu"))
            return _Item(host=self._host_step(index, step, str(why)))
        triton = any(callable(launch.fn) for launch in launches)
        self.kernels.append((step.op, "triton" if triton else "cuda"))
        return _Item(launches=launches)

    def _host_step(self, index: int, step: RecordedStep, reason: str) -> _HostStep:
        b = PlanBuilder()
        mapped: list[int | None] = []
        inputs: list[tuple[str, int]] = []
        for i, slot in enumerate(step.inputs):
            if slot is None:
                mapped.append(None)
                continue
            root = self._storage(slot)
            if root in self._record.constants:
                mapped.append(b.add_constant(self._record.constants[root]))
            else:
                spec = self._spec(slot)
                name = f"in{i}"
                mapped.append(b.add_input(name, spec.dtype, spec.shape))
                inputs.append((name, slot))
        outs = b.add_step(step.op, mapped, step.attrs)
        for j, s in enumerate(outs):
            b.mark_output(s, f"out{j}")
        return _HostStep(index, step, b.build(), inputs, reason)

    # ---- memory ---------------------------------------------------------------------------------

    def _place(self) -> None:
        """Arena offsets of the inputs and of every value a step writes (views share their
        root's storage; constants live in the model's weights)."""
        n = len(self._record.steps)
        life: dict[int, list[int]] = {}
        for slot in self._record.inputs.values():
            life[self._storage(slot)] = [-1, -1]
        for index, step in enumerate(self._record.steps):
            for slot in step.outputs:
                root = self._storage(slot)
                if root not in self._record.constants:
                    span = life.setdefault(root, [index, index])
                    span[0] = min(span[0], index)
            for used in step.inputs:
                if used is None:
                    continue
                root = self._storage(used)
                if root in life:
                    life[root][1] = max(life[root][1], index)
        for name in self.outputs:
            root = self._storage(self._record.outputs[name])
            if root in life:
                life[root][1] = n
        sizes = {root: _nbytes(self._spec(root)) for root in life}
        for key, (nbytes, index) in self._scratch.items():
            sizes[key] = nbytes
            life[key] = [index, index]
        self._offsets, self.arena_bytes = plan_memory(
            sizes, {root: (span[0], span[1]) for root, span in life.items()}
        )
        # Pinned staging: every input, then every output, each 256-byte aligned.
        self._in_stage, self._in_bytes = self._stage(self.inputs, self._record.inputs)
        self._out_stage, self._out_bytes = self._stage(self.outputs, self._record.outputs)

    def _stage(self, names: Sequence[str], slots: Mapping[str, int]) -> tuple[dict[str, int], int]:
        """Offsets of these values one after another in a pinned buffer, and its size."""
        offsets, offset = {}, 0
        for name in names:
            offsets[name] = offset
            offset += _aligned(_nbytes(self._spec(slots[name])))
        return offsets, offset

    def address(self, ctx: _Context, slot: int) -> int:
        ref = self._ref(slot)
        return ref if isinstance(ref, int) else self._resolve(ctx, ref)

    def _resolve(self, ctx: _Context, ref: _Ref) -> int:
        if ref.region == "const":
            return ref.offset + ref.add
        if ref.region == "error":
            return int(ctx.error.ptr) + ref.offset + ref.add
        return int(ctx.arena.ptr) + self._offsets[ref.offset] + ref.add

    # ---- running --------------------------------------------------------------------------------

    def run(self, values: Mapping[str, Any], threads: int = 0) -> dict[str, np.ndarray]:
        """Run on host inputs (by name); returns the outputs as new host arrays."""
        ctx = self._acquire()
        try:
            return ctx.run(values, threads)
        finally:
            self._release(ctx)

    def _acquire(self) -> _Context:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return _Context(self)

    def _release(self, ctx: _Context) -> None:
        if ctx.broken:
            with DEVICE_LOCK:  # its memory is freed now, not during another thread's capture
                ctx.close()
            return
        with self._lock:
            self._idle.append(ctx)

    @property
    def contexts(self) -> int:
        """Idle contexts kept for reuse."""
        with self._lock:
            return len(self._idle)


class _Context:
    """What one run at a time needs: a stream, an arena, pinned staging and (after the second
    run) the captured graph."""

    def __init__(self, seg: CudaSegment) -> None:
        cu = seg._cu
        self.seg = seg
        self.cu = cu
        self.broken = False
        self.stream = cu.Stream()
        self.arena = cu.DeviceBuffer(seg.arena_bytes)
        self.error = cu.DeviceBuffer(16)
        self.error_stage = cu.HostBuffer(16)
        self.error_words = np.frombuffer(self.error_stage, np.uint64)
        self.in_stage = cu.HostBuffer(seg._in_bytes)
        self.out_stage = cu.HostBuffer(seg._out_bytes)
        self.in_view = np.frombuffer(self.in_stage, np.uint8)
        self.out_view = np.frombuffer(self.out_stage, np.uint8)
        self.runs = 0
        self.graph: Any = None
        s = int(self.stream.ptr)
        self.bound: list[
            tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | _HostStep
        ] = []
        for item in seg._items:
            if item.host is not None:
                self.bound.append(item.host)
                continue
            for launch in item.launches:
                args = tuple(self._bind(a) for a in launch.args)
                kwargs = {k: self._bind(v) for k, v in launch.kwargs.items()}
                kwargs["stream"] = s
                if callable(launch.fn):
                    self.bound.append((launch.fn, (cu, *args), kwargs))
                else:
                    self.bound.append((getattr(cu, launch.fn), args, kwargs))

    def close(self) -> None:
        """Drop the device resources now (the caller holds DEVICE_LOCK)."""
        self.graph = None
        self.bound = []
        self.arena = self.error = self.stream = None
        self.in_stage = self.out_stage = self.error_stage = None
        self.in_view = self.out_view = self.error_words = np.zeros(0, np.uint8)

    def _bind(self, value: Any) -> Any:
        if isinstance(value, _Ref):
            return self.seg._resolve(self, value)
        return value

    def _stage_view(self, view: np.ndarray, offset: int, spec: TensorSpec) -> np.ndarray:
        dtype = np.dtype(spec.dtype)
        n = math.prod(spec.shape)
        return view[offset : offset + n * dtype.itemsize].view(dtype).reshape(spec.shape)

    def run(self, values: Mapping[str, Any], threads: int) -> dict[str, np.ndarray]:
        seg, cu = self.seg, self.cu
        rec = seg._record
        for name in seg.inputs:
            spec = seg._spec(rec.inputs[name])
            np.copyto(self._stage_view(self.in_view, seg._in_stage[name], spec), values[name])
        s = int(self.stream.ptr)
        try:
            if self.graph is not None:
                self.graph.launch(s)
            elif seg.graphs and self.runs >= 1:
                with DEVICE_LOCK:  # no device-wide work (a free, a sync) during a capture
                    cu.begin_capture(s)
                    try:
                        self._enqueue(threads)
                    except BaseException:
                        cu.abort_capture(s)
                        raise
                    self.graph = cu.end_capture(s)
                self.graph.launch(s)
            else:
                self._enqueue(threads)
            self.stream.synchronize()
        except PhiEngineError:
            self.broken = True  # a fault may leave the stream or graph unusable: start afresh
            raise
        self.runs += 1
        flag, bad = (int(w) for w in self.error_words[:2])
        if flag:
            self.error_words[:] = 0
            index = bad - (1 << 64) if bad >= 1 << 63 else bad
            raise InvalidRequestError(f"[gather] index {index} is out of range")
        out = {}
        for name in seg.outputs:
            spec = seg._spec(rec.outputs[name])
            out[name] = self._stage_view(self.out_view, seg._out_stage[name], spec).copy()
        return out

    def _enqueue(self, threads: int) -> None:
        """Queue one whole run on the stream: upload, every step, download, the error words."""
        seg, cu = self.seg, self.cu
        rec = seg._record
        s = int(self.stream.ptr)
        cu.fill_bytes(int(self.error.ptr), 0, 16, stream=s)
        for name in seg.inputs:
            slot = rec.inputs[name]
            nbytes = _nbytes(seg._spec(slot))
            src = int(self.in_stage.ptr) + seg._in_stage[name]
            cu.copy_async(seg.address(self, slot), src, nbytes, stream=s)
        for entry in self.bound:
            if isinstance(entry, _HostStep):
                self._run_host(entry, threads)
            else:
                fn, args, kwargs = entry
                fn(*args, **kwargs)
        for name in seg.outputs:
            slot = rec.outputs[name]
            nbytes = _nbytes(seg._spec(slot))
            dst = int(self.out_stage.ptr) + seg._out_stage[name]
            cu.copy_async(dst, seg.address(self, slot), nbytes, stream=s)
        cu.copy_async(int(self.error_stage.ptr), int(self.error.ptr), 16, stream=s)

    def _run_host(self, host: _HostStep, threads: int) -> None:
        """Run one step on the CPU kernels. The copies are ordered on the context's stream and
        wait for it alone: never a device-wide synchronize, which would break another thread's
        graph capture."""
        seg, cu = self.seg, self.cu
        s = int(self.stream.ptr)
        feeds = {}
        for name, slot in host.inputs:
            spec = seg._spec(slot)
            array = np.empty(spec.shape, np.dtype(spec.dtype))
            if array.nbytes:
                cu.copy_to_host(array.reshape(-1).view(np.uint8), seg.address(self, slot), stream=s)
            feeds[name] = array
        result = host.plan.run(feeds, threads)
        for j, slot in enumerate(host.step.outputs):
            array = np.ascontiguousarray(result[f"out{j}"])
            if array.nbytes:
                dst = seg.address(self, slot)
                cu.copy_to_device(dst, array.reshape(-1).view(np.uint8), stream=s)


# ---- per-op lowerings ---------------------------------------------------------------------------

_Lowering = Callable[[CudaSegment, RecordedStep], list[_Launch]]
_LOWERINGS: dict[str, _Lowering] = {}


def _lowering(*ops: str) -> Callable[[_Lowering], _Lowering]:
    def register(fn: _Lowering) -> _Lowering:
        for op in ops:
            _LOWERINGS[op] = fn
        return fn

    return register


def _padded(step: RecordedStep, n: int) -> list[int | None]:
    """The step's input slots, absent optional ones (None) filled in up to ``n``."""
    return [*step.inputs, *([None] * (n - len(step.inputs)))][:n]


def _f32(seg: CudaSegment, *slots: int | None) -> None:
    for slot in slots:
        if slot is not None and seg._spec(slot).dtype != "float32":
            raise _Unsupported(f"the CUDA kernel takes float32, not {seg._spec(slot).dtype}")


def _shape(seg: CudaSegment, slot: int) -> tuple[int, ...]:
    return tuple(int(d) for d in seg._spec(slot).shape)


def _act_kwargs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    act = str(attrs.get("activation", "none"))
    kw: dict[str, Any] = {"activation": act}
    if act == "clip":
        kw["clip_min"] = float(attrs.get("clip_min", -math.inf))
        kw["clip_max"] = float(attrs.get("clip_max", math.inf))
    return kw


def _bias_ok(seg: CudaSegment, slot: int | None, n: int) -> None:
    if slot is None:
        return
    shape = _shape(seg, slot)
    if math.prod(shape) != n or any(d != 1 for d in shape[:-1]):
        raise _Unsupported(f"bias of shape {list(shape)} is not one row of {n}")


@_lowering("gemm")
def _gemm(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    a, b, bias, residual = _padded(step, 4)
    assert a is not None and b is not None
    _f32(seg, a, b, bias, residual)
    ta, tb = bool(step.attrs.get("trans_a", 0)), bool(step.attrs.get("trans_b", 0))
    sa, sb = _shape(seg, a), _shape(seg, b)
    m, k = (sa[1], sa[0]) if ta else sa
    n = sb[0] if tb else sb[1]
    _bias_ok(seg, bias, n)
    kw = {
        "trans_a": ta,
        "trans_b": tb,
        "alpha": float(step.attrs.get("alpha", 1.0)),
        "bias": seg._ref(bias),
        "residual": seg._ref(residual),
        "tf32": seg._tf32,
        **_act_kwargs(step.attrs),
    }
    launches, (ra, rb) = _operands(seg, kw, a, b)
    out = seg._ref(step.outputs[0])
    return [*launches, _Launch(_gemm_fn(seg, kw), (ra, rb, out, m, n, k), kw)]


@_lowering("matmul")
def _matmul(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    a, b, bias, residual = _padded(step, 4)
    assert a is not None and b is not None
    _f32(seg, a, b, bias, residual)
    tb = bool(step.attrs.get("trans_b", 0))
    sa, sb = list(_shape(seg, a)), list(_shape(seg, b))
    if len(sa) == 1:
        sa = [1, *sa]
    if len(sb) == 1:
        sb = [*sb, 1]
    m, k = sa[-2], sa[-1]
    n = sb[-2] if tb else sb[-1]
    ba, bb = sa[:-2], sb[:-2]
    nb = max(len(ba), len(bb))
    ba, bb = [1] * (nb - len(ba)) + ba, [1] * (nb - len(bb)) + bb
    batch = [y if x == 1 else x for x, y in zip(ba, bb, strict=True)]
    count = math.prod(batch)
    _bias_ok(seg, bias, n)
    kw: dict[str, Any] = {
        "trans_b": tb,
        "alpha": float(step.attrs.get("alpha", 1.0)),
        "bias": seg._ref(bias),
        "residual": seg._ref(residual),
        "tf32": seg._tf32,
        **_act_kwargs(step.attrs),
    }
    out = seg._ref(step.outputs[0])
    if math.prod(bb) == 1 and math.prod(ba) == count:
        args: tuple[int, ...] = (m * count, n, k)  # B shared: one product
    elif ba == batch and (bb == batch or math.prod(bb) == 1):
        stride_b = 0 if math.prod(bb) == 1 else k * n
        kw.update(batch=count, stride_a=m * k, stride_b=stride_b)
        args = (m, n, k)
    elif bb == batch and math.prod(ba) == 1:
        kw.update(batch=count, stride_a=0, stride_b=k * n)
        args = (m, n, k)
    else:
        raise _Unsupported(f"batch dimensions {ba} and {bb} broadcast both ways")
    launches, (ra, rb) = _operands(seg, kw, a, b)
    return [*launches, _Launch(_gemm_fn(seg, kw), (ra, rb, out, *args), kw)]


def _gemm_fn(seg: CudaSegment, kw: dict[str, Any]) -> str | Callable[..., None]:
    """cuBLAS (``"gemm"``), or the Triton GEMM where ``triton_ops`` asks for ``matmul`` and the
    step is one float32 product with ``alpha`` 1."""
    single = kw.get("batch", 1) == 1 and kw.get("alpha", 1.0) == 1.0
    if "matmul" in seg._triton_ops and single and "operand" not in kw:
        from phi_engine.runtime.cuda import triton_ops

        kw.pop("alpha", None)
        kw.pop("batch", None)
        return triton_ops.gemm
    return "gemm"


_Operand = int | tuple[_Ref | int, int]
"""A product's operand: a slot, or a ready device address and its element count (scratch)."""


def _operands(
    seg: CudaSegment, kw: dict[str, Any], *operands: _Operand
) -> tuple[list[_Launch], list[_Ref | int]]:
    """The product's operands: as they are in float32, or in the segment's half type (a
    constant converted once, anything else cast into scratch memory first)."""
    half = seg._operand
    if half is not None:
        kw["operand"] = half
        kw.pop("tf32", None)
    launches: list[_Launch] = []
    refs: list[_Ref | int] = []
    for op in operands:
        if isinstance(op, int):
            root = seg._storage(op)
            if half is not None and root in seg._record.constants:
                refs.append(_Ref("const", seg.constant(seg._record.constants[root], half)))
                continue
            src, count = seg._ref(op), math.prod(_shape(seg, op))
        else:
            src, count = op
        if half is None:
            refs.append(src)
            continue
        dst = seg.scratch(count * _HALF_BYTES[half])
        launches.append(_Launch("cast", (src, "float32", dst, half, count), {}))
        refs.append(dst)
    return launches, refs


@_lowering(*_BINARY)
def _binary(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    a, b = step.inputs[0], step.inputs[1]
    assert a is not None and b is not None
    _f32(seg, a, b)
    out = step.outputs[0]
    args = (
        step.op,
        seg._ref(a),
        list(_shape(seg, a)),
        seg._ref(b),
        list(_shape(seg, b)),
        seg._ref(out),
        list(_shape(seg, out)),
    )
    return [_Launch("binary", args, _act_kwargs(step.attrs))]


@_lowering(*_UNARY)
def _unary(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    x = step.inputs[0]
    assert x is not None
    _f32(seg, x)
    n = math.prod(_shape(seg, x))
    p0, p1 = 0.0, 0.0
    if step.op == "clip":
        p0 = float(step.attrs.get("min", -math.inf))
        p1 = float(step.attrs.get("max", math.inf))
    elif step.op == "leaky_relu":
        p0 = float(step.attrs.get("alpha", 0.01))
    kw = {"p0": p0, "p1": p1}
    return [_Launch("unary", (step.op, seg._ref(x), seg._ref(step.outputs[0]), n), kw)]


@_lowering("softmax")
def _softmax(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    x, mask = _padded(step, 2)
    assert x is not None
    _f32(seg, x, mask)
    shape = _shape(seg, x)
    axis = int(step.attrs.get("axis", -1))
    if axis not in (-1, len(shape) - 1):
        raise _Unsupported("softmax over an axis other than the last")
    kw: dict[str, Any] = {"scale": float(step.attrs.get("scale", 1.0))}
    if "softmax" in seg._triton_ops and (shape[-1] if shape else 1) <= _triton_max_row():
        from phi_engine.runtime.cuda import triton_ops

        rows_of = (0, 1) if mask is None else triton_ops.mask_rows(shape, _shape(seg, mask))
        if rows_of is not None:  # else the mask's rows are not evenly spaced: CUDA runs it
            if mask is not None:
                kw.update(mask=seg._ref(mask), mask_row_stride=rows_of[0], mask_rows=rows_of[1])
            cols = shape[-1] if shape else 1
            args = (seg._ref(x), seg._ref(step.outputs[0]), math.prod(shape) // max(cols, 1), cols)
            return [_Launch(triton_ops.softmax, args, kw)]
    if mask is not None:
        kw.update(mask=seg._ref(mask), mask_shape=list(_shape(seg, mask)))
    return [_Launch("softmax", (seg._ref(x), seg._ref(step.outputs[0]), list(shape)), kw)]


@_lowering("layer_norm")
def _layer_norm(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    x, gamma, beta, residual = _padded(step, 4)
    assert x is not None and gamma is not None
    _f32(seg, x, gamma, beta, residual)
    shape = _shape(seg, x)
    axis = int(step.attrs.get("axis", -1)) % max(len(shape), 1)
    rows, cols = math.prod(shape[:axis]), math.prod(shape[axis:])
    for p in (gamma, beta):
        if p is not None and math.prod(_shape(seg, p)) != cols:
            raise _Unsupported("gamma or beta does not cover the normalised dimensions")
    kw = {
        "beta": seg._ref(beta),
        "residual": seg._ref(residual),
        "epsilon": float(step.attrs.get("epsilon", 1e-5)),
    }
    args = (seg._ref(x), seg._ref(step.outputs[0]), rows, cols, seg._ref(gamma))
    if "layer_norm" in seg._triton_ops and cols <= _triton_max_row():
        from phi_engine.runtime.cuda import triton_ops

        return [_Launch(triton_ops.layer_norm, args, kw)]
    return [_Launch("layer_norm", args, kw)]


@_lowering("reshape")
def _reshape(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    x = step.inputs[0]
    assert x is not None
    seg._root[step.outputs[0]] = x  # a view: same bytes, new shape
    return []


def _triton_max_row() -> int:
    """The longest row the Triton row kernels hold (longer rows stay on the CUDA kernels)."""
    from phi_engine.kernels.softmax import MAX_ROW

    return int(MAX_ROW)


def _strides(shape: Sequence[int]) -> list[int]:
    out, s = [], 1
    for d in reversed(shape):
        out.append(s)
        s *= d
    return out[::-1]


def _merge(shape: Sequence[int], strides: Sequence[int]) -> tuple[list[int], list[int]]:
    """Drop size-1 dimensions and merge neighbours that are contiguous in the source."""
    dims = [(d, s) for d, s in zip(shape, strides, strict=True) if d != 1]
    merged: list[list[int]] = []
    for d, s in dims:
        if merged and merged[-1][1] == s * d:
            merged[-1] = [merged[-1][0] * d, s]
        else:
            merged.append([d, s])
    if not merged:
        merged = [[1, 1]]
    return [d for d, _ in merged], [s for _, s in merged]


@_lowering("transpose")
def _transpose(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    x = step.inputs[0]
    assert x is not None
    shape = _shape(seg, x)
    r = len(shape)
    perm = [int(p) % r for p in step.attrs.get("perm", list(range(r - 1, -1, -1)))] if r else []
    src = _strides(shape)
    dims, strides = _merge([shape[p] for p in perm], [src[p] for p in perm])
    if len(dims) > 8:
        raise _Unsupported("more than 8 dimensions after merging")
    size = np.dtype(seg._spec(x).dtype).itemsize
    if size not in (1, 2, 4, 8):
        raise _Unsupported(f"elements of {size} bytes")
    args = (seg._ref(x), seg._ref(step.outputs[0]), size, dims, strides)
    return [_Launch("strided_copy", args, {})]


@_lowering("gather")
def _gather(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    data, idx = step.inputs[0], step.inputs[1]
    assert data is not None and idx is not None
    shape = _shape(seg, data)
    idx_dtype = seg._spec(idx).dtype
    if idx_dtype not in ("int32", "int64"):
        raise _Unsupported(f"indices of {idx_dtype}")
    size = np.dtype(seg._spec(data).dtype).itemsize
    if size not in (1, 2, 4, 8) or not shape:
        raise _Unsupported("element size or rank")
    axis = int(step.attrs.get("axis", 0)) % len(shape)
    outer, dim, row = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])
    count = math.prod(_shape(seg, idx))
    args = (seg._ref(data), size, seg._ref(idx), idx_dtype, seg._ref(step.outputs[0]))
    kw = {"error": _Ref("error", 0)}
    return [_Launch("gather", (*args, outer, count, dim, row), kw)]


@_lowering("cast")
def _cast(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    x = step.inputs[0]
    assert x is not None
    src, dst = seg._spec(x).dtype, seg._spec(step.outputs[0]).dtype
    if src not in _CAST_DTYPES or dst not in _CAST_DTYPES:
        raise _Unsupported(f"a cast from {src} to {dst}")
    n = math.prod(_shape(seg, x))
    return [_Launch("cast", (seg._ref(x), src, seg._ref(step.outputs[0]), dst, n), {})]


@_lowering(*_REDUCE)
def _reduce(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    x = step.inputs[0]
    assert x is not None
    _f32(seg, x)
    shape = _shape(seg, x)
    r = len(shape)
    axes = [int(a) % r for a in step.attrs.get("axes", [])] if r else []
    if not axes:
        if step.attrs.get("noop_with_empty_axes", 0):
            raise _Unsupported("a reduction over no axes")
        axes = list(range(r))
    kept = [d for d in range(r) if d not in axes and shape[d] != 1]
    reduced = [d for d in axes if shape[d] != 1]
    if reduced and kept and any(min(reduced) < d < max(reduced) for d in kept):
        raise _Unsupported("the reduced axes are not one run")
    lo = min(reduced) if reduced else r
    hi = max(reduced) + 1 if reduced else r
    outer = math.prod(shape[d] for d in range(lo) if d not in axes)
    length = math.prod(shape[d] for d in reduced)
    inner = math.prod(shape[d] for d in range(hi, r))
    args = (_REDUCE[step.op], seg._ref(x), seg._ref(step.outputs[0]), outer, length, inner)
    return [_Launch("reduce", args, {})]


def _at(ref: _Ref | int, nbytes: int) -> _Ref | int:
    """``nbytes`` past a device address."""
    if isinstance(ref, int):
        return ref + nbytes
    return _Ref(ref.region, ref.offset, ref.add + nbytes)


def _slice_start(dim: int, s: int, e: int, step: int) -> tuple[int, int, int]:
    """(start, length, step) of one axis of ONNX Slice, clamped as the CPU kernel does."""
    span = max(dim, 1)
    step = min(max(step, -span), span)
    s = s + dim if s < 0 else s
    e = e + dim if e < 0 else e
    if step > 0:
        s, e = min(max(s, 0), dim), min(max(e, 0), dim)
        length = (e - s - 1) // step + 1 if e > s else 0
    else:
        s, e = min(max(s, 0), max(dim - 1, 0)), min(max(e, -1), max(dim - 1, -1))
        length = (s - e - 1) // -step + 1 if dim > 0 and s > e else 0
    return (s if length > 0 else 0), length, step


@_lowering("slice")
def _slice(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    x = step.inputs[0]
    assert x is not None
    shape = _shape(seg, x)
    r = len(shape)
    starts = [int(v) for v in step.attrs.get("starts", [])]
    ends = [int(v) for v in step.attrs.get("ends", [])]
    axes = [int(a) % r for a in step.attrs.get("axes", range(len(starts)))]
    steps = [int(v) for v in step.attrs.get("steps", [1] * len(starts))]
    start, stride_mul = [0] * r, [1] * r
    out = list(shape)
    for a, s0, e0, k in zip(axes, starts, ends, steps, strict=True):
        start[a], out[a], stride_mul[a] = _slice_start(shape[a], s0, e0, k)
    if out != list(_shape(seg, step.outputs[0])):
        raise _Unsupported("the slice's shape differs from the step's")  # never: a safety net
    size = np.dtype(seg._spec(x).dtype).itemsize
    if size not in (1, 2, 4, 8):
        raise _Unsupported(f"elements of {size} bytes")
    src = _strides(shape)
    offset = sum(st * sd for st, sd in zip(start, src, strict=True))
    dims, strides = _merge(out, [sd * m for sd, m in zip(src, stride_mul, strict=True)])
    if len(dims) > 8:
        raise _Unsupported("more than 8 dimensions after merging")
    base = _at(seg._ref(x), offset * size)
    return [_Launch("strided_copy", (base, seg._ref(step.outputs[0]), size, dims, strides), {})]


@_lowering("concat")
def _concat(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    parts = [slot for slot in step.inputs if slot is not None]
    out_shape = _shape(seg, step.outputs[0])
    r = len(out_shape)
    axis = int(step.attrs.get("axis", 0)) % r
    size = np.dtype(seg._spec(step.outputs[0]).dtype).itemsize
    outer = math.prod(out_shape[:axis])
    inner = math.prod(out_shape[axis + 1 :]) * size
    total = out_shape[axis] * inner
    out = seg._ref(step.outputs[0])
    launches, done = [], 0
    for slot in parts:
        width = _shape(seg, slot)[axis] * inner
        if outer == 1:  # one contiguous run: a plain copy (no pitch limit)
            launches.append(_Launch("copy_device", (_at(out, done), seg._ref(slot), width), {}))
        else:
            args = (_at(out, done), total, seg._ref(slot), width, width, outer)
            launches.append(_Launch("copy_2d", args, {}))
        done += width
    return launches


_FUSABLE_ACTS = ("none", "relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "clip")


def _window(attrs: Mapping[str, Any]) -> tuple[list[int], list[int], list[int]]:
    """(strides, dilations, pads [top, left, bottom, right]) of a conv or pool step."""
    strides = [int(v) for v in attrs.get("strides", [1, 1])]
    dilations = [int(v) for v in attrs.get("dilations", [1, 1])]
    pads = [int(v) for v in attrs.get("pads", [0, 0, 0, 0])]
    if len(strides) != 2 or len(dilations) != 2 or len(pads) != 4:
        raise _Unsupported("a window that is not 2-D")
    return strides, dilations, pads


def _chain(
    seg: CudaSegment,
    first: _Ref | int,
    shape: list[int],
    stages: list[tuple[str, Any]],
    out: _Ref | int,
) -> list[_Launch]:
    """Elementwise stages after a product: ("add", (slot ref, its shape)) adds a tensor that
    broadcasts to ``shape``, ("act", kwargs) applies an activation. Each stage writes a fresh
    scratch buffer (the kernels' operands must not overlap) and the last writes ``out``."""
    launches: list[_Launch] = []
    current = first
    nbytes = 4 * math.prod(shape)
    for i, (kind, arg) in enumerate(stages):
        dst = out if i == len(stages) - 1 else seg.scratch(nbytes)
        if kind == "add":
            ref, other_shape, act = arg
            args = ("add", current, list(shape), ref, list(other_shape), dst, list(shape))
            launches.append(_Launch("binary", args, act))
        else:
            act = arg
            name = act["activation"]
            p0 = float(act.get("clip_min", -math.inf)) if name == "clip" else 0.0
            p1 = float(act.get("clip_max", math.inf)) if name == "clip" else 0.0
            n = math.prod(shape)
            launches.append(_Launch("unary", (name, current, dst, n), {"p0": p0, "p1": p1}))
        current = dst
    return launches


@_lowering("conv2d")
def _conv2d(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    x, w, bias, residual = _padded(step, 4)
    assert x is not None and w is not None
    _f32(seg, x, w, bias, residual)
    groups = int(step.attrs.get("groups", 1))
    act = _act_kwargs({k: v for k, v in step.attrs.items() if v is not None})
    if act["activation"] not in _FUSABLE_ACTS:
        raise _Unsupported(f"activation {act['activation']!r}")
    n, c, h, wd = _shape(seg, x)
    m, cw, kh, kw = _shape(seg, w)
    out_shape = list(_shape(seg, step.outputs[0]))
    oh, ow = out_shape[2], out_shape[3]
    if cw * groups != c or m % groups:
        raise _Unsupported("weights and input channels do not match the groups")
    strides, dilations, pads = _window(step.attrs)
    k, p = c * kh * kw, oh * ow
    launches: list[_Launch] = []
    direct = kh == kw == 1 and strides == [1, 1] and pads == [0, 0, 0, 0]
    if groups > 1 and seg._operand is not None:
        raise _Unsupported("grouped convolution with half-precision products")
    if direct:  # a 1x1 convolution: each image is already its K x P matrix
        cols: _Ref | int = seg._ref(x)
    else:
        cols = seg.scratch(4 * n * k * p)
        launches.append(
            _Launch(
                "im2col",
                (
                    seg._ref(x),
                    cols,
                    [n, c, h, wd],
                    [oh, ow],
                    [kh, kw],
                    strides,
                    dilations,
                    pads[:2],
                ),
                {},
            )
        )
    stages: list[tuple[str, Any]] = []
    if residual is not None:
        stages.append(("add", (seg._ref(residual), out_shape, {})))
    if bias is not None:
        stages.append(("add", (seg._ref(bias), [m, 1, 1], act)))
    elif act["activation"] != "none":
        stages.append(("act", act))
    out = seg._ref(step.outputs[0])
    y = out if not stages else seg.scratch(4 * n * m * p)
    kw_gemm: dict[str, Any] = {"tf32": seg._tf32}
    if groups > 1:
        # Per image, one product per group, batched over the groups: weights [g, M/g, K/g],
        # patches [g, K/g, P], output [g, M/g, P], which is the image's [M, P] in order.
        mg, kg = m // groups, k // groups
        kw_gemm.update(batch=groups, stride_a=mg * kg, stride_b=kg * p)
        wref = seg._ref(w)
        for i in range(n):
            b_i = _at(cols, 4 * i * k * p)
            launches.append(_Launch("gemm", (wref, b_i, _at(y, 4 * i * m * p), mg, p, kg), kw_gemm))
        return launches + _chain(seg, y, out_shape, stages, out)
    if n > 1:
        kw_gemm.update(batch=n, stride_a=0, stride_b=k * p)
    # A 1x1 convolution reads x itself, each image already its [K, P] matrix.
    cast, (ra, rb) = _operands(seg, kw_gemm, w, x if direct else (cols, k * p * n))
    launches += cast
    launches.append(_Launch("gemm", (ra, rb, y, m, p, k), kw_gemm))
    return launches + _chain(seg, y, out_shape, stages, out)


def _tap_counts(
    size: int, out: int, k: int, stride: int, dilation: int, pad0: int, pad1: int, include: bool
) -> list[int]:
    """Taps of each output position inside the input (or the padded input): the CPU kernel's
    divisor of an average pool, ceil-mode windows included."""
    lo, hi = (-pad0, size + pad1) if include else (0, size)

    def first_at_or_after(distance: int) -> int:
        return 0 if distance <= 0 else (distance + dilation - 1) // dilation

    counts = []
    for o in range(out):
        base = o * stride - pad0
        t0, t1 = first_at_or_after(lo - base), min(k, first_at_or_after(hi - base))
        counts.append(max(0, t1 - t0))
    return counts


@_lowering("max_pool2d", "avg_pool2d")
def _pool2d(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    x = step.inputs[0]
    assert x is not None
    _f32(seg, x)
    n, c, h, w = _shape(seg, x)
    oh, ow = _shape(seg, step.outputs[0])[2:]
    kh, kw = (int(v) for v in step.attrs.get("kernel_shape", []))
    strides, dilations, pads = _window(step.attrs)
    kwargs: dict[str, Any] = {}
    if step.op == "avg_pool2d":
        include = bool(step.attrs.get("count_include_pad", 0))
        ch = _tap_counts(h, oh, kh, strides[0], dilations[0], pads[0], pads[2], include)
        cw = _tap_counts(w, ow, kw, strides[1], dilations[1], pads[1], pads[3], include)
        counts = np.outer(np.array(ch, np.float64), np.array(cw, np.float64))
        with np.errstate(divide="ignore"):
            inv = np.where(counts > 0, 1.0 / counts, np.nan).astype(np.float32)
        kwargs["inv_count"] = _Ref("const", seg.constant(inv))
    op = "max" if step.op == "max_pool2d" else "avg"
    args = (op, seg._ref(x), seg._ref(step.outputs[0]), [n, c, h, w], [oh, ow], [kh, kw], strides,
            dilations, pads[:2])  # fmt: skip
    return [_Launch("pool2d", args, kwargs)]


@_lowering("global_avg_pool")
def _global_avg_pool(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    x = step.inputs[0]
    assert x is not None
    _f32(seg, x)
    shape = _shape(seg, x)
    outer, length = shape[0] * shape[1], math.prod(shape[2:])
    return [
        _Launch("reduce", ("mean", seg._ref(x), seg._ref(step.outputs[0]), outer, length, 1), {})
    ]


@_lowering("batch_norm")
def _batch_norm(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    x, scale, bias, mean, var = _padded(step, 5)
    assert x is not None
    _f32(seg, x, scale, bias, mean, var)
    params = []
    for slot in (scale, bias, mean, var):
        root = None if slot is None else seg._storage(slot)
        if root is None or root not in seg._record.constants:
            raise _Unsupported("batch norm with parameters that are not constants")
        value = seg._record.constants[root]
        params.append(
            np.asarray(value.numpy() if isinstance(value, Constant) else value, np.float64)
        )
    eps = float(step.attrs.get("epsilon", 1e-5))
    g, b, mu, v = params
    a = (g / np.sqrt(v + eps)).astype(np.float32)
    shift = (b - mu * (g / np.sqrt(v + eps))).astype(np.float32)
    shape = list(_shape(seg, x))
    channel = [shape[1]] + [1] * (len(shape) - 2)
    ref_a = _Ref("const", seg.constant(a))
    ref_b = _Ref("const", seg.constant(shift))
    stages: list[tuple[str, Any]] = [("add", (ref_b, channel, {}))]
    tmp = seg.scratch(4 * math.prod(shape))
    first = _Launch("binary", ("mul", seg._ref(x), shape, ref_a, channel, tmp, shape), {})
    return [first, *_chain(seg, tmp, shape, stages, seg._ref(step.outputs[0]))]


@_lowering("equal", "less", "less_equal", "greater", "greater_equal")
def _compare(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    a, b = step.inputs[0], step.inputs[1]
    assert a is not None and b is not None
    dtype = seg._spec(a).dtype
    if dtype not in ("float32", "int32", "int64") or seg._spec(b).dtype != dtype:
        raise _Unsupported(f"a comparison of {dtype}")
    out = step.outputs[0]
    args = (step.op, dtype, seg._ref(a), list(_shape(seg, a)), seg._ref(b), list(_shape(seg, b)),
            seg._ref(out), list(_shape(seg, out)))  # fmt: skip
    return [_Launch("compare", args, {})]


@_lowering("where")
def _where(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    c, a, b = step.inputs[0], step.inputs[1], step.inputs[2]
    assert c is not None and a is not None and b is not None
    size = np.dtype(seg._spec(a).dtype).itemsize
    if size not in (1, 2, 4, 8) or seg._spec(c).dtype != "bool":
        raise _Unsupported("a condition that is not bool, or elements of an odd size")
    out = step.outputs[0]
    args = (seg._ref(c), list(_shape(seg, c)), size, seg._ref(a), list(_shape(seg, a)),
            seg._ref(b), list(_shape(seg, b)), seg._ref(out), list(_shape(seg, out)))  # fmt: skip
    return [_Launch("where", args, {})]


@_lowering("log_softmax")
def _log_softmax(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    x, mask = _padded(step, 2)
    assert x is not None
    _f32(seg, x)
    shape = _shape(seg, x)
    axis = int(step.attrs.get("axis", -1))
    if mask is not None or float(step.attrs.get("scale", 1.0)) != 1.0:
        raise _Unsupported("a log-softmax with a mask or a scale")
    if axis not in (-1, len(shape) - 1):
        raise _Unsupported("log-softmax over an axis other than the last")
    cols = shape[-1] if shape else 1
    rows = math.prod(shape) // max(cols, 1)
    return [_Launch("log_softmax", (seg._ref(x), seg._ref(step.outputs[0]), rows, cols), {})]


@_lowering("rms_norm")
def _rms_norm(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    x, gamma = step.inputs[0], step.inputs[1]
    assert x is not None and gamma is not None
    _f32(seg, x, gamma)
    shape = _shape(seg, x)
    axis = int(step.attrs.get("axis", -1)) % max(len(shape), 1)
    rows, cols = math.prod(shape[:axis]), math.prod(shape[axis:])
    if math.prod(_shape(seg, gamma)) != cols:
        raise _Unsupported("gamma does not cover the normalised dimensions")
    args = (seg._ref(x), seg._ref(step.outputs[0]), rows, cols, seg._ref(gamma))
    return [_Launch("rms_norm", args, {"epsilon": float(step.attrs.get("epsilon", 1e-6))})]


@_lowering("argmax", "argmin")
def _arg(seg: CudaSegment, step: RecordedStep) -> list[_Launch]:
    x = step.inputs[0]
    assert x is not None
    _f32(seg, x)
    shape = _shape(seg, x)
    axis = int(step.attrs.get("axis", 0)) % len(shape)
    outer, length, inner = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1 :])
    op = "max" if step.op == "argmax" else "min"
    kw = {"last": bool(step.attrs.get("select_last_index", 0))}
    return [_Launch("arg", (op, seg._ref(x), seg._ref(step.outputs[0]), outer, length, inner), kw)]
