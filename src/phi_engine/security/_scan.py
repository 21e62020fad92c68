"""The artifact scanner: what a model artifact holds, judged by its bytes, never by its names.

:func:`scan_path` (a file or an unpacked model folder) and :func:`scan_bytes` sniff every file by
its magic bytes and look inside: archives (zip, tar, gzip, bzip2, xz) recursively within
:class:`ScanLimits`; pickle streams opcode by opcode with :mod:`pickletools`, never unpickled,
against the exact allowlist :data:`PICKLE_ALLOWLIST`; ONNX external data paths, custom domains
and local functions; Keras ``Lambda`` layers; TensorFlow ops that run Python or touch files.
Each finding follows one of :data:`RULES`; a ``critical`` or ``high`` one fails the artifact.

Why opcodes and an allowlist: loading a pickle imports whatever GLOBAL, STACK_GLOBAL and INST
name and calls what REDUCE, NEWOBJ, OBJ and INST are handed
(https://docs.python.org/3/library/pickle.html#restricting-globals), and protocol 4 resolves
dotted names through attributes (``numpy`` + ``testing._private.utils.os.system``). So the one
sound check is that every import is, exactly, a name known to be harmless and every call is on
one. The walk keeps a symbolic stack and memo, so names assembled through PUT/MEMOIZE and GET
are resolved; what cannot be resolved, parsed or read to its STOP is refused. picklescan and
fickling, when installed, add their verdicts as ``info``; this scanner decides.
"""

from __future__ import annotations

import ast
import bz2
import dataclasses
import gzip
import importlib
import io
import json
import lzma
import os
import pickletools
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from phi_engine.errors import InvalidRequestError

__all__ = [
    "PICKLE_ALLOWLIST",
    "RULES",
    "Finding",
    "ScanLimits",
    "ScanReport",
    "ScannedFile",
    "scan_bytes",
    "scan_path",
]

Severity = Literal["critical", "high", "warn", "info"]

_TORCH_STORAGES: tuple[str, ...] = ("BFloat16", "Bool", "Byte", "Char", "ComplexDouble")
_TORCH_STORAGES += ("ComplexFloat", "Double", "Float", "Half", "Int", "Long", "Short")

PICKLE_ALLOWLIST: frozenset[tuple[str, str]] = frozenset(
    {
        # numpy arrays, scalars and dtypes, under numpy 1.x's and 2.x's module names.
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # arrays pickled with protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocols 0-2, e.g. array data
        ("collections", "OrderedDict"),
        # PyTorch checkpoints (torch.save's data.pkl): tensors, parameters, typed storages.
        ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        *(("torch", f"{dtype}Storage") for dtype in _TORCH_STORAGES),
    }
)
"""Every ``(module, name)`` a pickle may import when pickles are allowed; matched exactly."""

RULES: dict[str, tuple[Severity, str]] = {
    "pickle.not_allowed": ("critical", "a pickle stream where pickles are not allowed"),
    "pickle.global_not_allowed": ("critical", "an import outside PICKLE_ALLOWLIST"),
    "pickle.global_dotted_name": ("critical", "an import whose name is an attribute path"),
    "pickle.unresolved_global": ("critical", "STACK_GLOBAL of values that are not constants"),
    "pickle.call_on_unknown": ("critical", "REDUCE/NEWOBJ/OBJ on what is not a named import"),
    "pickle.build_on_global": ("critical", "BUILD, APPEND or SETITEM on an imported object"),
    "pickle.extension_code": ("critical", "EXT1/2/4: an import named by the copyreg registry"),
    "pickle.truncated": ("critical", "the stream ends before STOP"),
    "pickle.unparseable": ("critical", "unknown opcode, bad operand, stack or memo misuse"),
    "pickle.trailing_data": ("critical", "bytes after STOP"),
    "pickle.polyglot": ("critical", "a file of another format that also parses as a pickle"),
    "pickle.allowed": ("info", "a pickle stream importing only allowlisted names"),
    "second_opinion.picklescan": ("info", "picklescan's verdict, when it is installed"),
    "second_opinion.fickling": ("info", "fickling's verdict, when it is installed"),
    "numpy.invalid_header": ("high", "an .npy header that does not parse"),
    "safetensors.invalid_header": ("warn", "safetensors offsets outside the file"),
    "onnx.external_data_escape": ("critical", "external data outside the model's folder"),
    "onnx.external_data_missing": ("high", "external data naming a file that is not there"),
    "onnx.custom_domain": ("warn", "ops from domains other than '', ai.onnx, ai.onnx.ml"),
    "onnx.local_function": ("info", "a model-local function"),
    "keras.lambda_layer": ("critical", "a Lambda layer: Python bytecode run at load"),
    "keras.custom_object": ("warn", "a Keras object from a module outside Keras"),
    "tf.exec_op": ("critical", "a TensorFlow op that runs Python"),
    "tf.file_write_op": ("critical", "a TensorFlow op that writes files"),
    "tf.file_read_op": ("high", "a TensorFlow op that reads or lists files"),
    "tf.checkpoint_op": ("warn", "checkpoint save ops (every SavedModel's saver has them)"),
    "archive.nested_too_deep": ("high", "archives nested past ScanLimits.max_depth"),
    "archive.compression_ratio": ("high", "a member past ScanLimits.max_ratio: a bomb"),
    "archive.unsafe_path": ("high", "a member name that is absolute or has '..'"),
    "archive.duplicate_member": ("high", "a member name used twice"),
    "archive.link": ("high", "a symbolic or hard link member"),
    "archive.special_member": ("high", "a device or FIFO member"),
    "archive.encrypted_member": ("high", "an encrypted member, which cannot be scanned"),
    "archive.unreadable": ("high", "an archive or member that cannot be read"),
    "limits.too_many_files": ("high", "more files and members than ScanLimits.max_members"),
    "limits.too_large": ("high", "a file past ScanLimits.max_file_bytes or max_total_bytes"),
    "file.symlink_escape": ("critical", "a symbolic link leaving the scanned folder"),
    "file.symlink_broken": ("warn", "a dangling symbolic link"),
    "file.symlink": ("info", "a symbolic link inside the scanned folder"),
    "file.special": ("high", "a device, FIFO or socket"),
    "file.unreadable": ("high", "a file that cannot be read"),
}
"""Every rule: its severity and what it finds."""
_RANK: dict[str, int] = {"critical": 0, "high": 1, "warn": 2, "info": 3}

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


