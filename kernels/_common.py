"""What the launchers share: argument checks that raise ``phi_engine.errors``."""

from __future__ import annotations

from typing import Any

from phi_engine.errors import InvalidRequestError

FLOAT_DTYPES = ("float32", "float16", "bfloat16")


def dtype_name(t: Any) -> str:
    return str(t.dtype).removeprefix("torch.")


def check_float(op: str, name: str, t: Any) -> None:
    if dtype_name(t) not in FLOAT_DTYPES:
        raise InvalidRequestError(
            f"[{op}] {name} must be float32, float16 or bfloat16, not {dtype_name(t)}", field=name
        )


def check_same_device(op: str, *tensors: Any) -> None:
    devices = {str(t.device) for t in tensors if t is not None}
    if len(devices) > 1:
        raise InvalidRequestError(
            f"[{op}] tensors are on different devices: {', '.join(sorted(devices))}",
            field="device",
        )


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def row_warps(block: int, itemsize: int) -> int:
    """Warps for a kernel that holds one row of ``block`` elements per program: 32 bytes of the
    row per thread, 4 to 16 warps.

    Measured on an H200 (``bench_triton.py --sweep rows``, RESULTS.md): at 4096 columns float32
    reached 96-97 % of the copy floor with 8-16 warps and float16 93-94 % with 8 (77-79 % with
    16); at 384 columns 4 warps beat 8, 16 and 32 in both dtypes. Fewer than 4 was not tried.
    """
    return min(16, max(4, int(block) * int(itemsize) // 1024))


def row_config(n_cols: int, itemsize: int) -> tuple[int, int, int]:
    """(BLOCK, ROWS, warps) for the row kernels (softmax, layer norm): ``BLOCK`` is ``n_cols``
    rounded up to a power of two; a row of 2 KiB or more goes one per program with
    :func:`row_warps`, and shorter rows are packed as many to a program (up to 16) as make 2 KiB,
    in 2 warps per KiB of the program's tile (at least 2).

    Measured on an H200 (``bench_triton.py --sweep rows``, RESULTS.md, "Accelerators on an NVIDIA
    H200"): one 384-column float16 row per program in 4 warps reached 50-51 % of the copy floor
    (each thread a single 8-byte load); two rows in 2 warps 84-93 %, four rows in 4 warps 78-81 %;
    at 384 columns float32 one row in 2 warps 92-96 % against 82-86 % in 4; at 128 columns 2 KiB
    tiles were the best or within 2 points of it.
    """
    block = next_pow2(n_cols)
    row_bytes = block * int(itemsize)
    if row_bytes >= 4096:
        return block, 1, row_warps(block, itemsize)
    rows = min(16, max(1, 2048 // row_bytes))
    return block, rows, max(2, rows * row_bytes // 1024)


def gemm_config(dtype: str, m: int, n: int) -> tuple[tuple[int, int, int], int, int]:
    """((BLOCK_M, BLOCK_N, BLOCK_K), warps, stages) for a product of ``m × n`` outputs.

    16-bit operands on large outputs take 128 × 256 tiles over 64-deep slices in 8 warps and 3
    stages (144 KiB of shared memory); everything else keeps 64 × 64 × 32 in 4 warps, which fits
    float32 operands on every GPU. On an H200 at 4096³ + bias + GELU (``benchmarks/gpu/
    bench_triton.py --sweep gemm``, RESULTS.md) that tile was the fastest of seven: float16 563
    TFLOP/s and bfloat16 571, against PyTorch's 520 and 534; for float32 the small tile was
    fastest (41 against PyTorch's 49), and no tile came near cuBLAS in TF32 (82 against 318).
    """
    if dtype in ("float16", "bfloat16") and m >= 128 and n >= 256:
        return (128, 256, 64), 8, 3
    return (64, 64, 32), 4, 3


def check_precision(op: str, precision: str) -> str:
    if precision not in ("ieee", "tf32"):
        raise InvalidRequestError(
            f"[{op}] precision must be 'ieee' or 'tf32', not {precision!r}", field="precision"
        )
    return precision
