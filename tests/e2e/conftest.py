"""A real server on loopback: uvicorn serving the app of an engine in a temporary home."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server extra is not installed")
pytest.importorskip("uvicorn", reason="the server extra is not installed")
httpx = pytest.importorskip("httpx")

import uvicorn  # noqa: E402

from phi_engine.engine import Engine  # noqa: E402
from phi_engine.server import create_app, http_protocol  # noqa: E402


@dataclass
class Server:
    """A running server: its engine, base URL and an admin client's credentials."""

    engine: Engine
    url: str
    client_id: str
    client_secret: str
    data_dir: Path

    def token(self, scope: str | None = None) -> str:
        body = {
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "grant_type": "client_credentials",
        }
        if scope:
            body["scope"] = scope
        r = httpx.post(f"{self.url}/v1/auth/token", json=body, timeout=30)
        r.raise_for_status()
        return str(r.json()["access_token"])

    def client(self, scope: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(scope)}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


def start(app: object, http: object = None) -> tuple[uvicorn.Server, threading.Thread, str]:
    """Serve ``app`` on a free loopback port with ``http`` (default: phi_engine's protocol, as
    ``serve`` runs it; ``"httptools"``: uvicorn's own, so the app's ASGI fast path answers)."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
        http=http_protocol() if http is None else http,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


@contextmanager
def serving(app: object, http: object = None) -> Iterator[str]:
    """:func:`start`, stopped on exit; yields the base URL."""
    uv, thread, url = start(app, http)
    try:
        yield url
    finally:
        uv.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    engine = Engine(tmp_path / "home")
    admin = engine.clients.create(["admin"], name="tests")
    try:
        with serving(create_app(engine)) as url:
            yield Server(engine, url, admin.client_id, admin.client_secret, engine.home / "data")
    finally:
        engine.close()


def split_responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a byte stream into HTTP responses (Content-Length or chunked)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding") == "chunked":  # what the ASGI path sends
            body = b""
            while True:
                size, _, rest = rest.partition(b"\r\n")
                n = int(size, 16)
                body, rest = body + rest[:n], rest[n + 2 :]
                if n == 0:
                    break
            out.append((status, headers, body))
            raw = rest
            continue
        n = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:n]))
        raw = rest[n:]
    return out
