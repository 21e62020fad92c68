"""The one importer of the compiled core (``phi_engine._core``).

It loads the OpenBLAS library the core was linked against (from the ``scipy_openblas32``
package) before importing the extension, so the loader finds it wherever pip put it, and reports
what was built: ``HAS_NATIVE`` and ``HAS_CUDA``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
from types import ModuleType
from typing import Any

from phi_engine.errors import PhiEngineError

__all__ = ["HAS_CUDA", "HAS_NATIVE", "core", "cuda", "require_core"]


def _preload_openblas() -> None:
    # The core calls this OpenBLAS single-threaded from its own pool. OpenBLAS reads its thread
    # count once, when the library loads, and with more than one starts a pthread pool that spins
    # a core for about 0.1 s right away; so the setting must be in place before the library
    # loads, and `import scipy_openblas32` loads it. numpy is imported first so that its own
    # OpenBLAS (a separate library) never sees the setting.
    import numpy  # noqa: F401

    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        try:
            import scipy_openblas32
        except ImportError:
            return  # the extension's own rpath may still find it; import will say if not
        name = f"lib{scipy_openblas32.get_library()}.so"
        lib = os.path.join(scipy_openblas32.get_lib_dir(), name)
        if os.path.exists(lib):
            # On failure, importing the core fails and says why.
            with contextlib.suppress(OSError):
                ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    finally:
        if saved is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = saved


def _load(name: str) -> tuple[Any, BaseException | None]:
    try:
        return importlib.import_module(name), None
    except ImportError as exc:  # a source checkout without a build, or a broken install
        return None, exc


_preload_openblas()
core: Any
core, _import_error = _load("phi_engine._core")
cuda: ModuleType | None
cuda, _ = _load("phi_engine._core_cuda")

HAS_NATIVE: bool = core is not None
HAS_CUDA: bool = cuda is not None


def require_core() -> Any:
    """Return the compiled core module.

    Raises:
        PhiEngineError: the extension was not built or cannot be loaded (the message says why
            and how to build it).
    """
    if core is None:
        raise PhiEngineError(
            "phi_engine's native core (phi_engine._core) is not available: "
            f"{_import_error}. Install the package with `pip install .` so the extension is built."
        )
    return core
