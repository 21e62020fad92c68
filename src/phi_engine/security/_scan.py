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

import dataclasses
import io
import json
import os
import stat
import tarfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from phi_engine.errors import InvalidRequestError
from phi_engine.security._scan_formats import (
    _CONTAINERS,
    _DECOMPRESS_ERRORS,
    _OPENERS,
    _PROBE,
    _SAVED_MODEL_TEXT,
    _STANDARD_DOMAINS,
    _TF_OPS,
    _ZIP_ERRORS,
    _archive_kind,
    _hdf5_configs,
    _is_hdf5,
    _is_text,
    _keras_issues,
    _location_problem,
    _npy_pickle_start,
    _onnx_nodes,
    _onnx_tensors,
    _parse_onnx,
    _safetensors_header,
    _safetensors_problem,
    _second_opinions,
    _tf_ops,
)
from phi_engine.security._scan_pickle import (
    _PICKLE_OPCODES,
    PICKLE_ALLOWLIST,
    _is_proto,
    _PickleWalk,
    _walk_pickle,
)

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
        imports = walk.risky or (walk.extension and walk.end >= 0)
        if not imports and not (plain and walk.end == len(data)):
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
        if deferrable and walk.end < 0 and not (walk.risky or walk.extension):
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