@dataclass(frozen=True)
class Finding:
    """One thing the scanner found.

    Attributes:
        path: Where inside the artifact: ``model.zip!/weights/data.pkl`` is the member
            ``weights/data.pkl`` of ``model.zip``.
        kind: The content type detected there (``pickle``, ``onnx``, ``zip``, ...).
        severity: ``critical`` or ``high`` fail the artifact; ``warn`` and ``info`` do not.
        rule: A stable identifier from :data:`RULES`, e.g. ``pickle.global_not_allowed``.
        message: What exactly was found, with byte offsets where they help.
    """

    path: str
    kind: str
    severity: Severity
    rule: str
    message: str


@dataclass(frozen=True)
class ScannedFile:
    """A file or archive member the scanner read, with the type its bytes show."""

    path: str
    kind: str
    size: int


@dataclass(frozen=True)
class ScanLimits:
    """Bounds on the work of one scan; passing one is a ``high`` finding.

    Attributes:
        max_depth: Archives nested deeper are not opened (a ``.tar.gz`` is two levels).
        max_members: Files and archive members read, in all.
        max_total_bytes: Bytes read or decompressed, in all.
        max_file_bytes: The largest single file or member read.
        max_ratio: The largest decompressed/compressed ratio of a member past ``ratio_floor``.
        ratio_floor: Members smaller than this, decompressed, are not held to ``max_ratio``.
    """

    max_depth: int = 4
    max_members: int = 10_000
    max_total_bytes: int = 16 << 30
    max_file_bytes: int = 4 << 30
    max_ratio: float = 100.0
    ratio_floor: int = _MiB


