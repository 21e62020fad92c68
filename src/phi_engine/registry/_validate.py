"""Checking ``Registry.register``'s arguments; every refusal names the parameter at fault."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from phi_engine.errors import InvalidRequestError

__all__ = ["FRAMEWORKS", "check_args", "check_sha256", "to_json"]

FRAMEWORKS = ("onnx", "pytorch", "tensorflow", "sklearn", "jax")
"""Accepted ``framework`` values; all but ``onnx`` mean "exported to ONNX from this framework"."""

_NAME = re.compile(r"(?!\.)[A-Za-z0-9._-]{1,128}")
_VERSION = re.compile(r"(?!\.)[A-Za-z0-9._-]{1,64}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def check_args(
    model_name: object, framework: object, version: object, storage_url: object, max_bytes: object
) -> str:
    """Validate register's arguments; returns the normalised framework."""
    if not isinstance(model_name, str) or not _NAME.fullmatch(model_name):
        raise InvalidRequestError(
            f"[registry] model_name must be 1-128 characters of A-Z a-z 0-9 . _ - not starting "
            f"with '.', got {model_name!r}",
            field="model_name",
        )
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise InvalidRequestError(
            f"[registry] version must be 1-64 characters of A-Z a-z 0-9 . _ - not starting "
            f"with '.', got {version!r}",
            field="version",
        )
    if not isinstance(framework, str) or framework.lower() not in FRAMEWORKS:
        raise InvalidRequestError(
            f"[registry] framework must be one of {', '.join(FRAMEWORKS)} (any case), "
            f"got {framework!r}",
            field="framework",
        )
    if not isinstance(storage_url, str) or not storage_url.strip():
        raise InvalidRequestError(
            "[registry] storage_url must be a non-empty string", field="storage_url"
        )
    if storage_url.lower().startswith("file://") and not urlsplit(storage_url).path.strip():
        # file:// with no path would read as the current directory (and copy all of it)
        raise InvalidRequestError(
            f"[registry] storage_url {storage_url!r} names no file", field="storage_url"
        )
    if type(max_bytes) is not int or max_bytes < 1:
        raise InvalidRequestError(
            f"[registry] max_bytes must be a positive integer, got {max_bytes!r}",
            field="max_bytes",
        )
    return framework.lower()


def check_sha256(sha256: object) -> str | None:
    if sha256 is None:
        return None
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise InvalidRequestError(
            "[registry] sha256 must be 64 hexadecimal characters", field="sha256"
        )
    return sha256.lower()


def to_json(value: Mapping[str, Any] | None, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"[registry] {field} must be an object", field=field)
    try:
        return json.dumps(dict(value), allow_nan=False, sort_keys=True)
    except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise InvalidRequestError(
            f"[registry] {field} must be JSON-serializable: {exc}", field=field
        ) from exc
