"""A shape's program on a CUDA device: the CPU lowering's segments, each run by a
:class:`~phi_engine.runtime.cuda.plan.CudaSegment`, with numpy reference steps between them."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from phi_engine import _native
from phi_engine.errors import PhiEngineError, UnsupportedError
from phi_engine.graph.lower import (
    NativeSegment,
    NodeTiming,
    ProfiledProgramRun,
    Program,
    _in_nodes,
)
from phi_engine.runtime.cuda.plan import CudaSegment, DeviceWeights

__all__ = ["CudaModelState", "CudaProgram"]


class CudaModelState:
    """What every shape's program of one compiled model shares on the GPU: the CUDA module, the
    uploaded weights and the options (``tf32``: TF32 products; ``graphs``: CUDA graphs;
    ``operand``: ``float16`` or ``bfloat16`` products with float32 accumulation; ``triton_ops``:
    ops run by the Triton kernels, see :mod:`phi_engine.runtime.cuda.triton_ops`)."""

    def __init__(
        self,
        *,
        tf32: bool = False,
        graphs: bool = True,
        operand: str | None = None,
        triton_ops: Sequence[str] = (),
    ) -> None:
        cu = _native.cuda
        if cu is None or int(cu.device_count()) == 0:
            status = "the CUDA module is not built" if cu is None else cu.device_status()
            raise UnsupportedError(f"[compile] device 'cuda' is not available here: {status}")
        self.cu = cu
        self.weights = DeviceWeights(cu)
        self.tf32 = tf32
        self.graphs = graphs
        self.operand = operand
        self.triton_ops = tuple(triton_ops)


class CudaProgram(Program):
    """A :class:`Program` whose native segments run on the GPU."""

    def __init__(self, program: Program, state: CudaModelState) -> None:
        super().__init__(program.graph, program.steps)
        self.state = state
        self.cuda_segments: dict[int, CudaSegment] = {}
        for i, step in enumerate(program.steps):
            if isinstance(step, NativeSegment):
                assert step.record is not None, "the CUDA program needs recorded segments"
                self.cuda_segments[i] = CudaSegment(
                    step.record,
                    step.inputs,
                    step.outputs,
                    state.cu,
                    state.weights,
                    tf32=state.tf32,
                    graphs=state.graphs,
                    operand=state.operand,
                    triton_ops=state.triton_ops,
                )

    @property
    def host_steps(self) -> list[tuple[str, str]]:
        """(op, reason) of every native step that runs on the CPU kernels instead of the GPU."""
        return [h for seg in self.cuda_segments.values() for h in seg.host_steps]

    @property
    def kernels(self) -> list[tuple[str, str]]:
        """(op, ``"cuda"`` | ``"triton"`` | ``"cpu"``) of every native step, in order."""
        return [k for seg in self.cuda_segments.values() for k in seg.kernels]

    def _run_segment(
        self, i: int, step: NativeSegment, values: Mapping[str, Any], threads: int
    ) -> dict[str, np.ndarray]:
        try:
            return self.cuda_segments[i].run({n: values[n] for n in step.inputs}, threads)
        except PhiEngineError as exc:
            raise _in_nodes(exc, step._suspects(exc.message)) from exc

    def run(self, feeds: Mapping[str, np.ndarray], threads: int = 0) -> dict[str, np.ndarray]:
        values: dict[str, Any] = dict(feeds)
        native: set[str] = set()
        for i, step in enumerate(self.steps):
            if isinstance(step, NativeSegment):
                produced = self._run_segment(i, step, values, threads)
                values.update(produced)
                native.update(produced)
            else:
                self._run_reference(step, values)
        return self._collect(values, feeds, native)

    def run_profiled(self, feeds: Mapping[str, np.ndarray], threads: int = 0) -> ProfiledProgramRun:
        """Run and time: each GPU segment as a whole (upload, kernels, download; the GPU runs
        its steps asynchronously, so per-step host times would mislead), each reference step
        on its own."""
        start = time.perf_counter_ns()
        values: dict[str, Any] = dict(feeds)
        native: set[str] = set()
        timings: list[NodeTiming] = []
        for i, step in enumerate(self.steps):
            t0 = time.perf_counter_ns()
            if isinstance(step, NativeSegment):
                produced = self._run_segment(i, step, values, threads)
                values.update(produced)
                native.update(produced)
                label = f"cuda[{step.nodes[0].label}..{step.nodes[-1].label}]"
                timings.append(NodeTiming(label, "CudaSegment", time.perf_counter_ns() - t0, True))
            else:
                self._run_reference(step, values)
                node = step.node
                timings.append(
                    NodeTiming(node.label, node.op_type, time.perf_counter_ns() - t0, False)
                )
        return ProfiledProgramRun(
            self._collect(values, feeds, native), timings, time.perf_counter_ns() - start
        )
