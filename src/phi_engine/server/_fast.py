"""The inference hot path as plain ASGI, ahead of FastAPI's router, dependencies and middleware.

An inline ``POST /v1/inference/run`` is most of a server's traffic, and on a small model the
framework's per-request work (route matching, dependency solving, middleware layers, stdlib JSON)
costs several times the model (``benchmarks/RESULTS.md``, "HTTP serving"). This layer serves such
requests directly: the same body checks (the route's pydantic model), the same bearer check and
scope, the same engine call and the same answer and error bodies. Anything else — batch jobs,
bodies that do not parse, other routes — goes on to the app unchanged, with the body replayed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from pydantic import ValidationError

from phi_engine._native import require_core
from phi_engine.engine import Engine
from phi_engine.errors import InvalidRequestError, PhiEngineError
from phi_engine.security import require_scope
from phi_engine.server._auth import Auth
from phi_engine.server._errors import bug_parts, engine_error_parts, validation_parts
from phi_engine.server._v1 import InferenceRequest, inference_body
from phi_engine.server._v2 import find_deployment, infer_v2
from phi_engine.serving import Deployment

# Bodies are decoded natively with their number arrays read straight into numpy arrays (what
# parse_inputs would make of the lists); anything that is not JSON raises ValueError.
_loads: Callable[[bytes], Any] = require_core().json_loads
_DECODE_ERRORS: tuple[type[Exception], ...] = (ValueError,)

try:  # orjson writes these answers ~5x faster than the standard library
    import orjson

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)

except ImportError:  # pragma: no cover - orjson is in the server extra

    def _dumps(value: Any) -> bytes:
        return json.dumps(value).encode()


__all__ = ["FastInference"]


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = Iterable[tuple[bytes, bytes]]
# An answer: its status, its headers (the content type among them, no length) and its body.
Reply = tuple[int, list[tuple[bytes, bytes]], bytes]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PATH = "/v1/inference/run"
_V2_PREFIX = "/v2/models/"
_JSON = [(b"content-type", b"application/json")]
# Set in a request's scope by a server that already asked :meth:`FastInference.answer` and got
# ``None``: the request goes straight to the full app.
DECLINED = "phi_engine.fast_declined"


class FastInference:
    """ASGI handler serving inline inference requests itself (see the module docstring);
    ``app`` gets every other request."""

    path = _PATH

    def __init__(self, app: ASGIApp, engine: Engine, auth: Auth, limit: int) -> None:
        self.app = app
        self.engine = engine
        self.auth = auth
        self.limit = limit

    @staticmethod
    def handles(scope: Scope) -> bool:
        """Whether a request is one this handler serves (the rest goes to the app)."""
        if scope["type"] != "http" or scope["method"] != "POST" or DECLINED in scope:
            return False
        path: str = scope["path"]
        return path == _PATH or (path.startswith(_V2_PREFIX) and path.endswith("/infer"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.handles(scope):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = scope.get("headers", ())
        v2: tuple[str, Deployment] | None = None  # a V2 request's model name and deployment
        if path != _PATH:
            target = v2_target(path)
            if target is None:  # not an infer route after all: the app's 404
                await self.app(scope, receive, send)
                return
            # The bearer check and the model's lookup before the body is read (as the route
            # does): a client without a token cannot make the server buffer a body.
            checked = self._v2_check(target, path, headers)
            if isinstance(checked, tuple):  # the error's reply
                await _send(send, checked)
                return
            v2 = target[0], checked
        over = declared_length(headers) > self.limit  # refused unread, as the app's limit does
        body = None if over else await _read(receive, self.limit)
        if body is None:
            await _too_large(send, self.limit)
            return
        if v2 is None:
            reply = await self.answer(path, headers, body)
        else:
            reply = await self._v2_answer(*v2, path, headers, body)
        if reply is None:
            await self.app(scope, _replay(body, receive), send)
            return
        await _send(send, reply)

    async def answer(self, path: str, headers: Headers, body: bytes) -> Reply | None:
        """The answer to a whole inline inference request that :meth:`handles` accepts;
        ``None`` when the full app must answer it (batch jobs, bodies that do not parse or
        validate, paths that are not an infer route), which then gets the same body."""
        try:
            if path == _PATH:
                return await self._v1(headers, body)
            target = v2_target(path)
            if target is None:
                return None
            checked = self._v2_check(target, path, headers)
            if isinstance(checked, tuple):  # the error's reply
                return checked
            return await self._v2_answer(target[0], checked, path, headers, body)
        except Exception as exc:  # a bug: logged, answered without internals
            return _error(exc, path)

    async def _v1(self, headers: Headers, body: bytes) -> Reply | None:
        try:
            obj = _loads(body)
        except _DECODE_ERRORS:
            return None  # not JSON: the full route's error
        if type(obj) is not dict:
            return None  # not a JSON object: the full route's error
        data = obj.get("input")
        if type(data) is dict and isinstance(data.get("data"), str):
            return None  # a batch job: the full route
        try:
            return 200, _JSON, await self._infer(headers, obj)
        except ValidationError as exc:  # the route's 400, naming the field
            field, message = validation_parts(exc.errors(include_url=False))
            error = {"code": "invalid_request", "message": message, "field": field}
            return 400, _JSON, _dumps({"error": error})
        except Exception as exc:  # errors by class; a bug is logged, answered without internals
            return _error(exc, _PATH)

    def _check_auth(self, headers: Headers) -> None:
        if self.auth.enabled:
            header = None
            for name, value in headers:
                if name == b"authorization":
                    header = value.decode("latin-1")
                    break
            require_scope(self.auth.verify_header(header), "infer")

    def _v2_check(
        self, target: tuple[str, str | None], path: str, headers: Headers
    ) -> Deployment | Reply:
        """A V2 request's bearer check and model lookup: the deployment, or the error's reply."""
        try:
            self._check_auth(headers)
            return find_deployment(self.engine, *target)
        except Exception as exc:  # errors by class; a bug is logged, answered without internals
            return _error(exc, path)

    async def _v2_answer(
        self, name: str, dep: Deployment, path: str, headers: Headers, raw: bytes
    ) -> Reply:
        """``POST /v2/models/{name}[/versions/{version}]/infer`` once :meth:`_v2_check` passed,
        as the ``/v2`` route does it (the same function computes the answer), without the
        framework around it."""
        try:
            length = None
            for key, value in headers:
                if key == b"inference-header-content-length":
                    length = value.decode("latin-1")
                    break
            payload, media_type, extra = await infer_v2(self.engine, dep, name, raw, length)
        except Exception as exc:  # errors by class; a bug is logged, answered without internals
            return _error(exc, path)
        out = [(b"content-type", media_type.encode())]
        out += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        return 200, out, payload

    async def _infer(self, headers: Headers, obj: dict[str, Any]) -> bytes:
        self._check_auth(headers)
        fields = _plain_fields(obj)
        if fields is None:  # anything unusual: the route's model decides (and names the field)
            req = InferenceRequest.model_validate(obj)
            if req.async_:  # as the route says it (only batch jobs run asynchronously)
                raise InvalidRequestError(
                    "async applies to batch jobs (input.data a file URI)", field="async"
                )
            fields = (req.deployment_id, req.priority, req.deadline_ms, req.execution_policy)
        deployment_id, priority, deadline_ms, policy = fields
        result = await self.engine.ainfer(
            deployment_id,
            obj["input"]["data"],
            priority=priority,
            deadline_ms=deadline_ms,
            execution_policy=policy,
        )
        return _dumps(inference_body(result))


def v2_target(path: str) -> tuple[str, str | None] | None:
    """The model name and version of a V2 infer path (``/v2/models/{name}/infer`` or
    ``/v2/models/{name}/versions/{version}/infer``); ``None`` for any other path."""
    if not path.startswith(_V2_PREFIX) or not path.endswith("/infer"):
        return None
    parts = path[len(_V2_PREFIX) :].split("/")
    if len(parts) == 2 and parts[0]:
        return parts[0], None
    if len(parts) == 4 and parts[0] and parts[1] == "versions" and parts[2]:
        return parts[0], parts[2]
    return None


_PLAIN_KEYS = frozenset(("deployment_id", "input", "priority", "deadline_ms", "execution_policy"))
_MAX_INT_DEADLINE = 1 << 1000  # an int above this may not convert to a float


def _plain_fields(obj: dict[str, Any]) -> tuple[str, str | int, float | None, str | None] | None:
    """The fields of the common inline body, when each is plainly what ``InferenceRequest``
    accepts as is (so validating it would change nothing); ``None`` for anything else."""
    data = obj.get("input")
    if not _PLAIN_KEYS.issuperset(obj) or type(data) is not dict or len(data) != 1:
        return None
    if "data" not in data:
        return None
    deployment_id = obj.get("deployment_id")
    priority = obj.get("priority", "normal")
    deadline = obj.get("deadline_ms")
    policy = obj.get("execution_policy")
    if type(deployment_id) is not str or type(priority) not in (str, int):
        return None
    if policy is not None and type(policy) is not str:
        return None
    if deadline is not None:
        if type(deadline) not in (int, float) or not 0 < deadline < math.inf:
            return None
        if type(deadline) is int and deadline > _MAX_INT_DEADLINE:
            return None  # too large for a float: the model refuses it, naming deadline_ms
        deadline = float(deadline)
    return deployment_id, priority, deadline, policy


def _error(exc: Exception, path: str) -> Reply:
    """The same status, body and headers as the app's handlers: ``phi_engine.errors`` by
    their class, anything else as a bug (logged with an incident id, no internals)."""
    where = f"POST {path}"
    if isinstance(exc, PhiEngineError):
        status, body, headers = engine_error_parts(exc, where)
    else:
        status, body, headers = bug_parts(exc, where)
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return status, _JSON + raw, _dumps(body)


async def _send(send: Send, reply: Reply) -> None:
    status, headers, payload = reply
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _too_large(send: Send, limit: int) -> None:
    message = f"the request body is over {limit} bytes"
    await _send(
        send, (413, _JSON, _dumps({"error": {"code": "payload_too_large", "message": message}}))
    )


def declared_length(headers: Headers) -> int:
    """The request's Content-Length (0 when absent or not a number: chunked, or refused by the
    parser already)."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


async def _read(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body already read, then the client's own messages."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
