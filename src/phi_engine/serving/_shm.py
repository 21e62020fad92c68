"""Shared-memory regions that carry tensors between the engine and its worker processes.

The engine (the parent) creates, grows and unlinks every segment, so a worker that is killed can
leak none: its mappings vanish with it. A worker only attaches to the names it is sent. Only
:class:`TensorSpec` records (name, offset, shape, dtype) travel over the pipe; the bytes stay here.

Segments are named ``phiw<parent pid>_<random>`` so that the segments of one engine can be found
under ``/dev/shm``.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
from collections.abc import Iterable, Sequence
from multiprocessing.shared_memory import SharedMemory
from typing import NamedTuple

import numpy as np

__all__ = ["SEGMENT_PREFIX", "Attachment", "Region", "TensorSpec", "layout"]

SEGMENT_PREFIX = "phiw"
_ALIGN = 64  # a cache line: every tensor starts on one, which SIMD kernels like
_INITIAL_BYTES = 1 << 16


class TensorSpec(NamedTuple):
    """Where one tensor lies in a region: all a pipe message needs to describe it."""

    name: str
    offset: int
    shape: tuple[int, ...]
    dtype: str

    def view(self, buffer: memoryview) -> np.ndarray:
        """The tensor as an array over ``buffer`` (no copy; it pins the mapping while alive)."""
        return np.ndarray(self.shape, np.dtype(self.dtype), buffer=buffer, offset=self.offset)


def _aligned(n: int, to: int = _ALIGN) -> int:
    return -(-n // to) * to


def layout(
    tensors: Iterable[tuple[str, Sequence[int], np.dtype[np.generic]]], start: int = 0
) -> tuple[list[TensorSpec], int]:
    """Place tensors one after another, each aligned, from ``start``.

    Returns:
        Their specs and the offset where the next free byte starts.
    """
    specs = []
    offset = start
    for name, shape, dtype in tensors:
        offset = _aligned(offset)
        dims = tuple(int(d) for d in shape)
        specs.append(TensorSpec(name, offset, dims, dtype.str))
        offset += int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    return specs, offset


def _create(nbytes: int) -> SharedMemory:
    name = f"{SEGMENT_PREFIX}{os.getpid()}_{secrets.token_hex(6)}"
    return SharedMemory(name=name, create=True, size=_aligned(max(nbytes, 1), mmap.PAGESIZE))


def _buffer(shm: SharedMemory) -> memoryview:
    buf = shm.buf
    assert buf is not None  # only a closed segment has none
    return buf


def _detach(shm: SharedMemory) -> None:
    # An array still viewing the mapping makes close() raise; the mapping then goes with that
    # array, and the name can be unlinked all the same.
    with contextlib.suppress(BufferError):
        shm.close()


class Region:
    """A segment the parent owns, grown by replacing it with a bigger one under a new name."""

    def __init__(self) -> None:
        self._shm: SharedMemory | None = _create(_INITIAL_BYTES)

    def _segment(self) -> SharedMemory:
        if self._shm is None:
            raise RuntimeError("the shared memory region was released")
        return self._shm

    @property
    def name(self) -> str:
        """The segment's current name (it changes when the region grows)."""
        return self._segment().name

    @property
    def size(self) -> int:
        """The segment's current size in bytes."""
        return self._segment().size

    def reserve(self, nbytes: int) -> None:
        """Make the region hold at least ``nbytes``, at least doubling it when it must grow."""
        old = self._segment()
        if nbytes <= old.size:
            return
        self._shm = _create(max(nbytes, 2 * old.size))
        _detach(old)
        old.unlink()

    def write(self, spec: TensorSpec, parts: Sequence[np.ndarray]) -> None:
        """Stack ``parts`` along their first axis straight into the tensor at ``spec``."""
        np.concatenate(parts, out=spec.view(_buffer(self._segment())))

    def read(self, spec: TensorSpec) -> np.ndarray:
        """A copy of the tensor at ``spec``, so the region can be reused at once."""
        return spec.view(_buffer(self._segment())).copy()

    def release(self) -> None:
        """Unmap and unlink the segment; idempotent."""
        shm, self._shm = self._shm, None
        if shm is not None:
            _detach(shm)
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()


class Attachment:
    """A worker's mapping of a region, re-attached whenever the parent names a new segment."""

    def __init__(self) -> None:
        self._shm: SharedMemory | None = None

    def buffer(self, name: str) -> memoryview:
        """The bytes of segment ``name``, attaching to it if it is not the one mapped now."""
        if self._shm is None or self._shm.name != name:
            self.close()
            self._shm = SharedMemory(name=name)
        return _buffer(self._shm)

    def close(self) -> None:
        """Unmap the segment (the parent unlinks it)."""
        shm, self._shm = self._shm, None
        if shm is not None:
            _detach(shm)
