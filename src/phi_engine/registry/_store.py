"""The content-addressed artifact store: ``home/artifacts/sha256/<2 hex>/<hex>.onnx``.

An artifact's name is the SHA-256 of its bytes, so a change at the source can never change a
registered model, identical bytes are stored once, and integrity is checked by re-hashing.

Crash safety (DESIGN.md, "Where the state lives"): bytes go to a temporary name in the final
directory, are fsync'd, renamed over the final name (atomic on POSIX) and the directory is fsync'd,
so a final name only ever holds complete bytes. Callers publish inside the metadata transaction
and before the row is committed: a crash leaves at worst an artifact without a row, which is
harmless and reused by a later registration of the same bytes. Deletion is the reverse: the file
is renamed to a ``.deleted`` name inside the transaction and unlinked after the commit, and
:meth:`ArtifactStore.recover` puts back any whose row survived a crash.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "CHUNK",
    "ArtifactStore",
    "Staged",
    "fsync_dir",
    "read_verified",
    "sha256_file",
    "verify_file",
]

CHUNK = 1 << 20
_SUFFIX = ".onnx"
_TRASH = ".deleted"
_STALE_S = 24 * 3600.0
"""A temporary file this old belongs to a crashed writer (a live one finishes well before)."""


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable (POSIX leaves directory entries in cache)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> tuple[str, int]:
    """The SHA-256 hex digest and size in bytes of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _open_regular(path: Path, what: str) -> BinaryIO:
    """``path`` opened for reading, refusing a symbolic link (``O_NOFOLLOW``) or anything but
    a regular file.

    Raises:
        IntegrityError: missing, a link, or not a regular file (``field="model_id"``).
    """
    from phi_engine.errors import IntegrityError

    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as exc:
        raise IntegrityError(f"[registry] {what} is missing ({path})", field="model_id") from exc
    except OSError as exc:  # ELOOP: a symbolic link where the artifact should be
        raise IntegrityError(
            f"[registry] {what} cannot be opened as a regular file ({exc.strerror}); stored "
            "artifacts are never symbolic links",
            field="model_id",
        ) from exc
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise IntegrityError(f"[registry] {what} is not a regular file", field="model_id")
    return f


def _mismatch(what: str, digest: str, sha256: str) -> Exception:
    from phi_engine.errors import IntegrityError

    return IntegrityError(
        f"[registry] {what} was altered: SHA-256 {digest}, registered {sha256}", field="model_id"
    )


def read_verified(path: Path, sha256: str, what: str = "the artifact") -> bytes:
    """The bytes of a stored artifact, once their SHA-256 matches ``sha256``.

    The bytes returned are the bytes hashed (read once, then used), so nothing can change
    between the check and their use. A symbolic link is refused, and so is anything but a
    regular file.

    Raises:
        IntegrityError: missing, not a regular file, a link, or other bytes
            (``field="model_id"``).
    """
    with _open_regular(path, what) as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise _mismatch(what, digest, sha256)
    return data


def verify_file(path: Path, sha256: str, what: str = "the artifact") -> None:
    """:func:`read_verified` without keeping the bytes (streamed, for periodic checks).

    Raises:
        IntegrityError: as :func:`read_verified`.
    """
    digest = hashlib.sha256()
    with _open_regular(path, what) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != sha256:
        raise _mismatch(what, digest.hexdigest(), sha256)


@dataclass(frozen=True)
class Staged:
    """Bytes written and fsync'd under a temporary name, not yet visible in the store."""

    sha256: str
    size_bytes: int
    temp_path: Path


