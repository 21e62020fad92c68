"""What a fetched artifact is (ONNX, an archive, a pickle) and making an ONNX model self-contained.

Only ONNX is ever loaded. Pickle-based formats (PyTorch ``.pt``, joblib, plain pickles) run
arbitrary code when loaded (https://docs.python.org/3/library/pickle.html, the warning at the
top), so they are refused with advice to export to ONNX, never opened.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from phi_engine.errors import InvalidRequestError, UnsupportedError

__all__ = [
    "PICKLE_SUFFIXES",
    "Kind",
    "check_not_pickle_name",
    "external_locations",
    "inline_external_data",
    "pickle_error",
    "sniff",
]

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".joblib")

Kind = Literal["onnx", "tar", "zip", "pickle"]

_FIELD = "storage_url"
_SNIFF_BYTES = 512 + 8  # a tar header's "ustar" magic sits at offset 257


def pickle_error(what: str) -> UnsupportedError:
    """The refusal for a pickle-based artifact."""
    return UnsupportedError(
        f"[registry] {what} is a pickle-based format, which can run arbitrary code when loaded "
        "and is not accepted; export the model to ONNX (torch.onnx.export, tf2onnx, skl2onnx, "
        "jax2onnx) and register the .onnx file",
        field=_FIELD,
    )


def check_not_pickle_name(name: str) -> None:
    """Refuse a URL or member name with a pickle-format suffix, before fetching anything."""
    suffix = PurePosixPath(name.split("?", 1)[0]).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise pickle_error(repr(PurePosixPath(name).name))


def sniff(path: Path) -> Kind:
    """Classify a file by its leading bytes (names lie; magic numbers rarely do)."""
    with path.open("rb") as f:
        head = f.read(_SNIFF_BYTES)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    # gzip, bzip2, xz: tarfile's "r:*" reads all three; a bare tar has "ustar" at offset 257.
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")) or head[257:262] == b"ustar":
        return "tar"
    # Pickle protocols 2-5 start with the PROTO opcode (0x80) and the protocol number. An ONNX
    # ModelProto starts with a field tag (0x08 for ir_version), never 0x80.
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return "onnx"


def _node_tensors(nodes: Iterable[Any]) -> Iterator[Any]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for graph in attr.graphs:
                yield from _graph_tensors(graph)


def _graph_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    yield from _node_tensors(graph.node)


def _external_tensors(model: Any) -> list[Any]:
    from onnx import TensorProto

    tensors = list(_graph_tensors(model.graph))
    for function in model.functions:
        tensors.extend(_node_tensors(function.node))
    return [t for t in tensors if t.data_location == TensorProto.EXTERNAL]


def external_locations(model: Any) -> list[str]:
    """The external data files a ModelProto refers to, in order of first use."""
    locations: dict[str, None] = {}
    for tensor in _external_tensors(model):
        entries = {e.key: e.value for e in tensor.external_data}
        locations.setdefault(entries.get("location", ""), None)
    return list(locations)


def _check_location(location: str, base: Path) -> Path:
    """Refuse an external data location that leaves the unpacked directory."""
    relative = PurePosixPath(location)
    bad = not location or relative.is_absolute() or ".." in relative.parts or "\\" in location
    target = (base / relative).resolve()
    if bad or not target.is_relative_to(base.resolve()):
        raise InvalidRequestError(
            f"[registry] external data location {location!r} points outside the archive",
            field=_FIELD,
        )
    if not target.is_file():
        raise InvalidRequestError(
            f"[registry] external data file {location!r} is not in the archive", field=_FIELD
        )
    return target


def inline_external_data(model: Any, base: Path) -> bytes:
    """Load a model's external data from ``base`` into it and serialize it as one file.

    Args:
        model: A ModelProto loaded without its external data.
        base: The directory the model file was unpacked in; no location may leave it.

    Returns:
        The serialized, self-contained model.

    Raises:
        InvalidRequestError: a location escapes ``base``, a file is missing or too short.
        UnsupportedError: the model does not fit one protobuf message (2 GiB).
    """
    from onnx import TensorProto
    from onnx.external_data_helper import load_external_data_for_tensor

    for tensor in _external_tensors(model):
        entries = {e.key: e.value for e in tensor.external_data}
        _check_location(entries.get("location", ""), base)
        try:
            load_external_data_for_tensor(tensor, str(base))
        except Exception as exc:  # onnx raises ValueError/OSError for bad offsets and lengths
            raise InvalidRequestError(
                f"[registry] cannot read external data of tensor {tensor.name!r}: {exc}",
                field=_FIELD,
            ) from exc
        tensor.data_location = TensorProto.DEFAULT
        del tensor.external_data[:]
    if model.ByteSize() >= 2**31:
        raise UnsupportedError(
            "[registry] the model with its external data is over 2 GiB, more than one ONNX "
            "file can hold; phi_engine does not serve models this large yet",
            field=_FIELD,
        )
    data: bytes = model.SerializeToString()
    return data
