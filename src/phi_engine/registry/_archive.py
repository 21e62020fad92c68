"""Unpacking ``.tar(.gz|.bz2|.xz)``/``.tgz``/``.zip`` archives safely, and finding the model in one.

Every member is checked before a byte is written (CVE-2007-4559 and "zip slip"): no absolute
paths, no ``..`` components, no symbolic or hard links, devices or FIFOs, no duplicate names, and
declared sizes within the limit. Bytes are counted again while they are written, since a
compressed stream may hold more than its header claims (zip bombs). Only regular files and
directories are created, so nothing written can redirect a later write outside the target.
"""

from __future__ import annotations

import lzma
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from phi_engine.errors import InvalidRequestError
from phi_engine.registry._formats import PICKLE_SUFFIXES, pickle_error
from phi_engine.registry._store import CHUNK

__all__ = ["MAX_MEMBERS", "find_model", "unpack"]

MAX_MEMBERS = 10_000
"""More members than any model archive needs; bounds the work of a header-only bomb."""

_FIELD = "storage_url"
_ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    NotImplementedError,  # zip compression methods Python lacks
    RuntimeError,  # encrypted zip members
)


def _refuse(message: str) -> InvalidRequestError:
    return InvalidRequestError(f"[registry] unsafe or invalid archive: {message}", field=_FIELD)


def _safe_relpath(name: str) -> PurePosixPath:
    """A member name as a relative path that stays inside the target directory."""
    path = PurePosixPath(name)
    if not name or "\x00" in name or "\\" in name:
        raise _refuse(f"member name {name!r} is not allowed")
    if path.is_absolute():
        raise _refuse(f"member {name!r} has an absolute path")
    if ".." in path.parts:
        raise _refuse(f"member {name!r} has a '..' component")
    return path


class _Budget:
    """The bytes still allowed, over all members together."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0

    def declare(self, name: str, size: int) -> None:
        if size > self.max_bytes - self.used:
            raise _refuse(f"member {name!r} ({size} bytes) passes max_bytes={self.max_bytes}")

    def spend(self, name: str, size: int) -> None:
        self.used += size
        if self.used > self.max_bytes:
            raise _refuse(f"member {name!r} expands past max_bytes={self.max_bytes}")


def _write(source: IO[bytes], target: Path, name: str, budget: _Budget) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        out = target.open("xb")
    except FileExistsError as exc:
        raise _refuse(f"member {name!r} appears twice") from exc
    with out:
        while chunk := source.read(CHUNK):
            budget.spend(name, len(chunk))
            out.write(chunk)


def _unpack_tar(archive: Path, dest: Path, budget: _Budget) -> list[Path]:
    files: list[Path] = []
    with tarfile.open(archive, mode="r:*") as tar:
        # Iterating reads headers one by one, so a huge member list is caught early.
        for count, member in enumerate(tar, start=1):
            if count > MAX_MEMBERS:
                raise _refuse(f"more than {MAX_MEMBERS} members")
            relative = _safe_relpath(member.name)
            if member.issym() or member.islnk():
                raise _refuse(f"member {member.name!r} is a link")
            if member.isdir():
                (dest / relative).mkdir(parents=True, exist_ok=True)
                continue
            if not relative.parts:
                raise _refuse(f"file member {member.name!r} has an empty name")
            if not member.isfile():
                raise _refuse(f"member {member.name!r} is a device, FIFO or other special file")
            budget.declare(member.name, member.size)
            source = tar.extractfile(member)
            if source is None:
                raise _refuse(f"member {member.name!r} has no data")
            with source:
                _write(source, dest / relative, member.name, budget)
            files.append(relative_path(relative))
    return files


def _check_zip_member(info: zipfile.ZipInfo, budget: _Budget) -> None:
    mode = info.external_attr >> 16  # Unix st_mode, when the archiver recorded one
    if stat.S_ISLNK(mode):
        raise _refuse(f"member {info.filename!r} is a link")
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise _refuse(f"member {info.filename!r} is a device, FIFO or other special file")
    if info.flag_bits & 0x1:
        raise _refuse(f"member {info.filename!r} is encrypted")
    budget.declare(info.filename, info.file_size)


def _unpack_zip(archive: Path, dest: Path, budget: _Budget) -> list[Path]:
    files: list[Path] = []
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise _refuse(f"more than {MAX_MEMBERS} members")
        # A PyTorch checkpoint is a zip around data.pkl: refuse it as a pickle, not as a
        # model-less archive.
        if any(PurePosixPath(i.filename).name == "data.pkl" for i in infos):
            raise pickle_error(f"{archive.name!r} (a zip holding data.pkl, e.g. torch.save)")
        declared = _Budget(budget.max_bytes)
        for info in infos:
            _safe_relpath(info.filename)
            _check_zip_member(info, declared)
            declared.spend(info.filename, info.file_size)
        for info in infos:
            relative = _safe_relpath(info.filename)
            if info.is_dir():
                (dest / relative).mkdir(parents=True, exist_ok=True)
                continue
            if not relative.parts:
                raise _refuse(f"file member {info.filename!r} has an empty name")
            with zf.open(info) as source:
                _write(source, dest / relative, info.filename, budget)
            files.append(relative_path(relative))
    return files


def relative_path(path: PurePosixPath) -> Path:
    """A checked member path as a local relative path."""
    return Path(*path.parts)


def unpack(archive: Path, dest: Path, kind: str, *, max_bytes: int) -> list[Path]:
    """Unpack ``archive`` into the empty directory ``dest``, refusing anything unsafe.

    Args:
        archive: The archive file.
        dest: An empty directory to unpack into.
        kind: ``"tar"`` (plain or gzip/bzip2/xz compressed) or ``"zip"``.
        max_bytes: The most bytes any member, and all members together, may expand to.

    Returns:
        The regular files written, relative to ``dest``.

    Raises:
        InvalidRequestError: an unsafe or corrupt archive (``field="storage_url"``).
        UnsupportedError: a zip that is a pickle-based checkpoint.
    """
    budget = _Budget(max_bytes)
    try:
        if kind == "zip":
            return _unpack_zip(archive, dest, budget)
        return _unpack_tar(archive, dest, budget)
    except _ARCHIVE_ERRORS as exc:
        raise InvalidRequestError(
            f"[registry] cannot read the {kind} archive: {type(exc).__name__}: {exc}",
            field=_FIELD,
        ) from exc


def find_model(files: list[Path]) -> Path:
    """The one ``.onnx`` file among an archive's files.

    Raises:
        InvalidRequestError: there is none, or more than one (the message lists what was found).
        UnsupportedError: there is none but there are pickle-based files.
    """
    models = sorted(f for f in files if f.suffix.lower() == ".onnx")
    if len(models) == 1:
        return models[0]
    if models:
        names = ", ".join(m.as_posix() for m in models)
        raise InvalidRequestError(
            f"[registry] the archive must hold exactly one .onnx file; it holds {len(models)}: "
            f"{names}",
            field=_FIELD,
        )
    pickles = [f.as_posix() for f in files if f.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise pickle_error(f"the archive's {pickles[0]!r}")
    shown = ", ".join(f.as_posix() for f in sorted(files)[:10]) or "no files"
    more = f" and {len(files) - 10} more" if len(files) > 10 else ""
    raise InvalidRequestError(
        f"[registry] the archive must hold exactly one .onnx file; it holds none (found: "
        f"{shown}{more})",
        field=_FIELD,
    )
