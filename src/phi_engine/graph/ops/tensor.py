"""Tensor and shape ops: Shape, Reshape, Transpose, Concat, Slice, Gather, Expand, and friends."""

from __future__ import annotations
