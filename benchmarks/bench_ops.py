"""Memory-bound ops and convolution of the native core vs numpy (and PyTorch when installed).

Run:  python benchmarks/bench_ops.py [--threads 1 2] [--write]

Bandwidth-bound kernels (softmax, layer norm, add + GELU, a ResNet stem's max pool, a
transpose) are reported in GB/s next to a plain copy of the same bytes measured in
the same run (the ceiling they chase). Convolution is compared with torch.nn.functional.conv2d
at the same thread count when torch is importable.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import math
import pathlib
from collections.abc import Callable

import numpy as np
from threadpoolctl import threadpool_limits

from _harness import interleaved_medians, machine, markdown_table
from phi_engine import ops
from phi_engine._native import core
from phi_engine.runtime import reference as ref


def softmax_numpy(x: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    z = x * scale + mask
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def layer_norm_numpy(x: np.ndarray, res: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    h = x + res
    mu = h.mean(axis=-1, keepdims=True)
    var = ((h - mu) ** 2).mean(axis=-1, keepdims=True)
    return (h - mu) / np.sqrt(var + 1e-5) * g + b


def gelu_tanh_numpy(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))))


def max_pool_numpy(x: np.ndarray) -> np.ndarray:
    """3x3 max pool, stride 2, padding 1 (a ResNet stem's), as nine strided views of a -inf pad."""
    h, w = x.shape[2], x.shape[3]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    oh, ow = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    taps = [(i, j) for i in range(3) for j in range(3)]
    views = [padded[:, :, i : i + 2 * oh : 2, j : j + 2 * ow : 2] for i, j in taps]
    return np.maximum.reduce(views)


def bandwidth_row(
    name: str,
    nbytes: int,
    ours: Callable[[], object],
    numpy: Callable[[], object],
    copy_src: np.ndarray,
) -> list[object]:
    dst = np.empty_like(copy_src)
    t_ours, t_numpy, t_copy = interleaved_medians([ours, numpy, lambda: np.copyto(dst, copy_src)])
    return [
        name,
        f"{t_ours * 1e3:.2f}",
        f"{t_numpy * 1e3:.2f}",
        f"{t_numpy / t_ours:.2f}",
        f"{nbytes / t_ours / 1e9:.1f}",
        f"{2 * copy_src.nbytes / t_copy / 1e9:.1f}",
    ]


def memory_bound_rows(threads: int, rng: np.random.Generator) -> list[list[object]]:
    rows = []
    x = rng.standard_normal((32, 12, 128, 128), dtype=np.float32)
    mask = np.where(rng.random((32, 1, 1, 128)) < 0.1, -1e4, 0.0).astype(np.float32)
    np.testing.assert_allclose(
        ops.softmax(x, mask, scale=0.125), softmax_numpy(x, mask, 0.125), rtol=1e-5, atol=1e-6
    )
    rows.append(
        bandwidth_row(
            "softmax(x/8 + mask) 32×12×128×128",
            2 * x.nbytes,
            lambda: ops.softmax(x, mask, scale=0.125, threads=threads),
            lambda: softmax_numpy(x, mask, 0.125),
            x,
        )
    )
    h = rng.standard_normal((4096, 384), dtype=np.float32)
    r = rng.standard_normal((4096, 384), dtype=np.float32)
    g, b = rng.standard_normal(384, dtype=np.float32), rng.standard_normal(384, dtype=np.float32)
    np.testing.assert_allclose(
        ops.layer_norm(h, g, b, residual=r), layer_norm_numpy(h, r, g, b), rtol=1e-4, atol=1e-4
    )
    rows.append(
        bandwidth_row(
            "layer_norm(x + residual) 4096×384",
            3 * h.nbytes,
            lambda: ops.layer_norm(h, g, b, residual=r, threads=threads),
            lambda: layer_norm_numpy(h, r, g, b),
            h,
        )
    )
    a = rng.standard_normal((4096, 1536), dtype=np.float32)
    bias = rng.standard_normal(1536, dtype=np.float32)
    np.testing.assert_allclose(
        ops.add(a, bias, "gelu_tanh"), gelu_tanh_numpy(a + bias), rtol=1e-5, atol=1e-5
    )
    rows.append(
        bandwidth_row(
            "add + gelu_tanh 4096×1536 + 1536",
            2 * a.nbytes,
            lambda: ops.add(a, bias, "gelu_tanh", threads=threads),
            lambda: gelu_tanh_numpy(a + bias),
            a,
        )
    )
    p = rng.standard_normal((32, 16, 32, 32), dtype=np.float32)
    pooled = ops.max_pool2d(p, 3, strides=2, pads=1)
    np.testing.assert_array_equal(pooled, max_pool_numpy(p))
    rows.append(
        bandwidth_row(
            "max_pool 3×3/2 pad 1 32×16×32×32",
            p.nbytes + pooled.nbytes,
            lambda: ops.max_pool2d(p, 3, strides=2, pads=1, threads=threads),
            lambda: max_pool_numpy(p),
            p,
        )
    )
    t = rng.standard_normal((8, 128, 12, 32), dtype=np.float32)
    rows.append(
        bandwidth_row(
            "transpose 8×128×12×32 → 8×12×128×32",
            2 * t.nbytes,
            lambda: ops.transpose(t, (0, 2, 1, 3), threads=threads),
            lambda: np.ascontiguousarray(t.transpose(0, 2, 1, 3)),
            t,
        )
    )
    return rows


def conv_row(n: int, threads: int, rng: np.random.Generator) -> list[object]:
    x = rng.standard_normal((n, 64, 56, 56), dtype=np.float32)
    w = rng.standard_normal((64, 64, 3, 3), dtype=np.float32) / 24.0
    bias = rng.standard_normal(64, dtype=np.float32)
    flops = 2.0 * n * 64 * 56 * 56 * 64 * 9
    expected = ref.conv2d(x, w, bias, "relu", pads=1)
    ours = ops.conv2d(x, w, bias, "relu", pads=1, threads=threads)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
    fns: list[Callable[[], object]] = [
        lambda: ops.conv2d(x, w, bias, "relu", pads=1, threads=threads)
    ]
    have_torch = importlib.util.find_spec("torch") is not None
    if have_torch:
        import torch

        torch.set_num_threads(threads)
        tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(bias)

        def torch_conv() -> np.ndarray:
            with torch.no_grad():
                out: np.ndarray = torch.relu(
                    torch.nn.functional.conv2d(tx, tw, tb, padding=1)
                ).numpy()
            return out

        np.testing.assert_allclose(torch_conv(), expected, rtol=1e-4, atol=1e-4)
        fns.append(torch_conv)
    times = interleaved_medians(fns)
    row: list[object] = [f"conv3x3+bias+relu N={n}, 64→64, 56×56", f"{flops / times[0] / 1e9:.1f}"]
    if have_torch:
        return [*row, f"{flops / times[1] / 1e9:.1f}", f"{times[1] / times[0]:.2f}"]
    return [*row, "(torch not installed)", "—"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--write", action="store_true", help="append the tables to benchmarks/RESULTS.md"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    out = [f"### bench_ops — {datetime.date.today()} — {machine()}", ""]
    for threads in args.threads:
        with threadpool_limits(threads):
            peak = core.measure_fma_peak(threads, 0.3)
            mem = memory_bound_rows(threads, rng)
            conv = [conv_row(n, threads, rng) for n in (1, 8)]
        header = ["op", "phi ms", "numpy ms", "phi / numpy", "phi GB/s", "copy GB/s (same run)"]
        out += [
            f"**{threads} thread(s)** (numpy: unfused expressions)",
            "",
            markdown_table(header, mem),
            "",
        ]
        header = ["conv", "phi GFLOP/s", "torch GFLOP/s", "phi / torch"]
        out += [f"FMA peak {peak:.0f} GFLOP/s", "", markdown_table(header, conv), ""]
    text = "\n".join(out)
    print(text)
    if args.write:
        path = pathlib.Path(__file__).with_name("RESULTS.md")
        with path.open("a") as f:
            threads = " ".join(map(str, args.threads))
            f.write(f"\nCommand: `python benchmarks/bench_ops.py --threads {threads}`\n\n{text}\n")


if __name__ == "__main__":
    main()
