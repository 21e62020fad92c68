"""How much the serving benchmark's model slows at batch 1 when other memory traffic passes
through the cache between runs, as a server's own work does between requests.

    taskset -c 0 python benchmarks/serving/cache_traffic.py [--runs 400] [--repeats 3]

The 256->512->512->10 MLP (1.6 MB of float32 weights) runs one row at a time with numpy (its
BLAS matrix-vector product, what phi_engine's plan also calls for one row). Between runs a
buffer of the given size is written. Two traversals are compared:
    fixed        each layer as one product (and, as a control, in two column halves)
    alternating  each layer in column halves, the order reversed every run, so that the half
                 swept last (most recently cached) is read first; under LRU replacement this
                 would keep about one L2 of weights resident. Outputs are bit-identical.
Prints the median µs per run for each traffic size; quote ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=400)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((256, 512)).astype(np.float32)
    w2 = rng.standard_normal((512, 512)).astype(np.float32)
    w3 = rng.standard_normal((512, 10)).astype(np.float32)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    junk = np.zeros(16 << 20, np.uint8)

    def product(v: np.ndarray, w: np.ndarray, halves: bool, reverse: bool) -> np.ndarray:
        if not halves:
            return v @ w
        n = w.shape[1]
        out = np.empty((1, n), np.float32)
        for lo, hi in [(n // 2, n), (0, n // 2)] if reverse else [(0, n // 2), (n // 2, n)]:
            out[:, lo:hi] = v @ w[:, lo:hi]
        return out

    def model(halves: bool, reverse: bool) -> np.ndarray:
        h = np.maximum(product(x, w1, halves, reverse), 0)
        h = np.maximum(product(h, w2, halves, reverse), 0)
        return h @ w3

    assert np.array_equal(model(True, False), model(True, True))  # the order changes no bits

    def median_us(traffic: int, halves: bool, alternate: bool) -> float:
        times = []
        for i in range(a.runs):
            if traffic:
                start = i * traffic % (8 << 20)
                junk[start : start + traffic] += 1
            t = time.perf_counter()
            model(halves, alternate and i % 2 == 1)
            times.append(time.perf_counter() - t)
        return float(np.median(times) * 1e6)

    configs = {"fixed": (False, False), "fixed halves": (True, False), "alternating": (True, True)}
    print("| traffic between runs | " + " | ".join(f"{c} µs" for c in configs) + " |")
    print("|---|" + "---|" * len(configs))
    for traffic in (0, 256 << 10, 512 << 10, 768 << 10, 1 << 20, 4 << 20):
        got: dict[str, list[float]] = {c: [] for c in configs}
        for _ in range(a.repeats):  # interleaved, so a slow spell hits every column alike
            for name, cfg in configs.items():
                got[name].append(median_us(traffic, *cfg))
        cells = " | ".join(f"{np.median(v):.1f}" for v in got.values())
        print(f"| {traffic >> 10} KiB | {cells} |")


if __name__ == "__main__":
    main()
