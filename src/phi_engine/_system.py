"""What this machine offers phi_engine, and the process-wide thread setting."""

from __future__ import annotations

from typing import Any

from phi_engine import _native
from phi_engine._native import require_core
from phi_engine.errors import InvalidRequestError


def devices(*, xla: bool = True) -> list[dict[str, Any]]:
    """List the devices phi_engine can run on here.

    Args:
        xla: Also ask JAX for its accelerators (importing JAX takes seconds; placement skips it
            unless a TPU is requested).

    Returns:
        One dict per device: ``{"kind": "cpu", "cores", "features", "blas"}`` for the CPU,
        ``{"kind": "cuda", "index", "name", "memory_bytes"}`` for each CUDA device when the CUDA
        module was built and a GPU is present, and ``{"kind": "xla", "index", "platform",
        "name"}`` for each accelerator JAX sees (``tpu`` deployments run there; see
        :mod:`phi_engine.runtime.xla`).
    """
    core = require_core()
    found: list[dict[str, Any]] = [
        {
            "kind": "cpu",
            "cores": core.available_cpus(),
            "features": core.cpu_features(),
            "blas": core.blas_info(),
        }
    ]
    cuda = _native.cuda  # looked up now: tests swap in a stand-in device
    if cuda is not None:
        found.extend({"kind": "cuda", **info} for info in cuda.device_list())
    if xla:
        from phi_engine.runtime.xla import xla_devices

        found.extend(dict(d) for d in xla_devices())
    return found


def get_num_threads() -> int:
    """Threads a kernel call uses when it does not say."""
    return int(require_core().get_num_threads())


def set_num_threads(threads: int) -> None:
    """Set the default threads per kernel call (0 restores: all CPUs this process may use).

    Raises:
        InvalidRequestError: ``threads`` is not a non-negative integer.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise InvalidRequestError("threads must be a non-negative integer", field="threads")
    require_core().set_num_threads(threads)
