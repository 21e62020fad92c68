"""The backends seam: which device runs which op, chosen per node when a model is lowered.

A backend is a device name plus a table of *lowerings*, one per op it can run: a function that
turns one graph node (with concrete shapes) into that device's executable steps, or declines
(returns None) for the dtypes or attributes it does not handle. The compiler asks the requested
device's backend first and falls back to ``reference`` (the numpy implementation every op has),
so a device that lowers a few ops still runs every model. New devices (CUDA, Triton, XLA) add a
:class:`Backend` and register lowerings; the compiler does not change.

Lowerings are opaque here (``Callable[[ctx], steps | None]``): their context type belongs to
the compiler (``phi_engine.graph.lower.LowerContext`` for ``cpu``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from phi_engine.errors import UnsupportedError

__all__ = ["Backend", "available_devices", "get_backend", "register_lowering"]

Lowering = Callable[[Any], Any]


@dataclass
class Backend:
    """A device and the ops it can run (see the module docstring)."""

    name: str
    description: str
    available: Callable[[], bool]
    lowerings: dict[tuple[str, str], Lowering] = field(default_factory=dict)

    def lowering(self, domain: str, op: str) -> Lowering | None:
        """This backend's lowering of ``domain::op``, or None (the reference runs it)."""
        return self.lowerings.get((domain, op))


def _native_available() -> bool:
    from phi_engine import _native

    return bool(_native.HAS_NATIVE)


def _cuda_available() -> bool:
    from phi_engine import _native

    return bool(_native.HAS_NATIVE) and _native.cuda is not None and _native.cuda.device_count() > 0


def _xla_available() -> bool:
    from phi_engine.runtime.xla import available

    return available()


_BACKENDS: dict[str, Backend] = {
    "cpu": Backend(
        "cpu", "the native C++ core: one plan per run of lowered nodes", _native_available
    ),
    "reference": Backend(
        "reference", "numpy, every op (the oracle and the fallback)", lambda: True
    ),
    "xla": Backend(
        "xla",
        "JAX: the whole graph traced to jax.numpy and compiled by jax.jit for the device JAX "
        "sees (TPU, GPU or CPU); see phi_engine.runtime.xla",
        _xla_available,
    ),
    "cuda": Backend(
        "cuda",
        "phi_engine's CUDA kernels: the cpu backend's steps run on the first GPU, CPU kernels "
        "for the steps they do not cover; see phi_engine.runtime.cuda.plan",
        _cuda_available,
    ),
}


def register_lowering(device: str, domain: str, op: str, fn: Lowering) -> None:
    """Make ``fn`` the lowering of ``domain::op`` on ``device``."""
    get_backend(device).lowerings[(domain, op)] = fn


def get_backend(device: str) -> Backend:
    """The backend called ``device``.

    Raises:
        UnsupportedError: no such backend.
    """
    found = _BACKENDS.get(device)
    if found is None:
        raise UnsupportedError(
            f"[compile] device {device!r} is not supported here; choose one of {sorted(_BACKENDS)}",
            field="device",
        )
    return found


def available_devices() -> list[str]:
    """Backends usable in this process (``cpu`` needs the compiled core)."""
    return [name for name, b in _BACKENDS.items() if b.available()]
