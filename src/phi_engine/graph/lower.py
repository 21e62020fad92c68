"""Lowering: a graph specialized to concrete shapes → native plans, with reference fallback.

Nodes are lowered in order into the current native :class:`PlanBuilder`; a node whose op has
no native lowering for its dtypes and attributes ends the current plan and runs on the numpy
reference, and the next lowerable node starts a new plan. A model on the native kernels' dtypes
(float32 compute, integer indices) becomes one plan: one call into C++ per request, the GIL
released for all of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from phi_engine.errors import PhiEngineError
from phi_engine.graph.ir import Graph, Node, TensorType
from phi_engine.graph.registry import OpContext, OpDef, get_op
from phi_engine.runtime.backends import get_backend
from phi_engine.runtime.plan import Constant, Plan, PlanBuilder, PlanRecord

__all__ = [
    "LowerContext",
    "NativeSegment",
    "NodeTiming",
    "ProfiledProgramRun",
    "Program",
    "ReferenceStep",
    "build_program",
]


class LowerContext(OpContext):
    """What a lower function sees: concrete input/output types, known values, plan slots."""

    def __init__(self, node: Node, segment: _SegmentBuilder, graph: Graph) -> None:
        super().__init__(node)
        self._segment = segment
        self._graph = graph
        self.types: list[TensorType | None] = [
            graph.types[name] if name else None for name in node.inputs
        ]
        self.out_types: list[TensorType] = [graph.types[name] for name in node.outputs if name]

    def has(self, i: int) -> bool:
        return i < len(self.node.inputs) and bool(self.node.inputs[i])

    def type(self, i: int) -> TensorType:
        t = self.types[i] if i < len(self.types) else None
        if t is None:
            self.fail(f"input {i} is required")
        assert t is not None
        return t

    def shape(self, i: int) -> tuple[int, ...]:
        return self.type(i).static_shape()

    def dtype(self, i: int) -> np.dtype[Any]:
        return self.type(i).dtype

    def value(self, i: int) -> np.ndarray | None:
        """Input ``i``'s value if it is a compile-time constant."""
        if not self.has(i):
            return None
        return self._graph.constants.get(self.node.inputs[i])

    def slot(self, i: int) -> int | None:
        """The plan slot of input ``i`` (None when absent)."""
        if not self.has(i):
            return None
        return self._segment.slot(self.node.inputs[i])

    def constant(self, value: np.ndarray) -> int:
        """A new constant slot holding ``value`` (e.g. a transposed weight)."""
        return self._segment.builder.add_constant(_contiguous(value))

    def step(
        self, op: str, inputs: Sequence[int | None], attrs: Mapping[str, Any] | None = None
    ) -> list[int]:
        """Append native op ``op``; returns its output slots."""
        slots = self._segment.builder.add_step(op, inputs, attrs)
        self._segment.step_nodes.append((op, self.node.label))
        return slots

    def spec(self, slot: int) -> tuple[np.dtype[Any], tuple[int, ...]]:
        s = self._segment.builder.spec(slot)
        return np.dtype(s.dtype), s.shape


@dataclass
class NativeSegment:
    """A run of lowered nodes: one native plan, fed from and feeding named values."""

    plan: Plan
    inputs: list[str]
    outputs: list[str]
    nodes: list[Node]
    step_nodes: list[tuple[str, str]]  # (native op, node label) of each plan step
    record: PlanRecord | None = None  # the steps as added, when the builder recorded them

    def run(self, values: Mapping[str, Any], threads: int) -> dict[str, np.ndarray]:
        try:
            return self.plan.run({n: values[n] for n in self.inputs}, threads)
        except PhiEngineError as exc:
            raise _in_nodes(exc, self._suspects(exc.message)) from exc

    def _suspects(self, message: str) -> list[str]:
        """The nodes whose steps run the native op a message names (``[op] ...``)."""
        op = message[1 : message.find("]")] if message.startswith("[") else ""
        return list(dict.fromkeys(label for o, label in self.step_nodes if o == op))


