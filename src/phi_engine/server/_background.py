"""A server running on a thread of its own: for the demo, notebooks and tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from phi_engine.engine import Engine
from phi_engine.errors import PhiEngineError
from phi_engine.server._app import bind_host, create_app
from phi_engine.server._protocol import http_protocol

__all__ = ["running_server"]


@contextmanager
def running_server(
    engine: Engine, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> Iterator[str]:
    """Serve ``engine`` on a background thread; yields the base URL, stops on exit.

    Args:
        engine: What to serve.
        host: The address (loopback by default).
        port: The port (0: a free one).
        options: Passed to :func:`~phi_engine.server.create_app` (``auth``, ``data_dir``, ...).
    """
    import uvicorn

    app = create_app(engine, **options)
    bind_host(app, host)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", lifespan="off", http=http_protocol()
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="phi-engine-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise PhiEngineError(f"the HTTP server did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()
    try:
        yield f"http://{bound[0]}:{bound[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
