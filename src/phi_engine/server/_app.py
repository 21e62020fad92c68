"""The embedded HTTP server: a FastAPI app over an ``Engine``, and how to run it with uvicorn."""

from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute

from phi_engine._version import __version__
from phi_engine.engine import Engine
from phi_engine.errors import InvalidRequestError
from phi_engine.observability._metrics import prometheus_text
from phi_engine.security import ServerSettings
from phi_engine.security._checks import is_loopback
from phi_engine.server._auth import Auth
from phi_engine.server._errors import error_response, install_error_handlers
from phi_engine.server._fast import FastInference, declared_length
from phi_engine.server._v1 import v1_router
from phi_engine.server._v2 import v2_router

__all__ = ["DEFAULT_MAX_BODY", "PhiApp", "create_app", "serve"]

DEFAULT_MAX_BODY = 64 << 20

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _BodyLimit:
    """Refuses request bodies over the limit with 413, by header and while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if declared_length(scope.get("headers", ())) > self.limit:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413, "payload_too_large", f"the request body is over {self.limit} bytes"
        )
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


class PhiApp(FastAPI):
    """The FastAPI app, with inline inference served ahead of its whole middleware stack.

    Starlette wraps every request in its error and telemetry middleware and the app's own
    (body limit) before routing; an inline ``POST /v1/inference/run`` or a V2 ``infer`` skips all
    of them and goes to :class:`~phi_engine.server._fast.FastInference`, which answers it (with
    the routes' own checks and functions) or hands it back to the full app
    (``FastAPI.__call__``) with its body replayed.
    """

    fast: FastInference | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast
        if fast is not None and fast.handles(scope):
            await fast(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(
    engine: Engine,
    *,
    auth: bool = True,
    data_dir: str | os.PathLike[str] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    allow_private_urls: bool = False,
) -> FastAPI:
    """The HTTP face of ``engine``: ``/v1`` (the product sheet), health and OpenAPI.

    Args:
        engine: The engine every route translates to.
        auth: Require OAuth 2.0 bearer tokens (``False``: ``--no-auth``, for local use only).
        data_dir: Where batch-job files named by clients live (default ``home/data``); a client
            can name no file outside it.
        max_body_bytes: Larger request bodies are refused with 413.
        allow_private_urls: Let clients register models from URLs on this machine or a private
            network (off: a client could otherwise make the server probe its own network).
    """
    root = _data_dir(engine, data_dir)
    gate = Auth(engine.clients, engine.tokens, enabled=auth)
    app = PhiApp(
        title="phi_engine",
        version=__version__,
        description="Register, deploy and serve AI models: the product sheet's API (/v1) and "
        "the Open Inference Protocol (/v2).",
    )
    install_error_handlers(app)
    app.include_router(v1_router(engine, gate, root, allow_private_urls=allow_private_urls))
    app.include_router(v2_router(engine, gate))

    @app.get("/health/live", tags=["health"])
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @app.get("/health/ready", tags=["health"])
    async def ready() -> JSONResponse:
        states = {d.deployment_id: d.status for d in engine.deployments()}
        ok = not engine.closed and all(s in ("ready", "updating") for s in states.values())
        body = {"status": "ready" if ok else "not_ready", "deployments": states}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=PlainTextResponse,
        dependencies=[Depends(gate.require("logs:read"))],
    )
    async def metrics() -> PlainTextResponse:
        text = prometheus_text(d.gauges() for d in engine.deployments())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.state.engine = engine
    app.state.auth = gate
    app.add_middleware(_BodyLimit, limit=max_body_bytes)

    async def full_app(scope: Scope, receive: Receive, send: Send) -> None:
        await FastAPI.__call__(app, scope, receive, send)

    app.fast = FastInference(full_app, engine=engine, auth=gate, limit=max_body_bytes)
    app.state.security_settings = ServerSettings(
        auth=auth,
        max_body_bytes=max_body_bytes,
        token_rate=gate.token_rate if auth else 0.0,
        unscoped_routes=_unscoped_routes(app),
        open_routes=_OPEN,
    )
    return app


def _unscoped_routes(app: FastAPI) -> tuple[str, ...]:
    """Routes outside the open list that no scope dependency guards (should be none)."""
    out: list[str] = []
    for route in app.routes:
        if not isinstance(route, APIRoute) or route.path in _OPEN:
            continue
        names = {getattr(d.call, "__name__", "") for d in route.dependant.dependencies}
        if not any(n.startswith("requires_") for n in names):
            out.extend(f"{m} {route.path}" for m in sorted(route.methods or ()))
    return tuple(out)


def bind_host(app: FastAPI, host: str) -> None:
    """Tell the app's compliance checks which address it is served on."""
    settings = app.state.security_settings
    app.state.security_settings = dataclasses.replace(settings, host=host)


def serve(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    auth: bool = True,
    data_dir: str | os.PathLike[str] | None = None,
    log_level: str = "info",
) -> None:
    """Run the server in the foreground until interrupted.

    Raises:
        InvalidRequestError: a port outside 0-65535, a ``data_dir`` that cannot be a directory,
            or ``auth=False`` on an address other than loopback.
    """
    import uvicorn

    if isinstance(port, bool) or not isinstance(port, numbers.Integral) or not 0 <= port <= 65535:
        raise InvalidRequestError(
            f"port must be an integer in 0..65535, got {port!r}", field="port"
        )
    if not auth and not is_loopback(host):
        raise InvalidRequestError(
            "serving without authentication is only allowed on a loopback address", field="host"
        )
    app = create_app(engine, auth=auth, data_dir=data_dir)
    bind_host(app, host)
    from phi_engine.server._protocol import http_protocol

    uvicorn.run(app, host=host, port=int(port), log_level=log_level, http=http_protocol())


def _data_dir(engine: Engine, data_dir: str | os.PathLike[str] | None) -> Path:
    """The batch-job data directory, made if missing.

    Raises:
        InvalidRequestError: not a path, or not (and not makeable as) a directory.
    """
    if data_dir is not None and not isinstance(data_dir, str | os.PathLike):
        raise InvalidRequestError("data_dir must be a directory path", field="data_dir")
    root = Path(data_dir) if data_dir is not None else engine.home / "data"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:
        raise InvalidRequestError(
            f"cannot use {str(root)!r} as data_dir: {exc}", field="data_dir"
        ) from exc
    return root


_OPEN = (
    "/health/live",
    "/health/ready",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v1/auth/token",
)
_ERROR_STATUSES = {
    "400": "Invalid request (the field is named)",
    "401": "No or invalid bearer token",
    "403": "The token lacks the route's scope",
    "404": "Unknown id",
    "409": "Conflicts with the current state",
    "413": "The body is too large",
    "429": "Rate limited (see Retry-After)",
    "503": "Shed, overloaded or not ready (the reason is given)",
}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string"},
            },
        }
    },
}
_OAUTH_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
}
# The Open Inference Protocol's inference request (JSON form).
_V2_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"type": "string"},
                    "parameters": {"type": "object"},
                    "data": {},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
            },
        },
    },
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, made to say what the server really does: our error bodies instead of
    the 422 it never sends, the bearer scheme on every gated route, V2's request body."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Error"] = _ERROR
    schemas["OAuthError"] = _OAUTH_ERROR
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    }
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            ref = "OAuthError" if path == "/v1/auth/token" else "Error"
            if path.endswith("/ready"):
                # Readiness answers not-ready with its own body (V2: 400; ours: 503).
                for status in ("400", "503"):
                    responses[status] = {
                        "description": "Not ready",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
            for status, text in _ERROR_STATUSES.items():
                responses.setdefault(
                    status,
                    {
                        "description": text,
                        "content": {
                            "application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}
                        },
                    },
                )
            if path not in _OPEN:
                op["security"] = [{"bearer": []}]
            if "{version}" not in path and "parameters" in op:
                # A handler shared with the versioned route: its version is not a query.
                kept = [
                    p
                    for p in op["parameters"]
                    if not (p.get("in") == "query" and p.get("name") == "version")
                ]
                if kept:
                    op["parameters"] = kept
                else:
                    del op["parameters"]
            if path.startswith("/v2/models/") and path.endswith("/infer") and method == "post":
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": _V2_REQUEST}},
                }
    app.openapi_schema = doc
    return doc