@dataclass
class ReferenceStep:
    """A node run by its numpy reference."""

    node: Node
    opdef: OpDef


@dataclass(frozen=True)
class NodeTiming:
    """The time one graph node took in a profiled run.

    Attributes:
        label: The node's label (its name, else its first output).
        op_type: The node's op type after fusion (e.g. ``Linear`` for a fused Gemm + bias + Relu).
        ns: Wall time in nanoseconds, summed over the node's kernel calls.
        native: Whether it ran in a native plan (else on the numpy reference).
    """

    label: str
    op_type: str
    ns: int
    native: bool


@dataclass(frozen=True)
class ProfiledProgramRun:
    """What :meth:`Program.run_profiled` returns.

    Attributes:
        outputs: Every graph output by name, as :meth:`Program.run` returns them.
        nodes: Each node's time, in execution order.
        total_ns: Wall time of the whole run; the nodes' times sum to at most this.
    """

    outputs: dict[str, np.ndarray]
    nodes: list[NodeTiming]
    total_ns: int


class _SegmentBuilder:
    def __init__(self, graph: Graph, constants: dict[str, Constant], record: bool) -> None:
        self.builder = PlanBuilder(record=record)
        self.graph = graph
        self.shared_constants = constants
        self.slots: dict[str, int] = {}
        self.inputs: list[str] = []
        self.nodes: list[Node] = []
        self.step_nodes: list[tuple[str, str]] = []

    def slot(self, name: str) -> int:
        found = self.slots.get(name)
        if found is not None:
            return found
        if name in self.graph.constants:
            value = self.graph.constants[name]
            shared = self.shared_constants.get(name)
            s = self.builder.add_constant(shared if shared is not None else _contiguous(value))
        else:
            t = self.graph.types[name]
            s = self.builder.add_input(name, t.dtype, t.static_shape())
            self.inputs.append(name)
        self.slots[name] = s
        return s


def build_program(
    graph: Graph,
    constants: Mapping[str, Constant] | None = None,
    device: str = "cpu",
    *,
    record: bool = False,
) -> Program:
    """Lower a graph whose types are all static: each node by ``device``'s backend if it has a
    lowering that accepts the node, else by the numpy reference.

    Args:
        graph: The specialized graph.
        constants: Native copies of the model's weights, shared by every shape bucket's plans.
        device: ``cpu`` (native plans) or ``reference`` (numpy for every node).
        record: Keep each native segment's steps (:class:`PlanRecord`) for another backend.
    """
    backend = get_backend(device)
    shared = dict(constants or {})
    needed_after = _needed_after(graph)
    steps: list[NativeSegment | ReferenceStep] = []
    segment: _SegmentBuilder | None = None

    def close(index: int) -> None:
        nonlocal segment
        if segment is None or not segment.nodes:
            segment = None
            return
        produced = [out for n in segment.nodes for out in n.outputs if out]
        outputs = [name for name in produced if name in needed_after[index]]
        for name in outputs:
            segment.builder.mark_output(segment.slots[name], name)
        plan = segment.builder.build()
        steps.append(
            NativeSegment(
                plan,
                segment.inputs,
                outputs,
                segment.nodes,
                segment.step_nodes,
                segment.builder.record,
            )
        )
        segment = None

    for i, node in enumerate(graph.nodes):
        opdef = get_op(node.domain, node.op_type)
        lowering = backend.lowering(node.domain, node.op_type)
        lowered = False
        if lowering is not None and _static(graph, node):
            if segment is None:
                segment = _SegmentBuilder(graph, shared, record)
            slots = lowering(LowerContext(node, segment, graph))
            if slots is not None:
                for name, s in zip([o for o in node.outputs if o], slots, strict=False):
                    segment.slots[name] = s
                segment.nodes.append(node)
                lowered = True
        if not lowered:
            close(i)
            steps.append(ReferenceStep(node, opdef))
    close(len(graph.nodes))
    return Program(graph, steps)


