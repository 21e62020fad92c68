"""uvicorn's httptools protocol, with inline inference answered from the protocol itself.

Under uvicorn an ASGI request costs, before the app runs, a request cycle with its event, the
scope, the proxy-headers middleware, and ``receive``/``send`` message dictionaries whose headers
are checked one by one (``benchmarks/RESULTS.md``, "phi_engine's HTTP protocol": a raw ASGI
constant endpoint takes 28 µs of CPU per request over loopback, the same answer written by the
protocol 17 µs).
For the two inline inference routes, :class:`~phi_engine.server._fast.FastInference` already
skips the framework; this protocol also skips the ASGI layer: it waits for the whole body (as
the handler would read it), asks :meth:`FastInference.answer` and writes the response itself,
with uvicorn's default headers, keep-alive, pipelining and access log. Everything else —
other routes, bodies over 64 KiB (streamed to the app as usual), ``Expect: 100-continue``, a
request the handler declines — runs the ASGI app exactly as uvicorn would.

:func:`http_protocol` gives uvicorn's ``http`` setting: this class, or ``"auto"`` where
uvicorn's httptools protocol is missing or lacks what the class builds on (then the ASGI fast
path alone serves these routes).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from typing import Any

from phi_engine.server._fast import DECLINED, FastInference, declared_length

__all__ = ["find_fast", "http_protocol"]

_log = logging.getLogger("phi_engine.server")

# What this module uses of uvicorn's protocol and request cycle (uvicorn >= 0.35).
_PROTOCOL_NEEDS = ("_start_asgi_task", "on_body", "on_message_complete", "connection_lost")
_CYCLE_NEEDS = (
    "body",
    "more_body",
    "on_response",
    "default_headers",
    "keep_alive",
    "disconnected",
    "message_event",
    "waiting_for_100_continue",
    "response_started",
    "response_complete",
)


def find_fast(app: Any) -> FastInference | None:
    """The :class:`FastInference` handler of a phi_engine app, looked for through the
    middleware uvicorn itself wraps around it; ``None`` when anything else wraps the app (the
    user's own middleware, such as CORS or an allow-list, must see every request)."""
    from uvicorn.middleware.message_logger import MessageLoggerMiddleware
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    for _ in range(4):
        fast = getattr(app, "fast", None)
        if isinstance(fast, FastInference):
            return fast
        if type(app) not in (ProxyHeadersMiddleware, MessageLoggerMiddleware):
            return None
        app = app.app
    return None


def http_protocol() -> type[asyncio.Protocol] | str:
    """uvicorn's ``http`` setting for a phi_engine app: the protocol class that answers inline
    inference itself, or ``"auto"`` where it cannot be built on the installed uvicorn."""
    return _protocol_class() or "auto"


@functools.cache
def _protocol_class() -> type[asyncio.Protocol] | None:
    try:
        from uvicorn.protocols.http import httptools_impl as impl
        from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
        from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string
    except ImportError:  # no httptools: uvicorn serves with h11 and the ASGI fast path
        return None
    base, cycle = impl.HttpToolsProtocol, impl.RequestResponseCycle
    sets = cycle.__init__.__code__.co_names  # the attributes a cycle's __init__ sets
    if (
        not all(hasattr(base, name) for name in _PROTOCOL_NEEDS)
        or not hasattr(cycle, "run_asgi")
        or not all(name in sets for name in _CYCLE_NEEDS)
        or not hasattr(impl, "STATUS_LINE")
    ):
        import uvicorn

        version = getattr(uvicorn, "__version__", "?")
        _log.info("uvicorn %s: inline inference served through ASGI", version)
        return None
    status_lines: dict[int, bytes] = impl.STATUS_LINE

    class PhiHttpToolsProtocol(base):  # type: ignore[misc, valid-type]
        """uvicorn's httptools protocol; inline inference is answered here (module docstring)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.fast = find_fast(self.app)
            # Bodies up to this size are held and answered here; a larger one goes to the app
            # as it comes (its ASGI fast path streams it and answers 413 over the app's limit).
            self.hold = min(HIGH_WATER_LIMIT, self.fast.limit) if self.fast else 0
            # Proxies' client addresses are uvicorn's middleware's to rewrite, for the log.
            self.proxied = self.access_log and self.config.proxy_headers
            self.held: tuple[Any, Any] | None = None  # a fast request waiting for its body

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            fast = self.fast
            if (
                fast is None
                or app is not self.app  # e.g. uvicorn's 503 for too many connections
                or cycle.waiting_for_100_continue
                or len(cycle.body) > self.hold  # a pipelined request's body can be here already
                or not fast.handles(cycle.scope)
                or (self.proxied and _forwarded(cycle.scope))
                or (cycle.more_body and declared_length(cycle.scope["headers"]) > self.hold)
            ):
                # A body declared larger than what is held here goes to the app at once, which
                # refuses one over its limit by the header alone, before any of it is sent.
                super()._start_asgi_task(cycle, app)
            elif cycle.more_body:
                self.held = (cycle, app)  # answered once the body is complete
            else:  # a pipelined request, its body already here
                self._answer(cycle, app)

        def on_body(self, body: bytes) -> None:
            super().on_body(body)
            held = self.held
            if held is not None and len(held[0].body) > self.hold:
                self.held = None
                super()._start_asgi_task(*held)

        def on_message_complete(self) -> None:
            super().on_message_complete()
            held = self.held
            if held is not None:
                self.held = None
                self._answer(*held)

        def connection_lost(self, exc: Exception | None) -> None:
            self.held = None
            super().connection_lost(exc)

        def _answer(self, cycle: Any, app: Any) -> None:
            coro = self._reply(cycle, app)
            if getattr(self.config, "reset_contextvars", False):  # as uvicorn starts a task
                task = self.loop.create_task(coro, context=contextvars.Context())
            else:
                task = self.loop.create_task(coro)
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)

        async def _reply(self, cycle: Any, app: Any) -> None:
            scope = cycle.scope
            assert self.fast is not None
            try:
                reply = await self.fast.answer(scope["path"], scope["headers"], bytes(cycle.body))
                if reply is None:  # the full app answers, reading the same body
                    scope[DECLINED] = True
                    await cycle.run_asgi(app)
                    return
                if self.flow.write_paused and not cycle.disconnected:
                    await self.flow.drain()
                if not cycle.disconnected and not self.transport.is_closing():
                    self._write(cycle, *reply)
            except BaseException as exc:  # as uvicorn's run_asgi: logged, the connection closed
                if not isinstance(exc, asyncio.CancelledError):
                    _log.error("inline inference answer failed", exc_info=exc)
                if not self.transport.is_closing():
                    self.transport.close()
                if isinstance(exc, asyncio.CancelledError):
                    raise

        def _write(
            self, cycle: Any, status: int, headers: list[tuple[bytes, bytes]], payload: bytes
        ) -> None:
            scope = cycle.scope
            out = [status_lines[status]]
            for name, value in cycle.default_headers:
                out += [name, b": ", value, b"\r\n"]
            for name, value in headers:
                out += [name, b": ", value, b"\r\n"]
            out.append(b"content-length: %d\r\n" % len(payload))
            if not cycle.keep_alive:
                out.append(b"connection: close\r\n")
            out += [b"\r\n", payload]
            self.transport.write(b"".join(out))
            cycle.response_started = cycle.response_complete = True
            cycle.message_event.set()
            if self.access_log:
                self.access_logger.info(
                    '%s - "%s %s HTTP/%s" %d',
                    get_client_addr(scope),
                    scope["method"],
                    get_path_with_query_string(scope),
                    scope["http_version"],
                    status,
                )
            if not cycle.keep_alive:
                self.transport.close()
            cycle.on_response()

    return PhiHttpToolsProtocol


def _forwarded(scope: Any) -> bool:
    """Whether a request names a client behind a proxy (uvicorn's middleware rewrites those)."""
    return any(name in (b"x-forwarded-for", b"x-forwarded-proto") for name, _ in scope["headers"])
