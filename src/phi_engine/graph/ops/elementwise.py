"""Elementwise ops: arithmetic with numpy broadcasting, comparisons, logic, unary math, casts."""

from __future__ import annotations

from typing import Any

import numpy as np

from phi_engine.graph.ir import TensorType
from phi_engine.graph.lower import LowerContext
from phi_engine.graph.ops._util import all_float32, broadcast, same_as, tt
from phi_engine.graph.registry import InferContext, OpContext, op


def _binary_infer(ctx: InferContext) -> list[TensorType]:
    a, b = ctx.type(0), ctx.type(1)
    if a.dtype != b.dtype:
        ctx.fail(f"inputs have different dtypes {a.dtype.name} and {b.dtype.name}")
    return [tt(a.dtype, broadcast(ctx, a.shape, b.shape))]


def _native_binary(native: str) -> Any:
    def lower(ctx: LowerContext) -> list[int] | None:
        if not all_float32(ctx):
            return None
        return ctx.step(native, [ctx.slot(0), ctx.slot(1)])

    return lower


@op("Add", (7, 13, 14), infer=_binary_infer, lower=_native_binary("add"))
def add(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [np.add(x[0], x[1]).astype(x[0].dtype, copy=False)]


@op("Sub", (7, 13, 14), infer=_binary_infer, lower=_native_binary("sub"))
def sub(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [np.subtract(x[0], x[1]).astype(x[0].dtype, copy=False)]


@op("Mul", (7, 13, 14), infer=_binary_infer, lower=_native_binary("mul"))
def mul(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [np.multiply(x[0], x[1]).astype(x[0].dtype, copy=False)]


def _lower_relu(ctx: LowerContext) -> list[int] | None:
    return ctx.step("relu", [ctx.slot(0)]) if all_float32(ctx) else None


@op("Relu", (6, 13, 14), infer=same_as(0), lower=_lower_relu)
def relu(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    return [np.maximum(x[0], 0).astype(x[0].dtype, copy=False)]