def _static(graph: Graph, node: Node) -> bool:
    """Every input and output type is known with integer dimensions (data-dependent shapes,
    e.g. after NonZero, are not: such nodes run on the reference)."""
    names = [n for n in (*node.inputs, *node.outputs) if n]
    return all(name in graph.types and graph.types[name].is_static for name in names)


def _in_nodes(exc: PhiEngineError, labels: list[str]) -> PhiEngineError:
    """The same error, its message naming the node(s) it came from."""
    if not labels:
        return exc
    where = ", ".join(repr(label) for label in labels[:3])
    return type(exc)(f"{exc.message} (in node {where})", field=exc.field)


def _contiguous(value: np.ndarray) -> np.ndarray:
    """A C-contiguous array of the same shape (np.ascontiguousarray would make 0-d arrays 1-d)."""
    return value if value.flags.c_contiguous else value.copy(order="C")


def _needed_after(graph: Graph) -> list[set[str]]:
    """For each node index i, the values read by nodes at or after i, or returned."""
    result: list[set[str]] = [set() for _ in range(len(graph.nodes) + 1)]
    live = set(graph.outputs)
    result[len(graph.nodes)] = set(live)
    for i in range(len(graph.nodes) - 1, -1, -1):
        live |= {name for name in graph.nodes[i].inputs if name}
        result[i] = set(live)
    return result


# What Program.direct_run returns: (feeds, threads) -> outputs.
DirectRun = Callable[[Mapping[str, np.ndarray], int], dict[str, np.ndarray]]


