"""GEMM and fused-layer throughput of the native core vs numpy, at the same thread count.

Run:  python benchmarks/bench_kernels.py [--threads 1 2] [--skinny] [--write]

It measures the machine's float32 FMA peak with a native loop, checks every kernel result against
numpy first, then times phi_engine and numpy and prints markdown tables per thread count. Every
product is timed twice for phi_engine: with the weights as a numpy array (``ops.gemm(a, b)``) and
packed once (``ops.pack_weights``, as a compiled model holds its weights; skinny products also
with the weights packed as bfloat16). Each library is timed in its own blocks of calls, rounds
alternating (``block_medians``), so that numpy's spinning BLAS workers have gone quiet before our
two-thread calls; the alternation table times calls alternating one by one, which is what that
interference costs. The skinny rows also give the rate at which B was read, since one row reads
all of B for 2 FLOPs a weight and runs at memory speed. ``--skinny`` times only those.
``--write`` appends the tables to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import math
import pathlib
import time
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from _harness import alternating_block_medians, interleaved_medians, machine, markdown_table
from phi_engine import ops
from phi_engine._native import core
from phi_engine.runtime import reference as ref

SQUARE = [64, 128, 256, 512, 1024, 2048]
# The products of all-MiniLM-L6-v2 at batch 32 x sequence 128 (QKV, attention output, FFN).
LARGE = [(4096, 384, 1152), (4096, 384, 384), (4096, 384, 1536), (4096, 1536, 384)]
SKINNY = [
    (1, 384, 1536),
    (8, 384, 1536),
    (32, 384, 1536),
    (32, 1536, 384),
    (128, 384, 384),
    (1, 1024, 4096),  # 16 MiB of float32 weights: past the caches, where bfloat16's half counts
]


def gelu_tanh_numpy(x: np.ndarray) -> np.ndarray:
    """GELU (tanh form) the way a numpy user writes it: one temporary per operation (the cube as
    products: numpy's float32 `x**3` goes through a slow generic power)."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))))


def block_medians(fns: list[Callable[[], object]], threads: int) -> list[float]:
    """Median seconds of each function, each timed in its own blocks of calls: rounds alternate
    the functions, and on two threads each block starts after a pause (numpy's OpenBLAS workers
    spin for about 0.1 s after a call, and our second thread would meet them on its core: the
    alternation table measures that cost) and two untimed calls, then times enough calls to span
    about 30 ms. Timed call by call instead, or in blocks of three right after the pause, the
    two-thread figures measured those neighbours and the wake-up of an idle vCPU more than the
    product (2-thread 512³: 101–149 GFLOP/s that way, 214 in 20-call blocks)."""
    slowest = 0.0
    for fn in fns:
        t0 = time.perf_counter()
        fn()
        slowest = max(slowest, time.perf_counter() - t0)
    block = int(np.clip(0.03 / max(slowest, 1e-6), 3, 20))
    return alternating_block_medians(
        fns,
        block=block,
        min_time=1.0,
        min_rounds=6,
        settle=0.2 if threads > 1 else 0.0,
        warmup=2,
    )


def bench_gemm(
    m: int, k: int, n: int, threads: int, peak: float, rng: np.random.Generator
) -> list[object]:
    """A product with B as given per call, with B packed once (as a compiled model holds its
    weights), and numpy's (see block_medians for the timing)."""
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    packed = ops.pack_weights(b)
    expected = ref.gemm(a, b)
    for out in (ops.gemm(a, b, threads=threads), ops.gemm(a, packed, threads=threads)):
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-3 * math.sqrt(k))
    ours, ours_packed, numpy = block_medians(
        [
            lambda: ops.gemm(a, b, threads=threads),
            lambda: ops.gemm(a, packed, threads=threads),
            lambda: a @ b,
        ],
        threads,
    )
    flops = 2.0 * m * n * k
    return [
        f"{m}x{k}x{n}",
        f"{flops / ours / 1e9:.1f}",
        f"{flops / ours_packed / 1e9:.1f}",
        f"{flops / numpy / 1e9:.1f}",
        f"{flops / ours / 1e9 / peak:.0%}",
        f"{flops / ours_packed / 1e9 / peak:.0%}",
        f"{numpy / ours:.2f}",
        f"{numpy / ours_packed:.2f}",
    ]


def bench_skinny(
    m: int, k: int, n: int, threads: int, peak: float, rng: np.random.Generator
) -> list[object]:
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    packed = ops.pack_weights(b)
    packed16 = ops.pack_weights(b, dtype="bfloat16")
    expected = ref.gemm(a, b)
    for out in (ops.gemm(a, b, threads=threads), ops.gemm(a, packed, threads=threads)):
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-3 * math.sqrt(k))
    # bfloat16 weights: within their rounding (2^-9 relative per weight) of the float32 result.
    np.testing.assert_allclose(
        ops.gemm(a, packed16, threads=threads), expected, rtol=0.02, atol=0.02 * math.sqrt(k)
    )
    fns = [
        lambda: ops.gemm(a, b, threads=threads),
        lambda: ops.gemm(a, packed, threads=threads),
        lambda: a @ b,
        lambda: ops.gemm(a, packed16, threads=threads),
    ]
    ours, ours_packed, numpy, ours_bf16 = block_medians(fns, threads)
    flops = 2.0 * m * n * k
    return [
        f"{m}x{k}x{n}",
        f"{flops / ours / 1e9:.1f}",
        f"{flops / ours_packed / 1e9:.1f}",
        f"{flops / numpy / 1e9:.1f}",
        f"{flops / ours_packed / 1e9 / peak:.0%}",
        f"{4.0 * k * n / ours_packed / 1e9:.1f}",
        f"{numpy / ours:.2f}",
        f"{numpy / ours_packed:.2f}",
        f"{flops / ours_bf16 / 1e9:.1f}",
        f"{numpy / ours_bf16:.2f}",
    ]


