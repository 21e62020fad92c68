"""Time phi_engine's CUDA kernels against the ceilings measured on the same device.

Two ceilings are measured first: copy bandwidth (a large device-to-device cudaMemcpy, counting
bytes read plus bytes written) and the float32 / TF32 matrix rate (cuBLAS on 8192^3). Each kernel
then gets a floor, max(FLOPs / rate, bytes / bandwidth) with every input read once and every
output written once, and the table reports its median time against that floor. Inputs are
random (never zeros) and several times larger than L2; each result is spot-checked against the
numpy reference before it is reported.

Usage: python benchmarks/gpu/bench_cuda.py [--quick] [--out DIR]   (DIR defaults to $OUT)
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from phi_engine import _native
from phi_engine.runtime import reference as ref

GIB = 1 << 30


@dataclass
class Row:
    kernel: str
    shape: str
    ms: float
    spread: float  # (max - min) / median over the timed batches
    flops: float
    bytes: float
    floor_ms: float
    bound: str  # "memory" or "compute": which term sets the floor
    check: str  # relative error of the spot check, or why it failed


@dataclass
class Ceilings:
    copy_gbs: float
    fp32_tflops: float
    tf32_tflops: float


def time_ms(cu: Any, fn: Callable[[], None], batch: int, trials: int) -> tuple[float, float]:
    """Median milliseconds per call of `fn`, and the spread of the batches.

    Each batch is queued back to back between two events, after one primer call that keeps the
    GPU busy while the start event is recorded, so host launch gaps stay out of the numbers.
    """
    fn()  # warm-up: module load, cuBLAS handle and workspace
    cu.synchronize()
    samples = []
    for _ in range(trials):
        fn()
        start, end = cu.Event(), cu.Event()
        start.record()
        for _ in range(batch):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_ms(end) / batch)
    median = statistics.median(samples)
    return median, (max(samples) - min(samples)) / median


class Bench:
    def __init__(self, cu: Any, scale: int) -> None:
        self.cu = cu
        self.scale = scale  # 1 = full sizes; 4 = a quarter of the elements
        self.rng = np.random.default_rng(20251126)
        # One pool of random floats: every input is a slice of it, so inputs are never zeros and
        # the host copies for the spot checks cost nothing.
        self.pool = self.rng.standard_normal(max(1 << 23, (128 << 20) // scale), dtype=np.float32)
        self.rows: list[Row] = []

    def few(self, n: int) -> int:
        """A count of rows (or elements) at this scale."""
        return max(1, n // self.scale)

    def side(self, n: int) -> int:
        """A matrix side at this scale (matrices shrink in both dimensions)."""
        return max(8, n // math.isqrt(self.scale))

    def upload(self, host: np.ndarray) -> Any:
        buf = self.cu.DeviceBuffer(host.nbytes)
        self.cu.copy_to_device(buf.ptr, np.ascontiguousarray(host))
        return buf

    def random(self, shape: tuple[int, ...], offset: int = 0) -> tuple[Any, np.ndarray]:
        n = math.prod(shape)
        start = offset % (self.pool.size - n + 1)
        host = self.pool[start : start + n].reshape(shape)
        return self.upload(host), host

    def download(self, buf: Any, shape: tuple[int, ...]) -> np.ndarray:
        out = np.empty(shape, np.float32)
        self.cu.copy_to_host(out, buf.ptr)
        return out

    def output(self, shape: tuple[int, ...]) -> Any:
        buf = self.cu.DeviceBuffer(math.prod(shape) * 4)
        self.cu.fill_bytes(buf.ptr, 0xFF, buf.nbytes)  # NaN: an unwritten element fails the check
        return buf

    # ---- ceilings ---------------------------------------------------------------------------

    def ceilings(self) -> Ceilings:
        cu = self.cu
        nbytes = GIB // self.scale
        src, dst = cu.DeviceBuffer(nbytes), cu.DeviceBuffer(nbytes)
        cu.fill_bytes(src.ptr, 0x5A, nbytes)  # a copy's speed does not depend on the bytes
        copy = functools.partial(cu.copy_device, dst.ptr, src.ptr, nbytes)
        ms, _ = time_ms(cu, copy, batch=10, trials=5)
        copy_gbs = 2 * nbytes / ms / 1e6
        del copy, src, dst
        fp32 = tf32 = math.nan
        if cu.has_cublas:
            n = self.side(8192)
            (a, _), (b, _) = self.random((n, n)), self.random((n, n), n * n)
            c = cu.DeviceBuffer(n * n * 4)
            flops = 2.0 * n**3
            for tf in (False, True):

                def run(tf: bool = tf) -> None:
                    cu.gemm(a.ptr, b.ptr, c.ptr, n, n, n, tf32=tf)

                ms, _ = time_ms(cu, run, batch=3 if not tf else 10, trials=3)
                if tf:
                    tf32 = flops / ms / 1e9
                else:
                    fp32 = flops / ms / 1e9
        return Ceilings(copy_gbs, fp32, tf32)

    # ---- one measured case ------------------------------------------------------------------

    def record(
        self,
        ceil: Ceilings,
        kernel: str,
        shape: str,
        fn: Callable[[], None],
        *,
        nbytes: float,
        flops: float = 0.0,
        tf32: bool = False,
        check: Callable[[], float],
        tolerance: float,
        batch: int = 20,
    ) -> None:
        fn()
        error = check()
        verdict = f"{error:.1e}" if error <= tolerance else f"FAIL {error:.1e} > {tolerance:.0e}"
        ms, spread = time_ms(self.cu, fn, batch=batch, trials=5)
        rate = ceil.tf32_tflops if tf32 else ceil.fp32_tflops
        t_mem = nbytes / (ceil.copy_gbs * 1e6)
        t_flop = flops / (rate * 1e9) if flops and math.isfinite(rate) else 0.0
        floor_ms, bound = (t_flop, "compute") if t_flop > t_mem else (t_mem, "memory")
        self.rows.append(Row(kernel, shape, ms, spread, flops, nbytes, floor_ms, bound, verdict))
        pct = floor_ms / ms
        print(
            f"  {kernel:<16} {shape:<32} {ms:9.3f} ms {pct:6.1%} of floor  check {verdict}",
            flush=True,
        )


def rel_error(actual: np.ndarray, expected: np.ndarray) -> float:
    e64 = np.asarray(expected, np.float64)
    diff = np.asarray(actual, np.float64) - e64
    if not np.isfinite(diff).all():
        return math.inf
    return float(np.linalg.norm(diff) / max(float(np.linalg.norm(e64)), 1e-30))


def sample_rows(n: int) -> list[int]:
    return sorted({0, 1, n // 3, n // 2, n - 1})


def bench_epilogue(b: Bench, ceil: Ceilings) -> None:
    cu = b.cu
    n = b.side(8192)
    (c, c_h), (res, res_h) = b.random((n, n)), b.random((n, n), 7)
    bias_h = b.pool[:n].copy()
    bias = b.upload(bias_h)

    def run() -> None:
        cu.gemm_epilogue(c.ptr, n, n, bias=bias.ptr, residual=res.ptr, activation="gelu")

    def check() -> float:
        # In place, so this holds only after the first call (record() checks right after it).
        rows = sample_rows(n)
        expected = ref.apply_activation(c_h[rows] + bias_h + res_h[rows], "gelu")
        return rel_error(b.download(c, (n, n))[rows], expected)

    b.record(
        ceil,
        "gemm_epilogue",
        f"{n}x{n} +bias+res gelu",
        run,
        nbytes=3.0 * n * n * 4,
        check=check,
        tolerance=1e-6,
    )


def bench_gemm(b: Bench, ceil: Ceilings) -> None:
    cu = b.cu
    if not cu.has_cublas:
        print("  (this build has no cuBLAS: GEMM rows skipped)")
        return
    n = b.side(8192)
    for m, k, nn, tf in (
        (n, n, n, False),
        (b.few(16384), 1024, b.side(4096), False),
        (n, n, n, True),
    ):
        (a, a_h), (w, w_h) = b.random((m, k)), b.random((k, nn), m * k)
        bias_h = b.pool[:nn].copy()
        bias, out = b.upload(bias_h), b.output((m, nn))

        def run(
            a: Any = a,
            w: Any = w,
            out: Any = out,
            m: int = m,
            k: int = k,
            nn: int = nn,
            tf: bool = tf,
            bias: Any = bias,
        ) -> None:
            cu.gemm(a.ptr, w.ptr, out.ptr, m, nn, k, bias=bias.ptr, activation="gelu", tf32=tf)

        def check(
            a_h: np.ndarray = a_h,
            w_h: np.ndarray = w_h,
            out: Any = out,
            m: int = m,
            nn: int = nn,
            bias_h: np.ndarray = bias_h,
        ) -> float:
            rows = sample_rows(m)
            got = b.download(out, (m, nn))[rows]
            return rel_error(got, ref.gemm(a_h[rows], w_h, bias_h, "gelu"))

        b.record(
            ceil,
            "gemm " + ("tf32" if tf else "fp32"),
            f"{m}x{k}x{nn} +bias gelu",
            run,
            nbytes=4.0 * (m * k + k * nn + m * nn),
            flops=2.0 * m * k * nn,
            tf32=tf,
            check=check,
            tolerance=5e-3 if tf else 1e-5,
            batch=3 if m * k * nn > 1e11 else 10,
        )
        del a, w, out, bias


def bench_softmax(b: Bench, ceil: Ceilings) -> None:
    cu = b.cu
    cases = [
        ((b.few(32768), 2048), None, 1.0),
        ((b.few(262144), 256), None, 1.0),
        ((b.few(16), 16, 512, 512), (1, 1, 512, 512), 0.125),
        ((b.few(8192), 8191), None, 1.0),
    ]
    for shape, mask_shape, scale in cases:
        (x, x_h), out = b.random(shape), b.output(shape)
        mask_ptr, mask_h, mask_buf = 0, None, None
        if mask_shape is not None:
            causal = np.triu(np.full(mask_shape[-2:], -np.inf, np.float32), k=1)
            mask_h = np.broadcast_to(causal, mask_shape).copy()
            mask_buf = b.upload(mask_h)
            mask_ptr = mask_buf.ptr

        def run(
            x: Any = x,
            out: Any = out,
            shape: tuple[int, ...] = shape,
            scale: float = scale,
            mask_ptr: int = mask_ptr,
            mask_shape: Any = mask_shape,
        ) -> None:
            cu.softmax(
                x.ptr,
                out.ptr,
                list(shape),
                scale=scale,
                mask=mask_ptr,
                mask_shape=list(mask_shape or ()),
            )

        def check(
            x_h: np.ndarray = x_h,
            out: Any = out,
            shape: tuple[int, ...] = shape,
            scale: float = scale,
            mask_h: Any = mask_h,
        ) -> float:
            got = b.download(out, shape).reshape(-1, shape[-1])
            x2 = x_h.reshape(-1, shape[-1])
            rows = sample_rows(x2.shape[0])
            m2 = (
                None
                if mask_h is None
                else np.broadcast_to(mask_h, shape).reshape(-1, shape[-1])[rows]
            )
            return rel_error(got[rows], ref.softmax(x2[rows], m2, scale=scale))

        label = "x".join(map(str, shape)) + (" causal" if mask_shape else "")
        b.record(ceil, "softmax", label, run, nbytes=2.0 * x_h.nbytes, check=check, tolerance=1e-5)
        del x, out, mask_buf


def bench_layer_norm(b: Bench, ceil: Ceilings) -> None:
    cu = b.cu
    for (rows, cols), with_residual in (
        ((b.few(65536), 1024), True),
        ((b.few(16384), 4096), False),
    ):
        (x, x_h), out = b.random((rows, cols)), b.output((rows, cols))
        (res, res_h) = b.random((rows, cols), 11) if with_residual else (None, None)
        gamma_h, beta_h = b.pool[:cols].copy(), b.pool[cols : 2 * cols].copy()
        gamma, beta = b.upload(gamma_h), b.upload(beta_h)

        def run(
            x: Any = x,
            out: Any = out,
            rows: int = rows,
            cols: int = cols,
            gamma: Any = gamma,
            beta: Any = beta,
            res: Any = res,
        ) -> None:
            cu.layer_norm(
                x.ptr,
                out.ptr,
                rows,
                cols,
                gamma.ptr,
                beta=beta.ptr,
                residual=0 if res is None else res.ptr,
            )

        def check(
            x_h: np.ndarray = x_h,
            res_h: Any = res_h,
            out: Any = out,
            rows: int = rows,
            cols: int = cols,
            gamma_h: np.ndarray = gamma_h,
            beta_h: np.ndarray = beta_h,
        ) -> float:
            r = sample_rows(rows)
            got = b.download(out, (rows, cols))[r]
            return rel_error(
                got,
                ref.layer_norm(
                    x_h[r], gamma_h, beta_h, residual=None if res_h is None else res_h[r]
                ),
            )

        reads = 2 if with_residual else 1
        label = f"{rows}x{cols}" + (" +res" if with_residual else "")
        b.record(
            ceil,
            "layer_norm",
            label,
            run,
            nbytes=(reads + 1.0) * rows * cols * 4,
            check=check,
            tolerance=1e-5,
        )
        del x, out, res, gamma, beta


def bench_elementwise(b: Bench, ceil: Ceilings) -> None:
    cu = b.cu
    rows, cols = b.few(64 * 1024), 1024
    shape = (rows, cols)
    # (op, b's shape, activation): dense (merged to one float4 pass), a bias row, a column.
    for op, sb, act in (
        ("add", shape, "none"),
        ("add", (cols,), "relu"),
        ("mul", (rows, 1), "none"),
    ):
        (a, a_h), (bb, b_h) = b.random(shape), b.random(sb, 5)
        out = b.output(shape)

        def run(
            op: str = op, a: Any = a, bb: Any = bb, out: Any = out, sb: Any = sb, act: str = act
        ) -> None:
            cu.binary(
                op, a.ptr, list(shape), bb.ptr, list(sb), out.ptr, list(shape), activation=act
            )

        def check(
            op: str = op,
            a_h: np.ndarray = a_h,
            b_h: np.ndarray = b_h,
            out: Any = out,
            act: str = act,
        ) -> float:
            r = sample_rows(rows)
            expected = getattr(ref, op)(a_h[r], b_h[r] if b_h.ndim == 2 else b_h, act)
            return rel_error(b.download(out, shape)[r], expected)

        label = f"{rows}x{cols} {op} {'x'.join(map(str, sb))}" + (
            "" if act == "none" else f" {act}"
        )
        nbytes = 4.0 * (2 * rows * cols + math.prod(sb))
        b.record(ceil, f"binary {op}", label, run, nbytes=nbytes, check=check, tolerance=1e-6)
        del a, bb, out
    (x, x_h), out = b.random(shape), b.output(shape)

    def check_gelu() -> float:
        r = sample_rows(rows)
        return rel_error(b.download(out, shape)[r], ref.gelu(x_h[r]))

    b.record(
        ceil,
        "unary gelu",
        f"{rows}x{cols}",
        lambda: cu.unary("gelu", x.ptr, out.ptr, rows * cols),
        nbytes=8.0 * rows * cols,
        check=check_gelu,
        tolerance=1e-5,
    )


def table(rows: list[Row], ceil: Ceilings) -> str:
    lines = [
        "| kernel | shape | time (ms) | achieved | % of floor | bound | check |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        achieved = (
            f"{r.flops / r.ms / 1e9:.1f} TFLOP/s"
            if r.bound == "compute"
            else f"{r.bytes / r.ms / 1e6:.0f} GB/s"
        )
        pct = r.floor_ms / r.ms
        cells = [r.kernel, r.shape, f"{r.ms:.3f}", achieved, f"{pct:.0%}", r.bound, r.check]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Ceilings measured here: copy {ceil.copy_gbs:.0f} GB/s (read + write), cuBLAS fp32 "
        f"{ceil.fp32_tflops:.1f} TFLOP/s, tf32 {ceil.tf32_tflops:.1f} TFLOP/s. "
        "Floor = max(FLOPs / rate, bytes / copy bandwidth); time is the median of 5 batches."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the sizes (small GPUs)")
    parser.add_argument("--scale", type=int, default=1, help="divide the sizes by this power of 2")
    parser.add_argument(
        "--out", default=os.environ.get("OUT"), help="directory for bench_cuda.{json,md}"
    )
    args = parser.parse_args(argv)

    cu = _native.cuda
    if cu is None or cu.device_count() == 0:
        why = "phi_engine._core_cuda is not built" if cu is None else cu.device_status()
        print(f"bench_cuda: no CUDA device to benchmark ({why})", file=sys.stderr)
        return 2
    device = cu.device_list()[0]
    scale = max(args.scale, 4 if args.quick or device["memory_bytes"] < 24 * GIB else 1)
    print(
        f"device: {device['name']} (cc {device['compute_capability']}, "
        f"{device['multiprocessors']} SMs, "
        f"{device['memory_bytes'] / GIB:.0f} GiB, L2 {device['l2_bytes'] / (1 << 20):.0f} MiB); "
        f"module built for sm {cu.architectures}, cuBLAS {'yes' if cu.has_cublas else 'no'}",
        flush=True,
    )
    bench = Bench(cu, scale)
    ceil = bench.ceilings()
    print(
        f"ceilings: copy {ceil.copy_gbs:.0f} GB/s, fp32 {ceil.fp32_tflops:.1f} TFLOP/s, "
        f"tf32 {ceil.tf32_tflops:.1f} TFLOP/s",
        flush=True,
    )
    for part in (bench_elementwise, bench_softmax, bench_layer_norm, bench_epilogue, bench_gemm):
        part(bench, ceil)

    report = table(bench.rows, ceil)
    print()
    print(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_cuda.md").write_text(f"{device['name']}\n\n{report}\n")
        payload = {
            "device": device,
            "ceilings": asdict(ceil),
            "rows": [asdict(r) for r in bench.rows],
        }
        (out / "bench_cuda.json").write_text(json.dumps(payload, indent=2))
    return 1 if any(r.check.startswith("FAIL") for r in bench.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
