"""Batch latency tables measured on a real model, for the scheduler's simulator.

The simulator draws each batch's latency from samples measured on a real model, so its results
are only as real as the table. ``measure_table`` times any batch callable; ``measure_minilm_table``
times all-MiniLM-L6-v2 compiled with phi_engine; ``save_table``/``load_table`` keep a table as
JSON so it is measured once and reused (``minilm_table.json`` beside this file).

Run:  python benchmarks/scheduling/latency_tables.py [--seq 32] [--threads 2] [--repeats 30]
(re)measures MiniLM and writes ``minilm_table.json``.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MINILM_TABLE = HERE / "minilm_table.json"
DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32)


@dataclass
class LatencyTable:
    """Measured batch latencies: ascending batch costs and, for each, its samples in seconds."""

    cost: list[float]
    seconds: list[list[float]]
    meta: dict[str, Any] = field(default_factory=dict)

    def median(self, cost: float) -> float:
        """Median latency at ``cost``, linear in cost between measured costs (and beyond the last,
        proportional to cost, as the simulator extrapolates)."""
        medians = [float(np.median(s)) for s in self.seconds]
        if cost > self.cost[-1]:
            return medians[-1] * cost / self.cost[-1]
        return float(np.interp(cost, self.cost, medians))


def measure_table(
    run_batch: Callable[[int], object],
    batch_sizes: Sequence[int],
    repeats: int,
    warmup: int = 3,
) -> tuple[list[float], list[list[float]]]:
    """Time ``run_batch(size)`` for each batch size.

    Every size is warmed up first (plans built, caches and thread pool hot); the timed runs then
    go in rounds of one run per size, so machine drift over the measurement hits every size alike
    instead of biasing the sizes measured last.

    Args:
        run_batch: Runs one batch of the given size.
        batch_sizes: Ascending, distinct, positive batch sizes.
        repeats: Timed runs per size.
        warmup: Untimed runs per size before timing.

    Returns:
        ``(table_cost, table_seconds)`` as ``simulate`` takes them.
    """
    sizes = [int(b) for b in batch_sizes]
    if not sizes or any(b <= 0 for b in sizes) or sizes != sorted(set(sizes)):
        raise ValueError(f"batch sizes must be positive and ascending, got {sizes}")
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    for b in sizes:
        for _ in range(warmup):
            run_batch(b)
    seconds: list[list[float]] = [[] for _ in sizes]
    for _ in range(repeats):
        for i, b in enumerate(sizes):
            t0 = time.perf_counter()
            run_batch(b)
            seconds[i].append(time.perf_counter() - t0)
    return [float(b) for b in sizes], seconds


def save_table(path: pathlib.Path | str, table: LatencyTable) -> None:
    """Write ``table`` as JSON atomically (a temporary file in the same folder, then a rename), so
    a reader never sees half a table."""
    path = pathlib.Path(path)
    # One line per batch cost keeps the file short and its diffs readable; samples are rounded
    # to 0.1 µs, far below the timer's noise.
    rows = ",\n  ".join(json.dumps([round(s, 7) for s in row]) for row in table.seconds)
    text = (
        "{\n"
        f' "meta": {json.dumps(table.meta, sort_keys=True)},\n'
        f' "cost": {json.dumps(table.cost)},\n'
        f' "seconds": [\n  {rows}\n ]\n'
        "}\n"
    )
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a table is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def load_table(path: pathlib.Path | str) -> LatencyTable:
    """Read a table written by :func:`save_table`, checking its shape."""
    data = json.loads(pathlib.Path(path).read_text())
    cost = [float(c) for c in data["cost"]]
    seconds = [[float(s) for s in row] for row in data["seconds"]]
    if not cost or len(cost) != len(seconds) or any(not row for row in seconds):
        raise ValueError(f"{path}: the table is empty or ragged")
    if any(b <= a for a, b in itertools.pairwise(cost)):
        raise ValueError(f"{path}: costs must be ascending")
    return LatencyTable(cost, seconds, dict(data.get("meta", {})))


def measure_minilm_table(
    seq: int = 32,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    repeats: int = 30,
    threads: int = 2,
) -> LatencyTable:
    """Time all-MiniLM-L6-v2 compiled with phi_engine at each batch size.

    The model is exported from PyTorch the way the tests do (tests/phi_test_models/minilm.py,
    cached under build/test-models/); every row is ``seq`` real tokens (no padding), so cost is
    proportional to rows.

    Args:
        seq: Sequence length in tokens.
        batch_sizes: Ascending batch sizes (rows) to time.
        repeats: Timed runs per batch size, after a warm-up.
        threads: phi_engine threads per kernel.

    Returns:
        The table, with what was measured in ``meta``.
    """
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import phi_engine
    from _harness import machine
    from phi_test_models import minilm

    phi_engine.set_num_threads(threads)
    cm = phi_engine.compile(minilm.export(), max_batch=max(batch_sizes))
    rng = np.random.default_rng(0)
    top = max(batch_sizes)
    ids = rng.integers(1000, 30000, size=(top, seq), dtype=np.int64)
    full = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }
    # Feed only what the compiled model takes (token_type_ids is optional in some exports).
    names = list(cm.inputs)

    def run_batch(b: int) -> object:
        return cm.run({n: full[n][:b] for n in names})

    cost, seconds = measure_table(run_batch, batch_sizes, repeats)
    meta = {
        "model": "all-MiniLM-L6-v2 (phi_engine, ONNX opset 17)",
        "sequence": seq,
        "threads": threads,
        "repeats": repeats,
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "cost_unit": "rows (sequences) per batch",
    }
    return LatencyTable(cost, seconds, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES))
    parser.add_argument("--out", type=pathlib.Path, default=MINILM_TABLE)
    args = parser.parse_args()
    table = measure_minilm_table(args.seq, args.batch_sizes, args.repeats, args.threads)
    save_table(args.out, table)
    for c, s in zip(table.cost, table.seconds, strict=True):
        print(f"batch {c:4.0f}: median {np.median(s) * 1e3:7.2f} ms, max {np.max(s) * 1e3:7.2f} ms")
    print(f"wrote {args.out.name}")


if __name__ == "__main__":
    main()
