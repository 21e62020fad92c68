"""phi_engine's HTTP protocol (inline inference answered without the ASGI layer) against
uvicorn's own protocol with the app's ASGI fast path, and against the FastAPI routes alone:
the same answers, and HTTP/1.1 kept (keep-alive, pipelining, large bodies, 100-continue,
``Connection: close``, HTTP/1.0, clients that leave)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from phi_engine.server import create_app, http_protocol
from phi_engine.server._protocol import find_fast
from phi_test_models.tiny import mlp, mlp_reference

from .conftest import Server, serving, split_responses


@pytest.fixture
def deployed(server: Server, tmp_path: Path) -> tuple[Server, str]:
    m = server.engine.register("mlp", "onnx", "1.0.0", str(mlp(tmp_path / "mlp.onnx", seed=0)))
    return server, server.engine.deploy(m.model_id, resource_allocation={"cpu": 1}).deployment_id


@pytest.fixture
def others(server: Server) -> Iterator[dict[str, str]]:
    """Two more servers on the same engine: uvicorn's protocol with the ASGI fast path, and
    uvicorn's protocol with the routes alone (the fast path off)."""
    asgi = create_app(server.engine)
    routed = create_app(server.engine)
    routed.fast = None  # type: ignore[attr-defined]
    with serving(asgi, http="httptools") as a, serving(routed, http="httptools") as r:
        yield {"asgi": a, "routes": r}


def test_the_protocol_is_what_the_installed_uvicorn_serves_with(server: Server) -> None:
    """CI's uvicorn has what the protocol builds on: a change there fails here, not silently
    back to the slower path."""
    cls = http_protocol()
    assert not isinstance(cls, str), "phi_engine's protocol could not be built on this uvicorn"
    app = create_app(server.engine)
    assert find_fast(app) is app.fast is not None  # type: ignore[attr-defined]
    assert find_fast(object()) is None


