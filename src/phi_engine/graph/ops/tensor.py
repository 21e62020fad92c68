"""The tensor and shape op family; importing this module registers all of it.

Its ops are grouped by what they do, one module each: ``shape_ops`` (Constant, Shape, Size and
the reshapes), ``layout`` (Transpose, Concat, Split, Slice, DepthToSpace, SpaceToDepth,
ReverseSequence), ``expand`` (Expand, Tile, Pad), ``generators`` (ConstantOfShape, Range, EyeLike,
Trilu, OneHot) and ``indexing`` (gathers, scatters, NonZero, Compress, Unique, CumSum, TopK).
Their shared helpers are in ``_tensor_util``.
"""

from phi_engine.graph.ops import expand, generators, indexing, layout, shape_ops

__all__ = ["expand", "generators", "indexing", "layout", "shape_ops"]