class ArtifactStore:
    """Artifacts by SHA-256 under ``home/artifacts/sha256``."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.root = home / "artifacts" / "sha256"

    def relpath(self, sha256: str) -> str:
        """The artifact's path relative to the home, as stored in the ``models`` table."""
        return f"artifacts/sha256/{sha256[:2]}/{sha256}{_SUFFIX}"

    def path(self, sha256: str) -> Path:
        """The artifact's absolute path."""
        return self.home / self.relpath(sha256)

    def stage(self, chunks: Iterable[bytes]) -> Staged:
        """Write bytes to a temporary name in their final directory and fsync them.

        The name depends on the digest, which is known only at the end: write to a temporary
        file in the store root first, then move it into its shard (same file system).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        temp = self.root / f".staging-{secrets.token_hex(8)}.tmp"
        digest = hashlib.sha256()
        size = 0
        try:
            with temp.open("xb") as f:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            sha = digest.hexdigest()
            shard = self.path(sha).parent
            created_shard = not shard.exists()
            shard.mkdir(exist_ok=True)
            if created_shard:
                fsync_dir(self.root)
            final_temp = shard / f".{sha}.{secrets.token_hex(8)}.tmp"
            temp.rename(final_temp)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return Staged(sha, size, final_temp)

    def stage_file(self, source: Path) -> Staged:
        """:meth:`stage` the contents of a file."""

        def chunks() -> Iterable[bytes]:
            with source.open("rb") as f:
                while chunk := f.read(CHUNK):
                    yield chunk

        return self.stage(chunks())

    def publish(self, staged: Staged) -> bool:
        """Rename staged bytes to their final name; call inside the metadata transaction.

        ``os.replace`` over an existing artifact is safe (same digest, so the same bytes) and
        repairs one that was altered on disk.

        Returns:
            True when no artifact with this digest existed before (the caller's to remove again
            if its transaction fails).
        """
        final = self.path(staged.sha256)
        created = not final.exists()
        os.replace(staged.temp_path, final)
        fsync_dir(final.parent)
        return created

    def discard(self, staged: Staged) -> None:
        """Remove staged bytes that will not be published."""
        staged.temp_path.unlink(missing_ok=True)

    def unpublish(self, sha256: str) -> None:
        """Remove an artifact this transaction published and is now abandoning."""
        final = self.path(sha256)
        final.unlink(missing_ok=True)
        fsync_dir(final.parent)

    def trash(self, sha256: str) -> Path | None:
        """Move an artifact aside (inside the transaction deleting its last row).

        Returns:
            The trashed file, to :meth:`purge` after the commit or :meth:`restore` after a
            rollback; None when the artifact was already missing.
        """
        final = self.path(sha256)
        trashed = final.with_name(final.name + _TRASH)
        try:
            final.rename(trashed)
        except FileNotFoundError:
            return None
        fsync_dir(final.parent)
        return trashed

    def restore(self, trashed: Path) -> None:
        """Undo :meth:`trash` (the deleting transaction rolled back)."""
        trashed.rename(trashed.with_name(trashed.name.removesuffix(_TRASH)))
        fsync_dir(trashed.parent)

    def purge(self, trashed: Path) -> None:
        """Finish :meth:`trash` once the deletion is committed."""
        trashed.unlink(missing_ok=True)

    def recover(self, referenced: Callable[[str], bool]) -> None:
        """Finish what a crash interrupted; call inside a metadata write transaction.

        A trashed artifact whose row still exists (the delete never committed) is put back, any
        other is removed; temporary files older than a day are removed.

        Args:
            referenced: Whether a model row still names this digest.
        """
        if not self.root.is_dir():
            return
        now = time.time()
        for path in self.root.rglob("*"):
            if path.name.endswith(_TRASH):
                sha = path.name.removesuffix(_SUFFIX + _TRASH)
                final = path.with_name(path.name.removesuffix(_TRASH))
                if referenced(sha) and not final.exists():
                    self.restore(path)
                else:
                    self.purge(path)
            elif path.name.endswith(".tmp"):
                try:
                    stale = now - path.stat().st_mtime > _STALE_S
                except FileNotFoundError:  # another process published or discarded it
                    continue
                if stale:
                    path.unlink(missing_ok=True)
