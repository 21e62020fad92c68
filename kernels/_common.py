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


def check_precision(op: str, precision: str) -> str:
    if precision not in ("ieee", "tf32"):
        raise InvalidRequestError(
            f"[{op}] precision must be 'ieee' or 'tf32', not {precision!r}", field="precision"
        )
    return precision
