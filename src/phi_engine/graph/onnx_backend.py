"""phi_engine as an ONNX backend (``onnx.backend.base.Backend``), for the ONNX conformance tests
and for tools written against that interface::

    from phi_engine.graph.onnx_backend import PhiBackend
    rep = PhiBackend.prepare(model)          # compile()
    outputs = rep.run([x])                   # a tuple in the model's output order
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from onnx.backend.base import Backend, BackendRep

from phi_engine.errors import PhiEngineError
from phi_engine.graph.compiled import CompiledModel, compile
from phi_engine.graph.onnx_import import from_onnx
from phi_engine.graph.passes import check_supported

__all__ = ["PhiBackend", "PhiBackendRep", "PhiXlaBackend", "is_supported", "is_supported_on_xla"]

_UNBOUNDED_BATCH = 1 << 31


class PhiBackendRep(BackendRep):
    """A compiled model behind the BackendRep interface."""

    def __init__(self, model: CompiledModel) -> None:
        self.model = model

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        feeds = dict(inputs) if isinstance(inputs, dict) else list(inputs)
        outputs = self.model.run(feeds)
        return tuple(outputs[name] for name in self.model.graph.outputs)


class PhiBackend(Backend):
    """Compiles with :func:`phi_engine.compile` on the CPU."""

    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", **kwargs: Any) -> PhiBackendRep:
        return PhiBackendRep(compile(model, device="cpu", max_batch=_UNBOUNDED_BATCH))

    @classmethod
    def run_model(
        cls, model: Any, inputs: Sequence[np.ndarray], device: str = "CPU", **kwargs: Any
    ) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper() == "CPU"

    @classmethod
    def is_compatible(cls, model: Any, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device) and is_supported(model)


def is_supported(model: Any) -> bool:
    """Every node of ``model`` (a ModelProto) is an op and op version phi_engine implements."""
    try:
        graph = from_onnx(model)
        check_supported(graph)
    except PhiEngineError:
        return False
    # Sequence- and optional-typed graph inputs have no tensor type: not supported.
    return all(name in graph.types for name in graph.inputs)


class PhiXlaBackend(PhiBackend):
    """The same on the XLA backend (``compile(device="xla")``): a model is compatible when that
    backend compiles it (its ops, attributes and element types)."""

    @classmethod
    def prepare(cls, model: Any, device: str = "CPU", **kwargs: Any) -> PhiBackendRep:
        return PhiBackendRep(compile(model, device="xla", max_batch=_UNBOUNDED_BATCH))

    @classmethod
    def is_compatible(cls, model: Any, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device) and is_supported_on_xla(model)


def is_supported_on_xla(model: Any) -> bool:
    """Whether the XLA backend compiles this ModelProto."""
    if not is_supported(model):
        return False
    try:
        compile(model, device="xla", max_batch=_UNBOUNDED_BATCH)
    except PhiEngineError:
        return False
    return True
