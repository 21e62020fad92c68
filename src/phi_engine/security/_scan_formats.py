"""Formats for the artifact scanner: magic bytes and what headers say (archives, HDF5,
safetensors, npy, ONNX, Keras configs, TensorFlow ops), without scanner state."""

from __future__ import annotations

import ast
import bz2
import gzip
import importlib
import io
import json
import lzma
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import Any

_TF_OPS = {
    **dict.fromkeys(("PyFunc", "PyFuncStateless", "EagerPyFunc"), "tf.exec_op"),
    **dict.fromkeys(
        ("WriteFile", "CreateSummaryFileWriter", "DebugIdentityV2"), "tf.file_write_op"
    ),
    **dict.fromkeys(("DatasetToTFRecord", "ExperimentalDatasetToTFRecord"), "tf.file_write_op"),
    **dict.fromkeys(("SaveDataset", "SaveDatasetV2", "DebugIdentityV3"), "tf.file_write_op"),
    **dict.fromkeys(("ReadFile", "MatchingFiles", "ImmutableConst"), "tf.file_read_op"),
    **dict.fromkeys(("Save", "SaveV2", "SaveSlices", "MergeV2Checkpoints"), "tf.checkpoint_op"),
}
# A NodeDef's op is field 2: tag 0x12, a length byte, the name (tensorflow/core/framework/
# node_def.proto); FunctionDef bodies hold NodeDefs too. Text protos write `op: "Name"`.
_TF_BINARY = re.compile(
    rb"\x12(" + b"|".join(re.escape(bytes([len(op)]) + op.encode()) for op in _TF_OPS) + rb")"
)
_TF_TEXT = re.compile(rb'\bop:\s*"(' + b"|".join(op.encode() for op in _TF_OPS) + rb')"')

# A SavedModel text proto opens with its first field (saved_model.proto).
_SAVED_MODEL_TEXT = re.compile(
    rb"\s*(?:#[^\n]*\n\s*)*(?:saved_model_schema_version\s*:|meta_graphs\s*\{)"
)

_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
# The tags a serialized ModelProto can start with (onnx.proto: fields 1-8, 14, 20, 25, 26).
_ONNX_FIRST_BYTES = frozenset(b"\x08\x12\x1a\x22\x28\x32\x3a\x42\x72\xa2\xca\xd2")
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))
_OPENERS: dict[str, Callable[[io.BytesIO], Any]] = {
    "gzip": gzip.open,
    "bz2": bz2.open,
    "xz": lzma.open,
}
_DECOMPRESS_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError)
_ZIP_ERRORS = (zipfile.BadZipFile, *_DECOMPRESS_ERRORS, NotImplementedError, RuntimeError)
_CONTAINERS = ("zip", "tar", "gzip", "bz2", "xz", "keras_v3", "pytorch_zip", "pickle", "numpy")
_IDENT = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*\Z")
_PROBE = 1 << 16
_MiB = 1 << 20

# ---------------------------------------------------------------------------------------------
# Formats: what their headers say, without scanner state.


def _archive_kind(data: bytes) -> str | None:
    if data[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    for magic, kind in _COMPRESSED:
        if data.startswith(magic) and (kind != "bz2" or data[3:4].isdigit()):
            return kind
    return "tar" if data[257:262] == b"ustar" else None  # POSIX.1-1988 ustar magic


def _is_hdf5(data: bytes) -> bool:
    """The HDF5 signature, at 0 or after a user block of 512 * 2**k bytes."""
    return any(data[n : n + 8] == b"\x89HDF\r\n\x1a\n" for n in (0, 512, 1024, 2048, 4096))


def _safetensors_header(data: bytes) -> dict[str, Any] | None:
    """The JSON header of a safetensors file: an 8-byte little-endian size, then JSON."""
    size = int.from_bytes(data[:8], "little")
    if len(data) < 10 or data[8:9] != b"{" or size > len(data) - 8:
        return None
    try:
        header = json.loads(data[8 : 8 + size])
    except (ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def _safetensors_problem(header: dict[str, Any], payload: int) -> str | None:
    for name, entry in header.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if name != "__metadata__" and not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(x, int) for x in offsets)
            and 0 <= offsets[0] <= offsets[1] <= payload
        ):
            return f"tensor {name!r} has data_offsets {offsets!r} outside its {payload} bytes"
    return None


def _npy_pickle_start(data: bytes) -> int | None:
    """Where an ``.npy`` file's object-array pickle starts (numpy/lib/format.py); -1 when its
    dtype holds no objects; None when the header does not parse."""
    width = 2 if data[6:7] == b"\x01" else 4
    size = int.from_bytes(data[8 : 8 + width], "little")
    if len(data) < 8 + width + size or size > _MiB:
        return None
    try:
        header = ast.literal_eval(data[8 + width : 8 + width + size].decode("latin-1"))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    return 8 + width + size if _has_object_dtype(header.get("descr")) else -1


def _has_object_dtype(descr: Any) -> bool:
    if isinstance(descr, str):
        return descr.lstrip("<>|=").startswith("O")
    if isinstance(descr, list):
        return any(
            isinstance(field, tuple) and len(field) >= 2 and _has_object_dtype(field[1])
            for field in descr
        )
    return True  # not a descr numpy writes: the unsafe reading


