"""Timing helpers shared by the benchmarks: interleaved runs, medians, machine description."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence

import numpy as np


def machine() -> str:
    """One line naming the CPU and core count, for RESULTS.md rows."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs"


def interleaved_medians(
    fns: Sequence[Callable[[], object]], min_time: float = 0.3, min_runs: int = 7
) -> list[float]:
    """Median seconds of each function, timed in alternation so drift hits all of them alike.

    Each function runs once untimed (warm-up), then rounds of one call each repeat until every
    function has at least ``min_runs`` samples and ``min_time`` seconds have passed.
    """
    for fn in fns:
        fn()
    samples: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while len(samples[0]) < min_runs or time.perf_counter() - start < min_time:
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            samples[i].append(time.perf_counter() - t0)
    return [float(np.median(s)) for s in samples]


def alternating_block_medians(
    fns: Sequence[Callable[[], object]],
    block: int = 5,
    min_time: float = 0.3,
    min_rounds: int = 3,
    settle: float = 0.0,
    warmup: int = 1,
) -> list[float]:
    """Median seconds of each function, timed in alternating blocks of ``block`` calls.

    Engines with their own spinning thread pools (ONNX Runtime, PyTorch's OpenMP, ours) keep
    their workers busy for a while after each call; timed call by call in alternation, each
    engine's multi-threaded run meets the other's spinning workers on its cores. A block starts
    with one untimed call, so the previous engine's threads have gone quiet before timing, and
    blocks alternate so drift still hits every engine alike. ``settle`` seconds of sleep before
    each block let spinning that outlasts one call (OpenBLAS's workers spin for about 0.1 s after
    their last task) die down first; ``warmup`` untimed calls then start each block.
    """
    samples: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or time.perf_counter() - start < min_time:
        for i, fn in enumerate(fns):
            if settle:
                time.sleep(settle)
            for _ in range(warmup):
                fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                samples[i].append(time.perf_counter() - t0)
        rounds += 1
    return [float(np.median(s)) for s in samples]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
