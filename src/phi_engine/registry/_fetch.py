"""Fetching an artifact by URL through fsspec, streamed to a local file with a size limit.

Schemes: a plain local path, ``file://``, ``http(s)://`` (fsspec's aiohttp backend, the default
install), ``s3://`` (the ``s3`` extra, s3fs), and whatever else fsspec knows (``gs://`` with
gcsfs, ``az://`` with adlfs) when its package is installed.

S3 endpoints: credentials and region come from the usual AWS sources (environment, profile,
instance role). A non-AWS endpoint (MinIO, moto, Ceph) is taken from ``AWS_ENDPOINT_URL_S3`` or
else ``AWS_ENDPOINT_URL``, the variables the AWS SDKs define
(https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html); it is passed to s3fs
explicitly so it holds whatever botocore version is installed.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

from phi_engine.errors import InvalidRequestError, PhiEngineError, UnsupportedError
from phi_engine.registry._store import CHUNK

__all__ = ["CONNECT_TIMEOUT_S", "READ_TIMEOUT_S", "Fetched", "fetch", "redact"]

CONNECT_TIMEOUT_S = 10.0
"""An unreachable host fails within this, rather than hanging a registration."""
READ_TIMEOUT_S = 60.0
"""A stalled transfer (no byte for this long) fails."""

_FIELD = "storage_url"


@dataclass(frozen=True)
class Fetched:
    """A fetched artifact: where it landed, and the digest and size of the bytes received."""

    path: Path
    sha256: str
    size_bytes: int


def redact(url: str) -> str:
    """The URL without user info or query string (they may hold credentials), for messages.

    Local paths and ``file://`` URLs are returned unchanged: ``?`` and ``#`` are plain
    characters in a file name.
    """
    if "://" not in url or url.startswith("file://"):
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def fetch(url: str, dest: Path, *, max_bytes: int, progress: bool = False) -> Fetched:
    """Copy the object at ``url`` to the new file ``dest``, hashing as it streams.

    Args:
        url: The storage URL (see the module docstring for schemes).
        dest: A file that must not exist yet; removed again on failure.
        max_bytes: The most bytes accepted; the transfer stops as soon as it passes them.
        progress: Show a tqdm progress bar on stderr.

    Returns:
        Where the bytes are, their SHA-256 and size.

    Raises:
        InvalidRequestError: unknown scheme, no such object, unreachable host, or too large
            (``field="storage_url"``).
        UnsupportedError: the scheme needs a package that is not installed.
    """
    try:
        fs, path = _filesystem(url)
        size = _declared_size(fs, path, url, max_bytes)
        with _open(fs, path) as source:
            return _stream(source, dest, url, size, max_bytes, progress)
    except PhiEngineError:
        dest.unlink(missing_ok=True)
        raise
    except Exception as exc:
        dest.unlink(missing_ok=True)
        raise _describe(url, exc) from exc


def _filesystem(url: str) -> tuple[Any, str]:
    import fsspec
    from fsspec.utils import get_protocol

    if "::" in url:
        # Chained URLs (e.g. zip://m.onnx::s3://...) would bypass our archive checks.
        raise InvalidRequestError(
            f"[registry] chained fsspec URLs are not accepted: {redact(url)!r}", field=_FIELD
        )
    protocol = get_protocol(url)
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError as exc:
        raise InvalidRequestError(
            f"[registry] unknown storage scheme {protocol!r} in {redact(url)!r}; use a local "
            "path, file://, http(s)://, s3://, gs:// or az://",
            field=_FIELD,
        ) from exc
    except ImportError as exc:
        raise UnsupportedError(
            f"[registry] storage scheme {protocol!r} needs a package that is not installed: {exc}",
            field=_FIELD,
        ) from exc
    fs, path = fsspec.core.url_to_fs(url, skip_instance_cache=True, **_options(protocol))
    return fs, path


def _options(protocol: str) -> dict[str, Any]:
    """Per-scheme fsspec options: timeouts everywhere, the S3 endpoint from the environment."""
    if protocol in ("http", "https"):
        import aiohttp

        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S
        )
        return {"client_kwargs": {"timeout": timeout}}
    if protocol in ("s3", "s3a"):
        options: dict[str, Any] = {
            "config_kwargs": {
                "connect_timeout": CONNECT_TIMEOUT_S,
                "read_timeout": READ_TIMEOUT_S,
                "retries": {"max_attempts": 2, "mode": "standard"},
            }
        }
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
        return options
    return {}


def _declared_size(fs: Any, path: str, url: str, max_bytes: int) -> int | None:
    info = fs.info(path)
    if info.get("type") == "directory":
        raise InvalidRequestError(
            f"[registry] {redact(url)!r} is a directory; give the model file or an archive",
            field=_FIELD,
        )
    size = info.get("size")
    if isinstance(size, int) and size > max_bytes:
        raise _too_large(url, max_bytes)
    return size if isinstance(size, int) else None


def _open(fs: Any, path: str) -> BinaryIO:
    # block_size=0 makes fsspec's HTTP file a plain stream: no range requests, no size needed.
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    kwargs = {"block_size": 0} if "http" in protocols or "https" in protocols else {}
    source: BinaryIO = fs.open(path, "rb", **kwargs)
    return source


def _stream(
    source: BinaryIO, dest: Path, url: str, size: int | None, max_bytes: int, progress: bool
) -> Fetched:
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    received = 0
    with (
        dest.open("xb") as out,
        tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=Path(urlsplit(url).path).name or "download",
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        # Count what arrives, not what was declared: a server may lie about the length.
        while chunk := source.read(CHUNK):
            received += len(chunk)
            if received > max_bytes:
                raise _too_large(url, max_bytes)
            digest.update(chunk)
            out.write(chunk)
            bar.update(len(chunk))
    return Fetched(dest, digest.hexdigest(), received)


def _too_large(url: str, max_bytes: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"[registry] {redact(url)!r} is larger than max_bytes={max_bytes}", field=_FIELD
    )


def _root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return exc


def _describe(url: str, exc: Exception) -> PhiEngineError:
    """A clear InvalidRequestError for a failed fetch (fsspec's own errors are terse)."""
    where = redact(url)
    cause = _root_cause(exc)
    if isinstance(exc, FileNotFoundError) and cause is exc:
        message = f"no file or object at {where!r}"
    elif isinstance(exc, PermissionError):
        message = f"access to {where!r} was denied: {exc}"
    elif isinstance(exc, IsADirectoryError):
        message = f"{where!r} is a directory; give the model file or an archive"
    else:
        # fsspec's HTTP backend reports a refused connection as FileNotFoundError; the cause
        # says what really happened.
        message = f"could not fetch {where!r}: {_reason(cause)}"
    return InvalidRequestError(f"[registry] {message}", field=_FIELD)


def _reason(cause: BaseException) -> str:
    """What went wrong, in words rather than Python's: the connection refused, the host not
    found, else an OS error's text without its errno and path (the client named the path
    already), else the exception's message."""
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, socket.gaierror):
        return f"host not found ({cause.strerror})" if cause.strerror else "host not found"
    if isinstance(cause, OSError) and cause.strerror:
        return str(cause.strerror)
    return str(cause) or type(cause).__name__