def _json_nodes(doc: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object in a JSON document with its path; iterative, so depth costs no frames."""
    todo: list[tuple[str, Any]] = [("$", doc)]
    while todo:
        where, node = todo.pop()
        if isinstance(node, dict):
            yield where, node
            todo.extend((f"{where}.{key}", value) for key, value in reversed(node.items()))
        elif isinstance(node, list):
            todo.extend((f"{where}[{i}]", value) for i, value in reversed(list(enumerate(node))))


def _keras_issues(doc: Any) -> Iterator[tuple[str, str]]:
    """Keras configs: ``Lambda`` layers at any depth (their function is Python bytecode, run
    when the model is built), and objects from modules outside Keras (custom code)."""
    for where, node in _json_nodes(doc):
        class_name, module = node.get("class_name"), node.get("module")
        if class_name == "Lambda":
            config = node.get("config")
            layer = config.get("name") if isinstance(config, dict) else None
            yield "keras.lambda_layer", f"Lambda layer {layer!r} at {where} holds Python code"
        if (
            isinstance(module, str)
            and isinstance(class_name, str)
            and module.split(".")[0] not in ("keras", "tf_keras", "builtins")
        ):
            yield "keras.custom_object", f"{module}.{class_name} at {where} is not Keras code"
        registered = node.get("registered_name")
        if isinstance(registered, str) and ">" in registered:
            yield "keras.custom_object", f"custom object {registered!r} at {where}"


def _hdf5_configs(data: bytes) -> list[Any]:
    """The JSON attributes of a Keras ``.h5`` file (``model_config``). HDF5 keeps attribute
    strings contiguous, NUL-terminated or padded, so they are found in the bytes; h5py, when
    installed, reads the attribute where the search finds nothing."""
    decoder, docs = json.JSONDecoder(), []
    pos = data.find(b'{"class_name"')
    while pos >= 0:
        end = data.find(b"\x00", pos)
        text = data[pos : end if end >= 0 else len(data)].decode("utf-8", "replace")
        try:
            doc, used = decoder.raw_decode(text)
            docs.append(doc)
        except (ValueError, RecursionError):
            used = 1
        pos = data.find(b'{"class_name"', pos + used)
    if docs:
        return docs
    try:
        with importlib.import_module("h5py").File(io.BytesIO(data), "r") as f:
            value = f.attrs.get("model_config")
            return [json.loads(value)] if value is not None else []
    except Exception:  # h5py absent, or a file it cannot read
        return []


def _tf_ops(data: bytes, text: bool) -> list[str]:
    if text:
        return sorted({m[1].decode() for m in _TF_TEXT.finditer(data)})
    return sorted({m[1][1:].decode() for m in _TF_BINARY.finditer(data)})


def _location_problem(location: str) -> str | None:
    """Why an ONNX external data location leaves the model folder, read as a path."""
    if not location or "\x00" in location or "\\" in location:
        return "is empty or holds a backslash or NUL"
    if PurePosixPath(location).is_absolute() or re.match(r"[A-Za-z]:", location):
        return "is absolute"
    return "has a '..' component" if ".." in PurePosixPath(location).parts else None


def _subgraphs(node: Any) -> Iterator[Any]:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _onnx_nodes(model: Any) -> Iterator[Any]:
    """Every node: the graph's, its subgraphs', and the model-local functions'."""
    todo = [*model.graph.node, *(n for f in model.functions for n in f.node)]
    while todo:
        node = todo.pop()
        yield node
        todo.extend(n for graph in _subgraphs(node) for n in graph.node)


def _onnx_tensors(model: Any) -> Iterator[Any]:
    """Every tensor that may hold external data: initializers, sparse ones, attributes."""
    graphs = [model.graph, *(g for node in _onnx_nodes(model) for g in _subgraphs(node))]
    for graph in graphs:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
    for node in _onnx_nodes(model):
        for attr in node.attribute:
            yield from ([attr.t] if attr.HasField("t") else [])
            yield from attr.tensors


def _parse_onnx(data: bytes) -> Any | None:
    """A ModelProto when the bytes are one (with a graph), else None."""
    if not data or data[0] not in _ONNX_FIRST_BYTES:
        return None
    from onnx import ModelProto

    model = ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # protobuf's DecodeError, or a RuntimeError from the C++ parser
        return None
    return model if model.HasField("graph") and model.ir_version > 0 else None


def _is_text(data: bytes) -> bool:
    try:
        data[:_PROBE].decode("utf-8")
    except UnicodeDecodeError as exc:  # a character cut by the probe's end is still text
        return len(data) > _PROBE and exc.start >= _PROBE - 4
    return b"\x00" not in data[:_PROBE]


def _second_opinions(data: bytes, label: str) -> Iterator[tuple[str, str]]:
    """picklescan's and fickling's verdicts, when installed; they never decide."""
    try:
        result = importlib.import_module("picklescan.scanner").scan_pickle_bytes(
            io.BytesIO(data), label
        )
        names = ", ".join(f"{g.module} {g.name} ({g.safety})" for g in result.globals)
        verdict = f"picklescan: {result.issues_count} issues; globals: {names or 'none'}"
    except ImportError:
        verdict = ""
    except Exception as exc:  # its failure is its opinion, not ours
        verdict = f"picklescan failed: {exc}"
    if verdict:
        yield "second_opinion.picklescan", verdict
    try:
        pickled = importlib.import_module("fickling.fickle").Pickled.load(data)
        verdict = f"fickling: {importlib.import_module('fickling.analysis').check_safety(pickled)}"
    except ImportError:
        verdict = ""
    except Exception as exc:
        verdict = f"fickling failed: {exc}"
    if verdict:
        yield "second_opinion.fickling", verdict