@dataclass(frozen=True)
class ScanReport:
    """What a scan found, most severe first, and every file it read.

    Attributes:
        findings: The findings, ``critical`` first.
        files: Each file or member read, with its detected kind.
    """

    findings: tuple[Finding, ...]
    files: tuple[ScannedFile, ...]

    @property
    def ok(self) -> bool:
        """True when no finding is ``critical`` or ``high``."""
        return not any(_RANK[f.severity] <= 1 for f in self.findings)

    def by_rule(self, rule: str) -> list[Finding]:
        """The findings of one rule."""
        return [f for f in self.findings if f.rule == rule]

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values, with a count per severity."""
        counts = dict.fromkeys(_RANK, 0)
        for finding in self.findings:
            counts[finding.severity] += 1
        return {
            "ok": self.ok,
            "counts": counts,
            "findings": [dataclasses.asdict(f) for f in self.findings],
            "files": [dataclasses.asdict(f) for f in self.files],
        }

    def raise_for_findings(self, *, field: str = "storage_url") -> None:
        """Raise when the artifact failed the scan, naming its most severe finding.

        Raises:
            InvalidRequestError: a ``critical`` or ``high`` finding; ``field`` names the
                request field that supplied the artifact.
        """
        failing = [f for f in self.findings if _RANK[f.severity] <= 1]
        if failing:
            first, more = failing[0], len(failing) - 1
            also = f" (and {more} more finding{'s' * (more > 1)})" if more else ""
            raise InvalidRequestError(
                f"[security] unsafe artifact: {first.path}: {first.message} [{first.rule}]{also}",
                field=field,
            )


# ---------------------------------------------------------------------------------------------
# Pickle streams, opcode by opcode.


@dataclass(frozen=True)
class _Global:
    module: str
    name: str

    def __str__(self) -> str:
        return f"'{self.module} {self.name}'"


class _Broken(Exception):
    """The stream would fail to unpickle here: stack underflow, or an unknown memo slot."""


_OTHER = object()  # a value the walk does not track
_STRINGS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE"}
_STRINGS |= {"SHORT_BINUNICODE", "BINUNICODE8"}
_TRUNCATION = ("exhausted", "but only", "not enough data", "no newline found")
# Opcodes that call methods of their first operand (append, extend, __setitem__, add).
_MUTATORS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS"}
_MAX_OPS = 10_000_000  # a torch checkpoint of 10k tensors is some 200k opcodes


@dataclass
class _PickleWalk:
    """What walking one stream found."""

    start: int
    protocol: int = 0
    globals: list[_Global] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (rule, message)
    # An import was decoded: without one a stream reaches no callable, so bytes that merely
    # start with opcode characters (text) are no threat unless they import.
    risky: bool = False
    end: int = -1  # just past STOP; -1 when the walk failed
    error: str = ""
    truncated: bool = False


class _Walker:
    """A symbolic unpickler: :mod:`pickle`'s stack, metastack and memo, holding constant
    strings and imports where they are known, building no object."""

    def __init__(self, data: bytes, start: int) -> None:
        self.data = data
        self.out = _PickleWalk(start)
        self.stack: list[object] = []
        self.metastack: list[list[object]] = []
        self.memo: dict[int, object] = {}

    def walk(self) -> _PickleWalk:
        stream = io.BytesIO(self.data)
        stream.seek(self.out.start)
        pos: int | None = self.out.start
        try:
            for count, (op, arg, pos) in enumerate(pickletools.genops(stream)):
                if count == _MAX_OPS:
                    self.out.risky = True  # what lies past the budget is unknown: refuse it
                    raise _Broken(f"more than {_MAX_OPS} opcodes")
                self.step(op, arg, pos or 0)
        except _Broken as exc:
            self.out.error = f"{exc} at byte {pos}"
        except Exception as exc:  # genops raises ValueError & co. on any malformed byte
            self.out.error = str(exc)
            self.out.truncated = any(word in str(exc) for word in _TRUNCATION)
        else:
            self.out.end = stream.tell()
        return self.out

    def pop(self, n: int) -> list[object]:
        if len(self.stack) < n:
            raise _Broken("stack underflow")
        items = self.stack[len(self.stack) - n :]
        del self.stack[len(self.stack) - n :]
        return items

    def pop_mark(self) -> list[object]:
        if not self.metastack:
            raise _Broken("no MARK to pop to")
        items, self.stack = self.stack, self.metastack.pop()
        return items

    def step(self, op: pickletools.OpcodeInfo, arg: Any, pos: int) -> None:
        name = op.name
        if name in _STEPS:
            self.stack.append(_STEPS[name](self, arg, pos))
        elif name in _STRINGS:
            self.stack.append(arg if isinstance(arg, str) else bytes(arg).decode("latin-1"))
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if not self.stack:
                raise _Broken(f"{name} with an empty stack")
            self.memo[len(self.memo) if name == "MEMOIZE" else int(arg)] = self.stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in self.memo:
                raise _Broken(f"{name} of memo slot {arg}, never stored")
            self.stack.append(self.memo[int(arg)])
        elif name == "MARK":
            self.metastack.append(self.stack)
            self.stack = []
        elif name == "PROTO":
            if int(arg) > 5:
                raise _Broken(f"unsupported protocol {arg}")
            self.out.protocol = int(arg)
        elif name == "POP" and not self.stack:
            self.pop_mark()  # pickle's load_pop: an empty stack pops to the mark
        elif name == "DUP":
            self.stack.extend(self.pop(1) * 2)
        else:  # the opcode's documented stack effect (pickletools.OpcodeInfo)
            before = op.stack_before
            if pickletools.markobject in before:
                self.pop_mark()
                popped = self.pop(before.index(pickletools.markobject))
            else:
                popped = self.pop(len(before))
            if name in _MUTATORS:
                self.stack.append(self.mutated(popped[0], name, pos))
            else:
                self.stack.extend([_OTHER] * len(op.stack_after))

    def imported(self, module: str, name: str, pos: int, opcode: str) -> _Global:
        found = _Global(module, name)
        self.out.risky = self.out.risky or bool(_IDENT.match(module) and _IDENT.match(name))
        if found in self.out.globals:  # reported at its first import
            return found
        self.out.globals.append(found)
        if "." in name:
            message = f"global {found} ({opcode} at byte {pos}) is an attribute path"
            self.out.problems.append(("pickle.global_dotted_name", message))
        elif (module, name) not in PICKLE_ALLOWLIST:
            message = f"global {found} ({opcode} at byte {pos}) is not in the allowlist"
            self.out.problems.append(("pickle.global_not_allowed", message))
        return found

    def called(self, target: object, pos: int, opcode: str) -> object:
        if not isinstance(target, _Global):
            message = f"{opcode} at byte {pos} calls a value that is not a named import"
            self.out.problems.append(("pickle.call_on_unknown", message))
        return _OTHER

    def line_pair(self, pos: int) -> tuple[str, str]:
        """GLOBAL's and INST's operands as the unpickler reads them: two lines."""
        module, name, _ = self.data[pos + 1 :].split(b"\n", 2)
        return module.decode("utf-8"), name.decode("utf-8")

    def stack_global(self, pos: int) -> object:
        module, name = self.pop(2)
        if isinstance(module, str) and isinstance(name, str):
            return self.imported(module, name, pos, "STACK_GLOBAL")
        self.out.risky = True
        message = f"STACK_GLOBAL at byte {pos} imports names that are not constant strings"
        self.out.problems.append(("pickle.unresolved_global", message))
        return _OTHER

    def mutated(self, target: object, opcode: str, pos: int) -> object:
        """BUILD sets attributes of its target, APPEND and SETITEM call its methods: on an
        import they would rewrite the imported object itself."""
        if isinstance(target, _Global):
            message = f"{opcode} at byte {pos} modifies the global {target}"
            self.out.problems.append(("pickle.build_on_global", message))
        return target

    def extension(self, code: Any, pos: int) -> object:
        self.out.risky = True
        message = f"EXT opcode at byte {pos} imports extension code {code} (copyreg registry)"
        self.out.problems.append(("pickle.extension_code", message))
        return _OTHER


def _obj(w: _Walker, pos: int) -> object:
    items = w.pop_mark()
    if not items:
        raise _Broken("OBJ without a class")
    return w.called(items[0], pos, "OBJ")


def _inst(w: _Walker, pos: int) -> object:
    target = w.imported(*w.line_pair(pos), pos, "INST")  # pickle imports, then pops the mark
    w.pop_mark()
    return w.called(target, pos, "INST")


# Opcodes that import, call or set attributes: each returns the value it pushes.
_STEPS: dict[str, Callable[[_Walker, Any, int], object]] = {
    "GLOBAL": lambda w, arg, pos: w.imported(*w.line_pair(pos), pos, "GLOBAL"),
    "STACK_GLOBAL": lambda w, arg, pos: w.stack_global(pos),
    "INST": lambda w, arg, pos: _inst(w, pos),
    "OBJ": lambda w, arg, pos: _obj(w, pos),
    "REDUCE": lambda w, arg, pos: w.called(w.pop(2)[0], pos, "REDUCE"),
    "NEWOBJ": lambda w, arg, pos: w.called(w.pop(2)[0], pos, "NEWOBJ"),
    "NEWOBJ_EX": lambda w, arg, pos: w.called(w.pop(3)[0], pos, "NEWOBJ_EX"),
    "BUILD": lambda w, arg, pos: w.mutated(w.pop(2)[0], "BUILD", pos),
    "EXT1": lambda w, arg, pos: w.extension(arg, pos),
    "EXT2": lambda w, arg, pos: w.extension(arg, pos),
    "EXT4": lambda w, arg, pos: w.extension(arg, pos),
}
_PICKLE_OPCODES = frozenset(ord(op.code) for op in pickletools.opcodes)


def _walk_pickle(data: bytes, start: int = 0) -> _PickleWalk:
    return _Walker(data, start).walk()


def _is_proto(data: bytes, start: int = 0) -> bool:
    """A PROTO opcode: how every pickle of protocol 2 and up begins."""
    return len(data) >= start + 2 and data[start] == 0x80 and data[start + 1] <= 5


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


# ---------------------------------------------------------------------------------------------
# The scan: files and members, each dispatched on what its bytes are.


@dataclass(frozen=True)
class _Where:
    """Where a blob sits, to resolve the relative paths it names (ONNX external data)."""

    folder: Path | None = None  # on disk: the folder holding the file
    root: Path | None = None  # on disk: what labels are relative to
    container: str = ""  # in an archive: the archive's label
    member_dir: PurePosixPath = field(default_factory=PurePosixPath)
    names: frozenset[str] = frozenset()


def _member_name(name: str) -> str:
    return PurePosixPath(name).as_posix().removeprefix("./")


class _Scanner:
    """One scan's state: findings, files read, budgets, and what models read as raw data."""

    def __init__(self, allow_pickle: bool, limits: ScanLimits) -> None:
        self.allow_pickle = allow_pickle
        self.limits = limits
        self.findings: list[Finding] = []
        self.files: list[ScannedFile] = []
        self.members = 0
        self.bytes_read = 0
        self.known_data: set[str] = set()  # labels a model reads as raw tensor bytes
        # Streams that start like a pickle but fail to parse, importing nothing first: raw
        # tensor data when a model names them as its data, else broken pickles.
        self.pending: dict[str, Finding] = {}

    def report(self) -> ScanReport:
        data = self.known_data & self.pending.keys()
        self.findings += [f for label, f in self.pending.items() if label not in data]
        files = [replace(f, kind="tensor_data") if f.path in data else f for f in self.files]
        findings = sorted(self.findings, key=lambda f: _RANK[f.severity])
        return ScanReport(tuple(findings), tuple(files))

    def add(self, rule: str, path: str, kind: str, message: str) -> None:
        self.findings.append(Finding(path, kind, RULES[rule][0], rule, message))

    def budget(self, label: str, size: int) -> bool:
        """Count one more file of ``size`` bytes; False, with a finding, past a limit."""
        limits, self.members = self.limits, self.members + 1
        if self.members > limits.max_members:
            if self.members == limits.max_members + 1:
                message = f"more than max_members={limits.max_members}; the rest not scanned"
                self.add("limits.too_many_files", label, "limits", message)
            return False
        if size > limits.max_file_bytes or self.bytes_read + size > limits.max_total_bytes:
            message = f"{size} bytes; passes max_file_bytes or max_total_bytes, not scanned"
            self.add("limits.too_large", label, "limits", message)
            return False
        self.bytes_read += size
        return True

    def blob(self, data: bytes, label: str, depth: int, where: _Where | None) -> None:
        """Scan one file's bytes, whatever its name says."""
        index = len(self.files)
        self.files.append(ScannedFile(label, "unknown", len(data)))
        kind = self.dispatch(data, label, depth, where)
        if kind not in _CONTAINERS and data[:1] and data[0] in _PICKLE_OPCODES:
            kind = self.unmarked_pickle(data, label, kind)
        self.files[index] = replace(self.files[index], kind=kind)

    def dispatch(self, data: bytes, label: str, depth: int, where: _Where | None) -> str:
        archive = _archive_kind(data)
        if archive is not None:
            return self.archive(data, label, depth, archive)
        if data.startswith(b"\x93NUMPY"):
            start = _npy_pickle_start(data)
            if start is None:
                self.add("numpy.invalid_header", label, "numpy", "the header does not parse")
            elif start >= 0:  # object arrays are pickled after the header
                self.pickle(data, label, start=start)
            return "numpy"
        if _is_hdf5(data):
            for doc in _hdf5_configs(data):
                self.keras(doc, label, "hdf5")
            return "hdf5"
        header = _safetensors_header(data)
        if header is not None:
            payload = len(data) - 8 - int.from_bytes(data[:8], "little")
            problem = _safetensors_problem(header, payload)
            if problem is not None:
                self.add("safetensors.invalid_header", label, "safetensors", problem)
            return "safetensors"
        if _is_proto(data):
            self.pickle(data, label, deferrable=True)
            return "pickle"
        return self.structured(data, label, where)

    def structured(self, data: bytes, label: str, where: _Where | None) -> str:
        if data[:256].lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"["):
            try:
                doc = json.loads(data.decode("utf-8-sig"))
            except (ValueError, RecursionError):
                pass
            else:
                if b'"class_name"' in data:
                    self.keras(doc, label, "json")
                return "json"
        model = _parse_onnx(data)
        if model is not None:
            self.onnx(model, label, where)
            return "onnx"
        name = PurePosixPath(label).name
        # The SavedModel layout names its graph; the proto starts with schema version 1.
        if name == "saved_model.pb" or data.startswith(b"\x08\x01\x12"):
            self.tf_ops(data, label, text=False)
            return "tf_saved_model"
        if not _is_text(data):
            return "unknown"
        if name == "saved_model.pbtxt" or _SAVED_MODEL_TEXT.match(data[:_PROBE]):
            self.tf_ops(data, label, text=True)
            return "tf_saved_model"
        return "text"

    def unmarked_pickle(self, data: bytes, label: str, kind: str) -> str:
        """Protocol 0 and 1 pickles have no header, and a file can be a pickle and more: bytes
        that start with an opcode are walked, and are a pickle if they import (or, as text or
        unknown bytes, parse to a STOP at their end)."""
        walk = _walk_pickle(data)
        plain = kind in ("text", "unknown")
        if not walk.risky and not (plain and walk.end == len(data)):
            return kind
        if not plain:
            self.add("pickle.polyglot", label, kind, f"this {kind} also parses as a pickle")
        self.pickle(data, label)
        return "pickle" if plain else kind

    # -- archives ------------------------------------------------------------------------------

    def archive(self, data: bytes, label: str, depth: int, kind: str) -> str:
        if depth >= self.limits.max_depth:
            message = f"{kind} nested {depth} deep (max_depth={self.limits.max_depth}): not opened"
            self.add("archive.nested_too_deep", label, kind, message)
        elif kind == "zip":
            return self.zip(data, label, depth)
        elif kind == "tar":
            self.tar(data, label, depth)
        else:
            self.decompress(data, label, depth, kind)
        return kind

    def check_name(self, label: str, name: str, kind: str) -> None:
        path = PurePosixPath(name)
        if not name or "\x00" in name or "\\" in name or path.is_absolute() or ".." in path.parts:
            message = f"member name {name!r} is empty, absolute, has '..', a backslash or NUL"
            self.add("archive.unsafe_path", f"{label}!/{name}", kind, message)

    def ratio_ok(self, label: str, kind: str, size: int, packed: int) -> bool:
        if size < self.limits.ratio_floor or size <= self.limits.max_ratio * max(packed, 1):
            return True
        message = (
            f"{size} bytes from {packed} compressed (max_ratio={self.limits.max_ratio:g}): "
            "a decompression bomb, not expanded"
        )
        self.add("archive.compression_ratio", label, kind, message)
        return False

    def zip(self, data: bytes, label: str, depth: int) -> str:
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except _ZIP_ERRORS as exc:
            self.add("archive.unreadable", label, "zip", f"the zip cannot be read: {exc}")
            return "zip"
        with archive:
            infos = archive.infolist()
            names = [_member_name(info.filename) for info in infos]
            where = _Where(container=label, names=frozenset(names))
            seen: set[str] = set()
            for info, name in zip(infos, names, strict=True):
                if name in seen:
                    message = "the name appears twice: readers differ in which they take"
                    self.add("archive.duplicate_member", f"{label}!/{name}", "zip", message)
                seen.add(name)
                self.check_name(label, info.filename, "zip")
                if not info.is_dir():
                    self.zip_member(archive, info, f"{label}!/{name}", depth, where)
        if "config.json" in seen and seen & {"metadata.json", "model.weights.h5"}:
            return "keras_v3"
        roots = [name.removesuffix("data.pkl") for name in seen if name.endswith("data.pkl")]
        for root in roots:  # torch.save: <root>/data.pkl, and raw storages in <root>/data/
            self.known_data.update(f"{label}!/{n}" for n in seen if n.startswith(f"{root}data/"))
        return "pytorch_zip" if roots else "zip"

    def zip_member(
        self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, label: str, depth: int, at: _Where
    ) -> None:
        if stat.S_ISLNK(info.external_attr >> 16):
            self.add("archive.link", label, "zip", "the member is a symbolic link")
        elif info.flag_bits & 0x1:
            self.add("archive.encrypted_member", label, "zip", "encrypted: not scanned")
        elif self.ratio_ok(label, "zip", info.file_size, info.compress_size) and self.budget(
            label, info.file_size
        ):
            try:
                with archive.open(info) as f:
                    content = f.read(info.file_size)
            except _ZIP_ERRORS as exc:
                self.add("archive.unreadable", label, "zip", f"the member cannot be read: {exc}")
                return
            member_dir = PurePosixPath(_member_name(info.filename)).parent
            self.blob(content, label, depth + 1, replace(at, member_dir=member_dir))

    def tar(self, data: bytes, label: str, depth: int) -> None:
        try:
            # Opened apart from the with block below, so its errors stay apart from the members'.
            archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:")  # noqa: SIM115
        except (tarfile.TarError, *_DECOMPRESS_ERRORS) as exc:
            self.add("archive.unreadable", label, "tar", f"the tar cannot be read: {exc}")
            return
        with archive:
            infos = archive.getmembers()
            where = _Where(container=label, names=frozenset(_member_name(i.name) for i in infos))
            for info in infos:
                self.check_name(label, info.name, "tar")
                self.tar_member(archive, info, label, depth, where)

    def tar_member(
        self, archive: tarfile.TarFile, info: tarfile.TarInfo, tar: str, depth: int, at: _Where
    ) -> None:
        name = _member_name(info.name)
        label = f"{tar}!/{name}"
        if info.issym() or info.islnk():
            self.add("archive.link", label, "tar", f"a link to {info.linkname!r}")
        elif not info.isreg() and not info.isdir():
            self.add("archive.special_member", label, "tar", "a device, FIFO or special file")
        elif info.isreg() and self.budget(label, info.size):
            f = archive.extractfile(info)
            content = f.read(info.size) if f is not None else b""
            self.blob(content, label, depth + 1, replace(at, member_dir=PurePosixPath(name).parent))

    def decompress(self, data: bytes, label: str, depth: int, kind: str) -> None:
        """A gzip, bzip2 or xz stream: read within the ratio limit, then scanned as a file."""
        ratio_cap = int(max(self.limits.ratio_floor, self.limits.max_ratio * len(data)))
        try:
            with _OPENERS[kind](io.BytesIO(data)) as stream:
                content: bytes = stream.read(min(ratio_cap, self.limits.max_file_bytes) + 1)
        except _DECOMPRESS_ERRORS as exc:
            self.add("archive.unreadable", label, kind, f"the {kind} stream cannot be read: {exc}")
            return
        if self.ratio_ok(label, kind, len(content), len(data)):
            name = PurePosixPath(label.rsplit("!/", 1)[-1])
            inner = f"{label}!/{name.stem if name.suffix else name.name}"
            if self.budget(inner, len(content)):
                self.blob(content, inner, depth + 1, None)

    # -- pickles -------------------------------------------------------------------------------

    def pickle(self, data: bytes, label: str, *, start: int = 0, deferrable: bool = False) -> None:
        """Judge the pickle stream at ``start``, and any streams right after it."""
        walk = _walk_pickle(data, start)
        if deferrable and walk.end < 0 and not walk.risky:
            self.pending[label] = self.broken(walk, label)
            return
        for _ in range(16):  # a legacy (pre-zip) torch.save file holds streams back to back
            self.judge(walk, label)
            if walk.end < 0 or walk.end >= len(data):
                break
            message = f"{len(data) - walk.end} bytes after STOP at byte {walk.end - 1}"
            if not _is_proto(data, walk.end):
                self.add("pickle.trailing_data", label, "pickle", message)
                break
            message += ": another pickle stream, as in a legacy (pre-zip) torch.save file"
            self.add("pickle.trailing_data", label, "pickle", message)
            walk = _walk_pickle(data, walk.end)
        for rule, message in _second_opinions(data[start:], label):
            self.add(rule, label, "pickle", message)

    @staticmethod
    def broken(walk: _PickleWalk, label: str) -> Finding:
        rule = "pickle.truncated" if walk.truncated else "pickle.unparseable"
        message = f"the pickle stream at byte {walk.start} does not parse: {walk.error}"
        return Finding(label, "pickle", "critical", rule, message)

    def judge(self, walk: _PickleWalk, label: str) -> None:
        for rule, message in walk.problems:
            self.add(rule, label, "pickle", message)
        if walk.end < 0:
            self.findings.append(self.broken(walk, label))
        imports = ", ".join(sorted({str(g) for g in walk.globals})) or "nothing"
        what = f"pickle stream (protocol {walk.protocol}) at byte {walk.start} imports {imports}"
        if not self.allow_pickle:
            self.add("pickle.not_allowed", label, "pickle", f"{what}; pickles are not allowed")
        elif walk.end >= 0 and not walk.problems:
            self.add("pickle.allowed", label, "pickle", f"{what}, all allowlisted")

    # -- models --------------------------------------------------------------------------------

    def keras(self, doc: Any, label: str, kind: str) -> None:
        for rule, message in _keras_issues(doc):
            self.add(rule, label, kind, message)

    def tf_ops(self, data: bytes, label: str, *, text: bool) -> None:
        for op in _tf_ops(data, text):
            self.add(_TF_OPS[op], label, "tf_saved_model", f"the graph uses the op {op}")

    def onnx(self, model: Any, label: str, where: _Where | None) -> None:
        from onnx import TensorProto

        locations: dict[str, str] = {}
        for tensor in _onnx_tensors(model):
            if tensor.data_location == TensorProto.EXTERNAL:
                entries = {e.key: e.value for e in tensor.external_data}
                locations.setdefault(entries.get("location", ""), tensor.name)
        for location, tensor_name in locations.items():
            what = f"external data location {location!r} (tensor {tensor_name!r})"
            self.external_data(location, what, label, where)
        self.onnx_domains(model, label)

    def external_data(self, location: str, what: str, label: str, where: _Where | None) -> None:
        """External data must stay in the model's folder, symbolic links resolved."""
        problem = _location_problem(location)
        if problem is not None:
            self.add("onnx.external_data_escape", label, "onnx", f"{what} {problem}")
            return
        if where is None:
            return
        if where.folder is not None and where.root is not None:
            target = (where.folder / location).resolve()
            if not target.is_relative_to(where.folder):
                message = f"{what} resolves to {str(target)!r}, outside the model folder"
                self.add("onnx.external_data_escape", label, "onnx", message)
                return
            exists, ref = target.is_file(), target.relative_to(where.root).as_posix()
        else:
            member = (where.member_dir / location).as_posix()
            exists, ref = member in where.names, f"{where.container}!/{member}"
        if not exists:
            self.add("onnx.external_data_missing", label, "onnx", f"{what}: no such file")
        self.known_data.add(ref)

    def onnx_domains(self, model: Any, label: str) -> None:
        used: dict[str, set[str]] = {opset.domain: set() for opset in model.opset_import}
        for node in _onnx_nodes(model):
            used.setdefault(node.domain, set()).add(node.op_type)
        local = {(f.domain, f.name) for f in model.functions}
        for domain, ops in sorted(used.items()):
            if domain not in _STANDARD_DOMAINS:
                listed = [f"{op} (local function)" if (domain, op) in local else op for op in ops]
                message = f"custom domain {domain!r}: {', '.join(sorted(listed)) or 'no op used'}"
                self.add("onnx.custom_domain", label, "onnx", message)
        for f in model.functions:
            message = f"model-local function {f.domain}.{f.name} ({len(f.node)} nodes)"
            self.add("onnx.local_function", label, "onnx", message)

    # -- folders on disk -----------------------------------------------------------------------

    def folder(self, root: Path) -> None:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            here = Path(dirpath)
            links = [name for name in dirnames if (here / name).is_symlink()]
            for name in sorted(filenames) + links:
                self.disk_file(here / name, root)

    def disk_file(self, path: Path, root: Path) -> None:
        label = path.relative_to(root).as_posix()
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            self.symlink(path, root, label)
        elif not stat.S_ISREG(info.st_mode):
            self.add("file.special", label, "special", "a device, FIFO or socket")
        elif self.budget(label, info.st_size):
            try:
                data = path.read_bytes()
            except OSError as exc:
                self.add("file.unreadable", label, "unknown", f"it cannot be read: {exc}")
                return
            self.blob(data, label, 0, _Where(folder=path.parent, root=root))

    def symlink(self, path: Path, root: Path, label: str) -> None:
        target = path.resolve()
        if not target.is_relative_to(root):
            message = f"a symbolic link to {str(target)!r}, outside the scanned folder"
            self.add("file.symlink_escape", label, "symlink", message)
        elif not target.exists():
            self.add("file.symlink_broken", label, "symlink", "a dangling symbolic link")
        else:
            message = f"a symbolic link to {target.relative_to(root).as_posix()!r}, scanned there"
            self.add("file.symlink", label, "symlink", message)


