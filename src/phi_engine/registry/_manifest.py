"""Per-file SHA-256 manifests of a model as its publisher distributes it.

A model is distributed as one ``.onnx`` file, a directory, or a tar/zip archive of one. Its
manifest lists every regular file (path relative to the model's root, size, SHA-256), sorted by
path. The registry pins the manifest at register; a signature covers the manifest's digest, so
the same signature verifies the same files whether they arrive as a directory, a ``.tar.gz`` or a
``.zip`` (the way OpenSSF model signing treats a model directory).

The digest of a one-file manifest is that file's SHA-256 (so the digest of a plain ``.onnx``
file is what ``sha256sum`` prints, whatever the file is called); the digest of a larger manifest
is the SHA-256 of its canonical JSON (``{"files":[{"path","sha256","size"}...],
"format":"phi-engine-manifest/1"}``, keys sorted, no spaces, UTF-8).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from phi_engine.errors import InvalidRequestError

__all__ = [
    "FORMAT",
    "Manifest",
    "ManifestEntry",
    "build_manifest",
    "copy_directory",
    "list_directory",
    "manifest_of_files",
    "sign_manifest",
]

FORMAT = "phi-engine-manifest/1"
_FIELD = "storage_url"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ManifestEntry:
    """One file: its POSIX path relative to the model's root, size in bytes, SHA-256 (hex)."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The files of a model, sorted by path."""

    files: tuple[ManifestEntry, ...]

    def __post_init__(self) -> None:
        paths = [f.path for f in self.files]
        if not paths:
            raise InvalidRequestError("a manifest lists at least one file", field=_FIELD)
        if paths != sorted(paths) or len(set(paths)) != len(paths):
            raise InvalidRequestError("a manifest's paths are unique and sorted", field=_FIELD)

    @property
    def digest(self) -> str:
        """The SHA-256 that pins and signatures cover (see the module docstring)."""
        if len(self.files) == 1:
            return self.files[0].sha256
        return hashlib.sha256(self.canonical()).hexdigest()

    @property
    def size_bytes(self) -> int:
        """All files together."""
        return sum(f.size for f in self.files)

    def canonical(self) -> bytes:
        """The canonical JSON bytes."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    def to_dict(self) -> dict[str, Any]:
        """``{"format": ..., "files": [{"path", "size", "sha256"}, ...]}``."""
        return {
            "format": FORMAT,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Manifest:
        """The inverse of :meth:`to_dict`.

        Raises:
            InvalidRequestError: not a manifest of this format.
        """
        try:
            if value.get("format") != FORMAT:
                raise ValueError(f"format is not {FORMAT!r}")
            return cls(
                tuple(
                    ManifestEntry(str(f["path"]), int(f["size"]), str(f["sha256"]))
                    for f in value["files"]
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidRequestError(f"not a manifest: {exc}", field="manifest") from exc

    def entry(self, path: str) -> ManifestEntry | None:
        """The entry for ``path``, if listed."""
        return next((f for f in self.files if f.path == path), None)


def _hash_regular(path: Path, shown: str) -> tuple[int, str]:
    """Size and SHA-256 of a regular file, opened without following a symbolic link."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InvalidRequestError(
            f"[registry] {shown!r} cannot be read as a regular file ({exc.strerror}; symbolic "
            "links are refused)",
            field=_FIELD,
        ) from exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise InvalidRequestError(f"[registry] {shown!r} is not a regular file", field=_FIELD)
        digest = hashlib.sha256()
        size = 0
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def manifest_of_files(root: Path, files: Iterable[Path]) -> Manifest:
    """The manifest of ``files`` (paths relative to ``root``), each hashed now."""
    entries = []
    for relative in files:
        posix = PurePosixPath(*relative.parts).as_posix()
        size, sha = _hash_regular(root / relative, posix)
        entries.append(ManifestEntry(posix, size, sha))
    return Manifest(tuple(sorted(entries, key=lambda e: e.path)))


def list_directory(root: Path, *, max_bytes: int) -> list[Path]:
    """The regular files under ``root``, relative to it, refusing anything else.

    Raises:
        InvalidRequestError: a symbolic link, device, FIFO or socket anywhere under ``root``
            (a link could point outside the model), more than ``max_bytes`` in all, or no files.
    """
    files: list[Path] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            path = base / name
            relative = path.relative_to(root).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise InvalidRequestError(
                    f"[registry] {relative!r} in the model directory is a symbolic link; "
                    "links are refused (one could point outside the model)",
                    field=_FIELD,
                )
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise InvalidRequestError(
                    f"[registry] {relative!r} in the model directory is a device, FIFO or "
                    "socket, not a regular file",
                    field=_FIELD,
                )
            total += path.lstat().st_size
            if total > max_bytes:
                raise InvalidRequestError(
                    f"[registry] the model directory holds more than max_bytes={max_bytes}",
                    field=_FIELD,
                )
            files.append(path.relative_to(root))
    if not files:
        raise InvalidRequestError("[registry] the model directory is empty", field=_FIELD)
    return files


