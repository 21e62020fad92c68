"""phi_engine: run AI models in production, in process or behind an embedded HTTP server.

The native core (kernels, thread pool, plan executor) is ``phi_engine._core``; this package is the
Python face. Submodules load on first use so that ``import phi_engine`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from phi_engine import errors
from phi_engine._version import __version__

if TYPE_CHECKING:
    from phi_engine import graph, observability, ops, registry, serving
    from phi_engine._system import devices, get_num_threads, set_num_threads
    from phi_engine.engine import Engine, InferenceResult
    from phi_engine.graph import CompiledModel, compile

__all__ = [
    "CompiledModel",
    "Engine",
    "InferenceResult",
    "__version__",
    "compile",
    "devices",
    "errors",
    "get_num_threads",
    "graph",
    "observability",
    "ops",
    "registry",
    "serving",
    "set_num_threads",
]

_LAZY = {
    "compile": ("phi_engine.graph", "compile"),
    "CompiledModel": ("phi_engine.graph", "CompiledModel"),
    "Engine": ("phi_engine.engine", "Engine"),
    "InferenceResult": ("phi_engine.engine", "InferenceResult"),
    "graph": ("phi_engine.graph", None),
    "observability": ("phi_engine.observability", None),
    "registry": ("phi_engine.registry", None),
    "ops": ("phi_engine.ops", None),
    "serving": ("phi_engine.serving", None),
    "devices": ("phi_engine._system", "devices"),
    "get_num_threads": ("phi_engine._system", "get_num_threads"),
    "set_num_threads": ("phi_engine._system", "set_num_threads"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'phi_engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