def scan_path(
    path: str | os.PathLike[str], *, allow_pickle: bool = False, limits: ScanLimits | None = None
) -> ScanReport:
    """Scan a file, or a model folder and every file below it, by content.

    Args:
        path: A file, or a folder such as an unpacked archive or a SavedModel.
        allow_pickle: Accept pickle streams whose imports are all in :data:`PICKLE_ALLOWLIST`;
            without it every pickle stream is a critical finding (``pickle.not_allowed``).
        limits: Bounds on nesting, members and bytes; :class:`ScanLimits` by default.

    Returns:
        The report; ``report.ok`` is False when a finding is critical or high.

    Raises:
        InvalidRequestError: the path does not exist.
    """
    base = Path(path)
    if not base.exists():
        message = f"[security] no such file or folder: {str(base)!r}"
        raise InvalidRequestError(message, field="storage_url")
    scanner = _Scanner(allow_pickle, limits or ScanLimits())
    resolved = base.resolve()
    if resolved.is_dir():
        scanner.folder(resolved)
    else:
        scanner.disk_file(resolved, resolved.parent)
    return scanner.report()


def scan_bytes(
    data: bytes, name: str, *, allow_pickle: bool = False, limits: ScanLimits | None = None
) -> ScanReport:
    """Scan one file's bytes, by content; ``name`` only labels the findings.

    The external data of an ONNX model is checked for paths that leave its folder, but not
    for existence: there is no folder.

    Args:
        data: The file's bytes.
        name: What to call it in findings.
        allow_pickle: As for :func:`scan_path`.
        limits: As for :func:`scan_path`.

    Returns:
        The report; ``report.ok`` is False when a finding is critical or high.
    """
    scanner = _Scanner(allow_pickle, limits or ScanLimits())
    if scanner.budget(name, len(data)):
        scanner.blob(bytes(data), name, 0, None)
    return scanner.report()