class Program:
    """What runs one shape bucket: native segments and reference steps, in order."""

    def __init__(self, graph: Graph, steps: list[NativeSegment | ReferenceStep]) -> None:
        self.graph = graph
        self.steps = steps
        self._direct: DirectRun | bool | None = False  # False: not worked out yet

    def direct_run(self) -> DirectRun | None:
        """:meth:`run` without its general bookkeeping, for the common program: one native plan
        that reads the graph's inputs and produces every output. The plan is called with the
        feeds as given and its outputs, new arrays, are handed out as they are, which is what
        :meth:`run` does for such a program. ``None`` for any other program. Worked out once.
        """
        if self._direct is False:
            self._direct = self._make_direct()
        return self._direct  # type: ignore[return-value]

    def _make_direct(self) -> DirectRun | None:
        if len(self.steps) != 1 or not isinstance(self.steps[0], NativeSegment):
            return None
        segment = self.steps[0]
        outputs = tuple(self.graph.outputs)
        produced = set(segment.outputs)
        if not isinstance(segment.plan, Plan) or not outputs or not set(outputs) <= produced:
            return None
        native = segment.plan.native
        names = tuple(segment.inputs)

        def run(feeds: Mapping[str, np.ndarray], threads: int) -> dict[str, np.ndarray]:
            try:
                produced = native.run({name: feeds[name] for name in names}, threads)
            except PhiEngineError as exc:
                raise _in_nodes(exc, segment._suspects(exc.message)) from exc
            return {name: produced[name] for name in outputs}

        return run

    @property
    def native_nodes(self) -> int:
        return sum(len(s.nodes) for s in self.steps if isinstance(s, NativeSegment))

    @property
    def reference_nodes(self) -> list[Node]:
        return [s.node for s in self.steps if isinstance(s, ReferenceStep)]

    def run(self, feeds: Mapping[str, np.ndarray], threads: int = 0) -> dict[str, np.ndarray]:
        """Run on inputs already checked against the bucket's types."""
        values: dict[str, Any] = dict(feeds)
        native: set[str] = set()  # values the plans allocated: new arrays nobody else holds
        for step in self.steps:
            if isinstance(step, NativeSegment):
                produced = step.run(values, threads)
                values.update(produced)
                native.update(produced)
            else:
                self._run_reference(step, values)
        result = {}
        for name in self.graph.outputs:
            value = np.asarray(self._value(values, name))
            # A reference result may be a view of a constant or an input: hand out a copy.
            owned = name in native or (name in values and name not in feeds and value.base is None)
            result[name] = value if owned else value.copy()
        return result

    def _run_reference(self, step: ReferenceStep, values: dict[str, Any]) -> None:
        """Run one node on the numpy reference, storing its outputs in ``values``."""
        node = step.node
        args = [self._value(values, name) if name else None for name in node.inputs]
        outs = step.opdef.run_reference(node, args)
        for name, out in zip(node.outputs, outs, strict=False):
            if name:
                values[name] = out

    def _value(self, values: dict[str, Any], name: str) -> Any:
        if name in values:
            return values[name]
        return self.graph.constants[name]

    def run_profiled(self, feeds: Mapping[str, np.ndarray], threads: int = 0) -> ProfiledProgramRun:
        """Run like :meth:`run` and time every node.

        Native segments are timed by their plan (two clock reads per kernel call, the GIL still
        released); reference steps by ``perf_counter_ns`` around the numpy call.

        Args:
            feeds: Inputs already checked against the bucket's types.
            threads: Threads per kernel (0: the default).

        Returns:
            The outputs, each node's time and the whole run's wall time.
        """
        start = time.perf_counter_ns()
        values: dict[str, Any] = dict(feeds)
        timings: list[NodeTiming] = []
        for step in self.steps:
            if isinstance(step, NativeSegment):
                timings.extend(self._profile_segment(step, values, threads))
            else:
                timings.append(self._profile_reference(step, values))
        result = self._collect(values, feeds, set(self._native_outputs()))
        return ProfiledProgramRun(result, timings, time.perf_counter_ns() - start)

    def _profile_segment(
        self, step: NativeSegment, values: dict[str, Any], threads: int
    ) -> list[NodeTiming]:
        try:
            run = step.plan.run_profiled({n: values[n] for n in step.inputs}, threads)
        except PhiEngineError as exc:
            raise _in_nodes(exc, step._suspects(exc.message)) from exc
        values.update(run.outputs)
        op_of = {node.label: node.op_type for node in step.nodes}
        per_node: dict[str, int] = {}
        # Plan steps beyond the recorded ones (none today) keep their native op's name.
        labels = [label for _, label in step.step_nodes]
        labels += [s.op for s in run.steps[len(labels) :]]
        for label, ns in zip(labels, run.step_ns, strict=False):
            per_node[label] = per_node.get(label, 0) + ns
        return [NodeTiming(lb, op_of.get(lb, lb), ns, True) for lb, ns in per_node.items()]

    def _profile_reference(self, step: ReferenceStep, values: dict[str, Any]) -> NodeTiming:
        node = step.node
        t0 = time.perf_counter_ns()
        args = [self._value(values, name) if name else None for name in node.inputs]
        outs = step.opdef.run_reference(node, args)
        elapsed = time.perf_counter_ns() - t0
        for name, out in zip(node.outputs, outs, strict=False):
            if name:
                values[name] = out
        return NodeTiming(node.label, node.op_type, elapsed, False)

    def _native_outputs(self) -> list[str]:
        return [name for s in self.steps if isinstance(s, NativeSegment) for name in s.outputs]

    def _collect(
        self, values: dict[str, Any], feeds: Mapping[str, np.ndarray], native: set[str]
    ) -> dict[str, np.ndarray]:
        """The graph outputs, copied where a reference result may alias a constant or input."""
        result = {}
        for name in self.graph.outputs:
            value = np.asarray(self._value(values, name))
            owned = name in native or (name in values and name not in feeds and value.base is None)
            result[name] = value if owned else value.copy()
        return result
