"""Object-detection ops: NonMaxSuppression.

Greedy per (batch, class): candidates by descending score (ties: the lower box index first),
each kept unless its IoU with an already kept box is strictly above ``iou_threshold``. Scores
must be strictly above ``score_threshold`` when it is given. IoU is computed in float32 with the
degenerate-box rules of ONNX Runtime (an empty intersection or a non-positive area never
suppresses).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phi_engine.graph.ir import TensorType
from phi_engine.graph.ops._nn_util import fresh
from phi_engine.graph.ops._tensor_util import arg
from phi_engine.graph.ops._util import tt
from phi_engine.graph.registry import InferContext, OpContext, op

F32 = np.float32


def _nms_infer(ctx: InferContext) -> list[TensorType]:
    for i, name in ((0, "float32"), (1, "float32"), (2, "int64"), (3, "float32"), (4, "float32")):
        if ctx.has(i) and ctx.type(i).dtype.name != name:
            ctx.fail(f"input {i} must be {name}, got {ctx.type(i).dtype.name}")
    if int(ctx.attr("center_point_box", 0)) not in (0, 1):
        ctx.fail("center_point_box must be 0 or 1")
    boxes, scores = ctx.type(0).shape, ctx.type(1).shape
    if boxes is not None and (len(boxes) != 3 or (isinstance(boxes[2], int) and boxes[2] != 4)):
        ctx.fail(f"boxes must have shape (batches, boxes, 4), got {list(boxes)}")
    if scores is not None and len(scores) != 3:
        ctx.fail(f"scores must have shape (batches, classes, boxes), got {list(scores)}")
    return [tt(np.int64, (fresh(ctx, "selected"), 3))]


def _corners(boxes: np.ndarray, center: bool) -> np.ndarray:
    """(n, 4) boxes as (x_min, y_min, x_max, y_max), float32."""
    b = boxes.astype(F32)
    if center:
        half_w, half_h = b[:, 2] / F32(2), b[:, 3] / F32(2)
        return np.stack([b[:, 0] - half_w, b[:, 1] - half_h, b[:, 0] + half_w, b[:, 1] + half_h], 1)
    return np.stack(
        [
            np.minimum(b[:, 1], b[:, 3]),
            np.minimum(b[:, 0], b[:, 2]),
            np.maximum(b[:, 1], b[:, 3]),
            np.maximum(b[:, 0], b[:, 2]),
        ],
        1,
    )


def _suppressed(box: np.ndarray, kept: np.ndarray, threshold: np.float32) -> bool:
    """Whether ``box`` overlaps any of the ``kept`` boxes by IoU > threshold."""
    if not len(kept):
        return False
    w = np.minimum(box[2], kept[:, 2]) - np.maximum(box[0], kept[:, 0])
    h = np.minimum(box[3], kept[:, 3]) - np.maximum(box[1], kept[:, 1])
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (kept[:, 2] - kept[:, 0]) * (kept[:, 3] - kept[:, 1])
    union = area + areas - inter
    valid = (w > 0) & (h > 0) & (inter > 0) & (area > 0) & (areas > 0) & (union > 0)
    with np.errstate(all="ignore"):
        iou = inter / union
    return bool(np.any(valid & (iou > threshold)))


@op("NonMaxSuppression", (10, 11), infer=_nms_infer)
def non_max_suppression(ctx: OpContext, x: list[Any]) -> list[np.ndarray]:
    boxes, scores = x[0], x[1]
    limit_v, iou_v, score_v = arg(x, 2), arg(x, 3), arg(x, 4)
    if boxes.ndim != 3 or boxes.shape[2] != 4 or scores.ndim != 3:
        ctx.fail(f"boxes {list(boxes.shape)} and scores {list(scores.shape)} have bad ranks")
    if scores.shape[0] != boxes.shape[0] or scores.shape[2] != boxes.shape[1]:
        ctx.fail(f"scores of shape {list(scores.shape)} do not fit boxes {list(boxes.shape)}")
    limit = max(int(np.ravel(limit_v)[0]), 0) if limit_v is not None and limit_v.size else 0
    iou = F32(np.ravel(iou_v)[0]) if iou_v is not None and iou_v.size else F32(0)
    center = bool(ctx.attr("center_point_box", 0))
    selected: list[tuple[int, int, int]] = []
    for n in range(boxes.shape[0]):
        corners = _corners(boxes[n], center)
        for c in range(scores.shape[1]):
            s = scores[n, c]
            candidates = np.arange(s.size)
            if score_v is not None and score_v.size:
                candidates = candidates[s > F32(np.ravel(score_v)[0])]
            order = candidates[np.lexsort((candidates, -s[candidates].astype(np.float64)))]
            kept: list[int] = []
            for i in order:
                if len(kept) >= limit:
                    break
                if not _suppressed(corners[i], corners[kept], iou):
                    kept.append(int(i))
                    selected.append((n, c, int(i)))
    return [np.array(selected, dtype=np.int64).reshape(-1, 3)]