def _raw(url: str, data: bytes, *, until_closed: bool = False, timeout: float = 30) -> bytes:
    """Send raw bytes to the server; read until the answer(s) stop coming."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        s.settimeout(timeout if until_closed else 2.0)
        try:
            while chunk := s.recv(65536):
                out += chunk
        except TimeoutError:
            pass
    return out


def _request(path: str, body: bytes, headers: dict[str, str], version: str = "1.1") -> bytes:
    head = [f"POST {path} HTTP/{version}", "Host: t", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_inline_inference_answers_alike_on_every_path(
    deployed: tuple[Server, str], others: dict[str, str]
) -> None:
    server, dep = deployed
    token = {"Authorization": f"Bearer {server.token()}", "Content-Type": "application/json"}
    x = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
    v1 = {"deployment_id": dep, "input": {"data": x.tolist()}}
    tensor = {"name": "x", "shape": [3, 4], "datatype": "FP32", "data": x.ravel().tolist()}
    cases: list[tuple[str, dict[str, str], bytes]] = [
        ("/v1/inference/run", token, json.dumps(v1).encode()),
        ("/v1/inference/run", token, json.dumps({**v1, "priority": "high"}).encode()),
        ("/v1/inference/run", token, json.dumps({**v1, "priority": "urgent"}).encode()),
        ("/v1/inference/run", token, json.dumps({**v1, "deployment_id": "dep_x"}).encode()),
        ("/v1/inference/run", token, json.dumps({**v1, "input": {"data": [[1.0]]}}).encode()),
        ("/v1/inference/run", token, b"{not json"),
        ("/v1/inference/run", {**token, "Authorization": ""}, json.dumps(v1).encode()),
        ("/v1/inference/run", {**token, "Authorization": "Bearer no"}, json.dumps(v1).encode()),
        ("/v2/models/mlp/infer", token, json.dumps({"inputs": [tensor]}).encode()),
        ("/v2/models/mlp/versions/1.0.0/infer", token, json.dumps({"inputs": [tensor]}).encode()),
        ("/v2/models/nope/infer", token, json.dumps({"inputs": [tensor]}).encode()),
        ("/v2/models/mlp/infer", token, b"[1, 2"),
        ("/v2/models/mlp/extra/infer", token, b"{}"),
    ]
    urls = {"protocol": server.url, **others}
    for path, headers, body in cases:
        got = {}
        for name, url in urls.items():
            r = httpx.post(url + path, content=body, headers=headers, timeout=60)
            got[name] = (r.status_code, r.headers.get("content-type"), r.json())
        first = got["protocol"]
        for name, answer in got.items():
            assert answer[:2] == first[:2], (path, body[:60], name, answer, first)
            if first[0] == 200:
                expected = mlp_reference(x)
                out = answer[2]
                y = out["output"]["y"] if "output" in out else out["outputs"][0]["data"]
                assert np.allclose(np.asarray(y).reshape(expected.shape), expected, atol=1e-5)
            else:
                error = answer[2].get("error", answer[2])
                first_error = first[2].get("error", first[2])
                # incident-free errors are word for word the same
                assert error == first_error, (path, name, error, first_error)


def test_keep_alive_pipelining_and_close(deployed: tuple[Server, str]) -> None:
    server, dep = deployed
    token = {"Authorization": f"Bearer {server.token()}"}
    rows = [np.full((1, 4), float(i), np.float32) for i in range(3)]
    bodies = [json.dumps({"deployment_id": dep, "input": {"data": r.tolist()}}) for r in rows]
    # Three pipelined requests in one write, then one to the constant route: answered in order.
    data = b"".join(_request("/v1/inference/run", b.encode(), token) for b in bodies)
    data += b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n"
    answers = split_responses(_raw(server.url, data))
    assert [a[0] for a in answers] == [200, 200, 200, 200]
    for (_, headers, body), x in zip(answers, rows, strict=False):
        y = json.loads(body)["output"]["y"]
        assert np.allclose(y, mlp_reference(x), atol=1e-5)
        assert headers["content-type"] == "application/json" and "date" in headers
        assert "connection" not in headers  # kept alive
    # Connection: close is honoured, and HTTP/1.0 closes by default.
    for version, extra in (("1.1", {"Connection": "close"}), ("1.0", {})):
        raw = _raw(
            server.url,
            _request("/v1/inference/run", bodies[0].encode(), {**token, **extra}, version),
            until_closed=True,
        )
        (status, headers, body), *more = split_responses(raw)
        assert status == 200 and headers.get("connection") == "close" and not more


def test_large_bodies_and_100_continue_go_through_the_app(deployed: tuple[Server, str]) -> None:
    server, dep = deployed
    token = {"Authorization": f"Bearer {server.token()}"}
    x = np.random.default_rng(1).standard_normal((32, 4)).astype(np.float32)
    body = json.dumps({"deployment_id": dep, "input": {"data": x.tolist()}}, indent=120).encode()
    assert len(body) > 64 * 1024  # over the protocol's hold limit: the app streams it
    r = httpx.post(f"{server.url}/v1/inference/run", content=body, headers=token, timeout=60)
    assert r.status_code == 200
    assert np.allclose(r.json()["output"]["y"], mlp_reference(x), atol=1e-5)
    small = json.dumps({"deployment_id": dep, "input": {"data": x[:1].tolist()}}).encode()
    expect = {**token, "Expect": "100-continue", "Connection": "close"}
    head = _request("/v1/inference/run", b"", expect)
    head = head.replace(b"Content-Length: 0", f"Content-Length: {len(small)}".encode())
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head)
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(small)
        out = b""
        while chunk := s.recv(65536):  # the server closes after answering
            out += chunk
    assert out.startswith(b"HTTP/1.1 200 ")  # answered by the app (chunked, as ASGI does)
    answer = json.loads(out[out.index(b"{") : out.rindex(b"}") + 1])
    assert np.allclose(answer["output"]["y"], mlp_reference(x[:1]), atol=1e-5)


def test_a_client_that_leaves_does_not_disturb_the_server(deployed: tuple[Server, str]) -> None:
    server, dep = deployed
    token = {"Authorization": f"Bearer {server.token()}"}
    body = json.dumps({"deployment_id": dep, "input": {"data": [[1.0, 2.0, 3.0, 4.0]]}}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    for cut in (10, len(body) // 2, len(body)):  # mid-head, mid-body, whole request
        s = socket.create_connection((host, int(port)), timeout=30)
        s.sendall(_request("/v1/inference/run", body, token)[: -len(body) + cut or None])
        s.close()
    r = httpx.post(f"{server.url}/v1/inference/run", content=body, headers=token, timeout=60)
    assert r.status_code == 200 and np.allclose(
        r.json()["output"]["y"], mlp_reference(np.array([[1.0, 2.0, 3.0, 4.0]], np.float32))
    )


def test_access_log_lines_match_uvicorns(deployed: tuple[Server, str], tmp_path: Path) -> None:
    """With uvicorn's access log on, a request the protocol answers is logged as uvicorn logs
    any other."""
    import logging

    server, dep = deployed
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    access = logging.getLogger("uvicorn.access")
    with serving(create_app(server.engine, auth=False)) as url:
        handler, level = Keep(), access.level
        access.addHandler(handler)  # after start(), whose logging config replaces the handlers
        access.setLevel(logging.INFO)  # and sets the level to warning
        try:
            body = {"deployment_id": dep, "input": {"data": [[1.0, 2.0, 3.0, 4.0]]}}
            assert httpx.post(f"{url}/v1/inference/run?x=1", json=body).status_code == 200
            assert httpx.get(f"{url}/health/live").status_code == 200
        finally:
            access.removeHandler(handler)
            access.setLevel(level)
    lines = [r.getMessage() for r in records]
    assert any('"POST /v1/inference/run?x=1 HTTP/1.1" 200' in line for line in lines), lines
    assert any('"GET /health/live HTTP/1.1" 200' in line for line in lines), lines


def test_an_unfamiliar_uvicorn_falls_back_to_the_asgi_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from uvicorn.protocols.http import httptools_impl

    from phi_engine.server import _protocol

    _protocol._protocol_class.cache_clear()
    monkeypatch.delattr(httptools_impl.HttpToolsProtocol, "_start_asgi_task")
    try:
        assert http_protocol() == "auto"
    finally:
        monkeypatch.undo()
        _protocol._protocol_class.cache_clear()
    assert not isinstance(http_protocol(), str)


def test_the_apps_body_limit_holds_below_the_protocols_hold_size(
    deployed: tuple[Server, str],
) -> None:
    server, dep = deployed
    token = {"Authorization": f"Bearer {server.token()}", "Content-Type": "application/json"}
    x = np.random.default_rng(2).standard_normal((8, 4)).astype(np.float32)
    body = json.dumps({"deployment_id": dep, "input": {"data": x.tolist()}}).encode()
    small = create_app(server.engine, max_body_bytes=len(body) - 1)
    with serving(small) as url:
        r = httpx.post(f"{url}/v1/inference/run", content=body, headers=token, timeout=60)
        assert r.status_code == 413, r.text
        # pipelined behind another request, whose body is read while the first is answered
        one = json.dumps({"deployment_id": dep, "input": {"data": x[:1].tolist()}}).encode()
        data = _request("/v1/inference/run", one, token) + _request(
            "/v1/inference/run", body, token
        )
        answers = split_responses(_raw(url, data))
        assert [a[0] for a in answers] == [200, 413]


def test_the_users_own_middleware_sees_inline_inference(deployed: tuple[Server, str]) -> None:
    """An app wrapped in middleware other than uvicorn's is served through ASGI, so that the
    wrapper (CORS here) applies to inference too."""
    from starlette.middleware.cors import CORSMiddleware

    server, dep = deployed
    wrapped = CORSMiddleware(create_app(server.engine, auth=False), allow_origins=["*"])
    assert find_fast(wrapped) is None
    with serving(wrapped) as url:
        body = {"deployment_id": dep, "input": {"data": [[1.0, 2.0, 3.0, 4.0]]}}
        r = httpx.post(f"{url}/v1/inference/run", json=body, headers={"Origin": "http://a"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"


def test_v2_refuses_a_missing_token_before_reading_the_body(deployed: tuple[Server, str]) -> None:
    """A V2 request without a token is answered 401 from its head, so a client cannot make the
    server buffer a body it will refuse."""
    server, _ = deployed
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        head = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 50000000\r\n\r\n"
        s.sendall(head + b"{" * 70000)  # over the hold size, so the ASGI fast path takes it
        out = s.recv(65536)
    assert out.startswith(b"HTTP/1.1 401 "), out[:200]