def bench_mlp(m: int, k: int, n: int, threads: int, rng: np.random.Generator) -> list[object]:
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((k, n), dtype=np.float32) / math.sqrt(k)
    bias = rng.standard_normal(n, dtype=np.float32)
    packed = ops.pack_weights(w)
    expected = ref.gemm(x, w, bias, "gelu_tanh")
    for out in (
        ops.gemm(x, w, bias, "gelu_tanh", threads=threads),
        ops.gemm(x, packed, bias, "gelu_tanh", threads=threads),
        gelu_tanh_numpy(x @ w + bias),
    ):
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    fns = [
        lambda: ops.gemm(x, w, bias, "gelu_tanh", threads=threads),
        lambda: ops.gemm(x, packed, bias, "gelu_tanh", threads=threads),
        lambda: gelu_tanh_numpy(x @ w + bias),
    ]
    ours, ours_packed, numpy = block_medians(fns, threads)
    return [
        f"linear+bias+gelu {m}x{k}x{n}",
        f"{ours * 1e6:.0f} µs",
        f"{ours_packed * 1e6:.0f} µs",
        f"{numpy * 1e6:.0f} µs",
        f"{numpy / ours:.2f}",
        f"{numpy / ours_packed:.2f}",
    ]


def bench_alternation(size: int, threads: int, rng: np.random.Generator) -> list[object]:
    """Each library alone, then calls alternating: a second BLAS pool spinning beside ours would
    show up as a slowdown of the alternating medians over the lone ones."""
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    (ours_alone,) = interleaved_medians([lambda: ops.gemm(a, b, threads=threads)])
    (numpy_alone,) = interleaved_medians([lambda: a @ b])
    ours_alt, numpy_alt = interleaved_medians(
        [lambda: ops.gemm(a, b, threads=threads), lambda: a @ b]
    )
    return [
        f"{size}³",
        f"{ours_alone * 1e6:.0f} / {ours_alt * 1e6:.0f} µs",
        f"{numpy_alone * 1e6:.0f} / {numpy_alt * 1e6:.0f} µs",
        f"{ours_alone / ours_alt:.2f}",
        f"{numpy_alone / numpy_alt:.2f}",
    ]


SKINNY_HEADER = [
    "skinny GEMM M×K×N",
    "phi GFLOP/s",
    "phi packed GFLOP/s",
    "numpy GFLOP/s",
    "packed % of peak",
    "packed B GB/s",
    "phi / numpy",
    "packed / numpy",
    "packed bf16 GFLOP/s",
    "packed bf16 / numpy",
]
GEMM_HEADER = [
    "GEMM M×K×N",
    "phi GFLOP/s",
    "phi packed GFLOP/s",
    "numpy GFLOP/s",
    "phi % of peak",
    "packed % of peak",
    "phi / numpy",
    "packed / numpy",
]
MLP_HEADER = [
    "fused layer",
    "phi (fused)",
    "phi packed (fused)",
    "numpy (unfused)",
    "speed-up",
    "packed speed-up",
]
ALTERNATION_HEADER = [
    "GEMM",
    "phi alone / alternating",
    "numpy alone / alternating",
    "phi kept",
    "numpy kept",
]


def thread_tables(threads: int, skinny_only: bool, rng: np.random.Generator) -> list[str]:
    """The tables of one thread count, as markdown lines."""
    # numpy's BLAS gets the same thread count as ours (ours ignores threadpoolctl: its BLAS
    # always runs single-threaded inside the core's own pool).
    with threadpool_limits(threads):
        time.sleep(0.3)  # the previous table's BLAS workers stop spinning
        peak = core.measure_fma_peak(threads, 0.5)
        rows = [] if skinny_only else [bench_gemm(s, s, s, threads, peak, rng) for s in SQUARE]
        rows += [] if skinny_only else [bench_gemm(*shape, threads, peak, rng) for shape in LARGE]
        skinny = [bench_skinny(m, k, n, threads, peak, rng) for m, k, n in SKINNY]
        mlp = [bench_mlp(m, 384, 1536, threads, rng) for m in (1, 8, 32)]
        alternation = (
            [] if skinny_only else [bench_alternation(s, threads, rng) for s in (256, 1024)]
        )
    out = [f"**{threads} thread(s)** — measured FMA peak {peak:.1f} GFLOP/s", ""]
    if rows:
        out += [markdown_table(GEMM_HEADER, rows), ""]
    out += [markdown_table(SKINNY_HEADER, skinny), ""]
    out += [markdown_table(MLP_HEADER, mlp), ""]
    if alternation:
        out += [markdown_table(ALTERNATION_HEADER, alternation), ""]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--skinny", action="store_true", help="only the skinny products and the fused layer"
    )
    parser.add_argument(
        "--write", action="store_true", help="append the tables to benchmarks/RESULTS.md"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    out = [
        f"### bench_kernels — {datetime.date.today()} — {machine()}",
        "",
        f"BLAS: {core.blas_info()}",
        "",
    ]
    for threads in args.threads:
        out += thread_tables(threads, args.skinny, rng)
    text = "\n".join(out)
    print(text)
    if args.write:
        path = pathlib.Path(__file__).with_name("RESULTS.md")
        with path.open("a") as f:
            command = "python benchmarks/bench_kernels.py --threads " + " ".join(
                map(str, args.threads)
            )
            command += " --skinny" if args.skinny else ""
            f.write(f"\nCommand: `{command}`\n\n")
            f.write(text + "\n")


if __name__ == "__main__":
    main()
