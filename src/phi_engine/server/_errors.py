"""Errors as HTTP answers: one JSON shape, the status each ``phi_engine.errors`` class maps to.

API.md "Conventions": every error is ``{"error": {"code", "message", "field"?}}``; validation errors
are 400 naming the field (never FastAPI's default 422); a 500 is a bug and its body leaks nothing
of the internals (the traceback goes to the server's log, under an id the body gives).
"""

from __future__ import annotations

import logging
import math
import re
import secrets
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from phi_engine.errors import PhiEngineError

__all__ = ["error_response", "install_error_handlers", "retry_after", "validation_parts"]

log = logging.getLogger("phi_engine.server")

# HTTP statuses Starlette raises itself (unknown route, wrong method) and their codes.
_HTTP_CODES = {
    400: "invalid_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value (RFC 9110 §10.2.3: whole seconds) that is never too early:
    rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


def error_response(
    status: int, code: str, message: str, field: str | None = None, **headers: str
) -> JSONResponse:
    """The error body API.md specifies."""
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers or None)


# The member of a union that pydantic names in an error's location (``("priority", "str")``
# for ``priority: str | int``): a type, not a field of the request.
_UNION_TAG = re.compile(
    r"(str|int|float|bool|dict|list|literal|none|is-instance|function-\w+)(\[.*\])?"
)


def _field(loc: tuple[Any, ...]) -> str:
    """``("body", "resource_allocation", "cpu")`` -> ``resource_allocation.cpu``."""
    if len(loc) == 2 and loc[0] == "body" and isinstance(loc[1], int):
        return "body"  # a body that is not JSON: pydantic reports a byte offset
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    while len(parts) > 1 and _UNION_TAG.fullmatch(parts[-1]):
        parts.pop()
    return ".".join(parts) or "body"


def bug_parts(exc: BaseException, where: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """A 500 for a bug: logged with its traceback under an incident id, which the body gives
    instead of any internals."""
    incident = secrets.token_hex(6)
    log.error("internal error %s on %s", incident, where, exc_info=exc)
    message = f"internal error (incident {incident}); this is a bug"
    return 500, {"error": {"code": "internal_error", "message": message}}, {}


def engine_error_parts(
    exc: PhiEngineError, where: str
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, body and headers for a ``phi_engine.errors`` exception: the one mapping both the
    app's handler and the fast path use. A 500 is a bug: logged with an incident id, which the
    body gives instead of any internals.

    Args:
        exc: The exception.
        where: The request, for the log (``"POST /v1/inference/run"``).
    """
    if exc.status >= 500 and exc.code == "internal_error":
        return bug_parts(exc, where)
    headers = {}
    if exc.status == 401:  # RFC 6750 §3, RFC 9110 §15.5.2: a 401 names its scheme
        headers["WWW-Authenticate"] = 'Bearer realm="phi-engine"'
    retry = getattr(exc, "retry_after_s", None)
    if retry is not None:
        headers["Retry-After"] = retry_after(retry)
    return exc.status, {"error": exc.to_dict()}, headers


async def _engine_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PhiEngineError)
    status, body, headers = engine_error_parts(exc, f"{request.method} {request.url.path}")
    return JSONResponse(body, status_code=status, headers=headers or None)


def validation_parts(errors: Sequence[Any]) -> tuple[str, str]:
    """The field and message of a 400 for pydantic's (or FastAPI's) validation errors: the
    first error, its location as a dotted field name. The one wording both the app's handler
    and the fast path use."""
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    loc = tuple(first.get("loc", ("body",)))
    field = _field(loc)
    if field == "body" and isinstance(first.get("input"), bytes | bytearray):
        # FastAPI hands a body not sent as JSON (no or another Content-Type) to the model as
        # bytes: say so, rather than that the bytes are not an object.
        return field, "body: send a JSON object, with Content-Type: application/json"
    return field, f"{field}: {first.get('msg', 'invalid value')}"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    field, message = validation_parts(exc.errors())
    return error_response(400, "invalid_request", message, field)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    # FastAPI's own 400 is a body it could not parse (not UTF-8, nested too deeply): name it.
    field = "body" if exc.status_code == 400 else None
    return error_response(exc.status_code, code, str(exc.detail), field)


async def _bug(request: Request, exc: Exception) -> JSONResponse:
    status, body, _ = bug_parts(exc, f"{request.method} {request.url.path}")
    return JSONResponse(body, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception to one JSON error shape."""
    app.add_exception_handler(PhiEngineError, _engine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _bug)