def copy_directory(source: Path, dest: Path, *, max_bytes: int) -> list[Path]:
    """Copy a model directory's regular files into the new directory ``dest``.

    Each file is opened without following links and copied from that one descriptor, so a file
    swapped for a link after the listing is refused rather than followed.

    Returns:
        The files copied, relative to ``dest``.

    Raises:
        InvalidRequestError: what :func:`list_directory` refuses, or a file that grew past
            ``max_bytes`` while copied.
    """
    files = list_directory(source, max_bytes=max_bytes)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    budget = max_bytes
    for relative in files:
        shown = relative.as_posix()
        try:
            fd = os.open(source / relative, flags)
        except OSError as exc:
            raise InvalidRequestError(
                f"[registry] {shown!r} cannot be read as a regular file ({exc.strerror})",
                field=_FIELD,
            ) from exc
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(fd, "rb") as src, target.open("xb") as out:
            if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                raise InvalidRequestError(
                    f"[registry] {shown!r} is not a regular file", field=_FIELD
                )
            while chunk := src.read(_CHUNK):
                budget -= len(chunk)
                if budget < 0:
                    raise InvalidRequestError(
                        f"[registry] the model directory holds more than max_bytes={max_bytes}",
                        field=_FIELD,
                    )
                out.write(chunk)
    return files


def build_manifest(path: str | os.PathLike[str], *, max_bytes: int = 4 << 30) -> Manifest:
    """The manifest of a model as a publisher distributes it, to pin or sign before publishing.

    Args:
        path: A model file, a model directory, or a ``.tar(.gz)``/``.zip`` archive of one (its
            members, unpacked with the registry's safety checks, are listed).
        max_bytes: The most bytes read (an archive's members together).

    Raises:
        InvalidRequestError: a missing path, a symbolic link or special file, an unsafe archive.
    """
    from phi_engine.registry._archive import unpack
    from phi_engine.registry._formats import sniff

    root = Path(path)
    try:
        is_dir = root.is_dir() and not root.is_symlink()
        exists = is_dir or root.exists()
    except (OSError, ValueError) as exc:  # e.g. a name too long
        raise InvalidRequestError(
            f"[registry] cannot read {str(root)!r}: {exc}", field=_FIELD
        ) from exc
    if is_dir:
        return manifest_of_files(root, list_directory(root, max_bytes=max_bytes))
    if not exists:
        raise InvalidRequestError(f"[registry] no file or directory {str(root)!r}", field=_FIELD)
    kind = sniff(root)
    if kind in ("tar", "zip"):
        with tempfile.TemporaryDirectory(prefix="phi-manifest-") as tmp:
            files = unpack(root, Path(tmp), kind, max_bytes=max_bytes)
            return manifest_of_files(Path(tmp), files)
    size, sha = _hash_regular(root, root.name)
    return Manifest((ManifestEntry(root.name, size, sha),))


def sign_manifest(private_key: str | bytes, manifest: Manifest | str) -> str:
    """A publisher's Ed25519 signature over a manifest, base64, for ``register(signature=)``.

    Args:
        private_key: The Ed25519 private key: PEM (PKCS#8, unencrypted) or its 32 raw bytes.
        manifest: A :class:`Manifest`, or its digest (hex).
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from phi_engine.registry._signing import signed_message

    if isinstance(private_key, str):
        private_key = private_key.encode()
    key: Any = None
    try:
        if private_key.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(private_key, password=None)
        elif len(private_key) == 32:
            key = Ed25519PrivateKey.from_private_bytes(private_key)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidRequestError(
            f"not a usable private key ({exc}); give an unencrypted PEM or the 32 raw bytes",
            field="private_key",
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidRequestError(
            "the private key must be Ed25519: unencrypted PEM (PKCS#8) or its 32 raw bytes",
            field="private_key",
        )
    digest = manifest.digest if isinstance(manifest, Manifest) else manifest
    return base64.b64encode(key.sign(signed_message(digest))).decode()
