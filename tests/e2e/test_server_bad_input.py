"""Bad input to a real server on loopback: a 4xx with a JSON body naming the field, never a 500,
FastAPI's 422, a hang or a broken connection. Each case here was answered wrongly once: the
inline inference paths (phi_engine's protocol and the ASGI fast path, both), the V2 binary
tensor extension, the token endpoint and the /v1 routes."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from phi_engine.server import create_app
from phi_engine.serving._inputs import InputLimits, InputSpec, parse_inputs
from phi_test_models.tiny import mlp, mlp_reference

from .conftest import Server, serving, split_responses

V1 = "/v1/inference/run"
V2 = "/v2/models/mlp/infer"
ROW = [[1.0, 2.0, 3.0, 4.0]]


@pytest.fixture
def deployed(server: Server, tmp_path: Path) -> tuple[Server, str]:
    m = server.engine.register("mlp", "onnx", "1.0.0", str(mlp(tmp_path / "mlp.onnx", seed=0)))
    return server, server.engine.deploy(m.model_id, resource_allocation={"cpu": 1}).deployment_id


@pytest.fixture
def urls(deployed: tuple[Server, str]) -> Iterator[dict[str, str]]:
    """The server as ``serve`` runs it (phi_engine's protocol answers inline inference) and
    uvicorn's own protocol on the same engine (the app's ASGI fast path answers it)."""
    server, _ = deployed
    with serving(create_app(server.engine), http="httptools") as asgi:
        yield {"protocol": server.url, "asgi": asgi}


def _raw(url: str, data: bytes, timeout: float = 10) -> bytes:
    """Send raw bytes; read until the server closes (every request here says close)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def _head(path: str, length: int, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: t", f"Content-Length: {length}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _responses(raw: bytes) -> list[tuple[int, Any]]:
    """Status and JSON body of each response in a byte stream."""
    return [
        (status, json.loads(body) if body else None) for status, _, body in split_responses(raw)
    ]


def _assert_field(r: httpx.Response | tuple[int, Any], status: int, field: str) -> dict[str, Any]:
    code, body = (r.status_code, r.json()) if isinstance(r, httpx.Response) else r
    assert code == status, (code, body)
    error: dict[str, Any] = body["error"]
    assert error["field"] == field, error
    assert "internal" not in error["code"] and "Traceback" not in error["message"]
    return error


def _post(url: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    return httpx.post(url + path, headers=headers, timeout=60, **kwargs)


# ---- /v1/inference/run on the fast paths ---------------------------------------------------


def test_v1_bodies_that_do_not_validate_name_their_field_on_every_path(
    deployed: tuple[Server, str], urls: dict[str, str]
) -> None:
    server, dep = deployed
    token = server.token()
    ok = {"deployment_id": dep, "input": {"data": ROW}}
    cases: list[tuple[dict[str, Any], str]] = [
        # a deadline too large for a float was a 500 (OverflowError on the fast path)
        ({**ok, "deadline_ms": 10**400}, "deadline_ms"),
        # an input object without "data" was a 500 (KeyError on the fast path)
        ({"deployment_id": dep, "input": {"dta": ROW}}, "input.data"),
        ({"deployment_id": dep, "input": [1]}, "input"),
        ({"input": {"data": ROW}}, "deployment_id"),
        ({**ok, "zzz": 1}, "zzz"),
        # a union's member is not a field: "priority", not "priority.str"
        ({**ok, "priority": 1.5}, "priority"),
        ({**ok, "async": True}, "async"),
    ]
    for url in urls.values():
        for body, field in cases:
            # with and without a JSON content type: the fast path reads JSON either way, and
            # its errors named only "body" when the body was not sent as application/json
            for content_type in ("application/json", "text/plain", None):
                headers = {"Content-Type": content_type} if content_type else {}
                r = _post(url, V1, token, content=json.dumps(body).encode(), headers=headers)
                _assert_field(r, 400, field)
        r = _post(url, V1, token, json=ok)  # and the server still serves
        assert r.status_code == 200
        assert np.allclose(r.json()["output"]["y"], mlp_reference(np.array(ROW, np.float32)))


def test_a_body_not_sent_as_json_is_told_so(deployed: tuple[Server, str]) -> None:
    server, _ = deployed
    token = server.token()
    for path in (V1, "/v1/models/register"):
        r = _post(server.url, path, token, content=b"{not json")  # no Content-Type
        error = _assert_field(r, 400, "body")
        assert "Content-Type: application/json" in error["message"]


def test_a_declared_body_over_the_limit_is_refused_at_once(deployed: tuple[Server, str]) -> None:
    """Refused by its Content-Length before any of it is sent (it waited for 64 MiB)."""
    server, _ = deployed
    app = create_app(server.engine, max_body_bytes=4096)
    token = {"Authorization": f"Bearer {server.token()}", "Connection": "close"}
    for http in (None, "httptools"):
        with serving(app, http=http) as url:
            for path in (V1, V2):
                (answer,) = _responses(_raw(url, _head(path, 10**6, token), timeout=10))
                assert answer[0] == 413 and answer[1]["error"]["code"] == "payload_too_large"


def test_pipelined_bad_requests_leave_the_connection_serving(
    deployed: tuple[Server, str], urls: dict[str, str]
) -> None:
    server, dep = deployed
    token = {"Authorization": f"Bearer {server.token()}"}
    good = json.dumps({"deployment_id": dep, "input": {"data": ROW}}).encode()
    bad = [
        (V1, json.dumps({"deployment_id": dep, "input": {"data": ROW}, "deadline_ms": 10**400})),
        (V1, json.dumps({"deployment_id": dep, "input": {"dta": ROW}})),
        (V2, json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT8"}]})),
    ]
    data = b""
    for path, body in bad:
        data += _head(V1, len(good), token) + good
        data += _head(path, len(body), token) + body.encode()
    data += _head(V1, len(good), {**token, "Connection": "close"}) + good
    for url in urls.values():
        statuses = [status for status, _ in _responses(_raw(url, data))]
        assert statuses == [200, 400, 200, 400, 200, 400, 200]


# ---- V2 infer ----------------------------------------------------------------------------------


def _tensor(**change: Any) -> dict[str, Any]:
    return {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4], **change}


def test_v2_tensors_whose_data_do_not_fit_their_datatype_are_refused(
    deployed: tuple[Server, str], urls: dict[str, str]
) -> None:
    """Values were converted with numpy's wrap-around (1000 as INT8 ran as -24, -1 as UINT8 as
    255, 1.5 as INT32 as 1) and answered 200 with another input's output."""
    server, _ = deployed
    token = server.token()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"inputs": [_tensor(datatype="INT8", data=[1000, 2, 3, 4])]}, "x.data"),
        ({"inputs": [_tensor(datatype="UINT8", data=[-1, 2, 3, 4])]}, "x.data"),
        ({"inputs": [_tensor(datatype="INT32", data=[1.5, 2, 3, 4])]}, "x.data"),
        ({"inputs": [_tensor(data=["1", "2", "3", "4"])]}, "x.data"),
        ({"inputs": [_tensor(data=None)]}, "x.data"),
        ({"inputs": [{"name": "x", "shape": [1, 4], "data": [1, 2, 3, 4]}]}, "x.datatype"),
        ({"inputs": [_tensor(), _tensor()]}, "x"),  # the second silently replaced the first
        ({"inputs": []}, "inputs"),
        ({"inputs": [_tensor()], "parameters": []}, "parameters"),
        ({"inputs": [_tensor(parameters=[])]}, "inputs"),
        (
            {"inputs": [_tensor()], "parameters": {"binary_data_output": "no"}},
            "parameters.binary_data_output",
        ),
        (
            {"inputs": [_tensor()], "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]},
            "outputs",
        ),
        ({"inputs": [_tensor()], "id": {"a": 1}}, "id"),
    ]
    for url in urls.values():
        for body, field in cases:
            _assert_field(_post(url, V2, token, json=body), 400, field)
        # what is right still works: ints that INT8 holds, a nested FP32 tensor, whole numbers
        # for FP32, and null for the optional id and binary flags (as pydantic clients send)
        nulls = {
            "id": None,
            "parameters": {"binary_data_output": None},
            "outputs": [{"name": "y", "parameters": {"binary_data": None}}],
        }
        for tensor, extra in (
            (_tensor(datatype="INT8"), {}),
            (_tensor(data=ROW), {}),
            (_tensor(data=[1, 2, 3, 4]), {}),
            (_tensor(), nulls),
        ):
            r = _post(url, V2, token, json={"inputs": [tensor], **extra})
            assert r.status_code == 200, r.text
            assert "id" not in r.json()
            assert np.allclose(
                r.json()["outputs"][0]["data"], mlp_reference(np.array(ROW, np.float32)).ravel()
            )
    # on /v1, V2-style typed tensors are checked the same way
    r = _post(
        server.url,
        V1,
        token,
        json={
            "deployment_id": deployed[1],
            "input": {"data": [_tensor(datatype="INT8", data=[1000, 2, 3, 4])]},
        },
    )
    _assert_field(r, 400, "x.data")


def _binary(
    tensor: dict[str, Any], blob: bytes, length: str | None = None
) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": [tensor]}).encode()
    return head + blob, {"Inference-Header-Content-Length": length or str(len(head))}


def test_v2_binary_tensor_sizes_are_checked(
    deployed: tuple[Server, str], urls: dict[str, str]
) -> None:
    """A negative binary_data_size read the whole rest of the body (200); trailing bytes that
    belong to no tensor were ignored (200); a size that is not whole values was cut."""
    server, _ = deployed
    token = server.token()
    blob = struct.pack("<4f", 1, 2, 3, 4)

    def tensor(size: Any) -> dict[str, Any]:
        return {
            "name": "x",
            "shape": [1, 4],
            "datatype": "FP32",
            "parameters": {"binary_data_size": size},
        }

    field = "x.parameters.binary_data_size"
    cases = [
        (*_binary(tensor(-4), blob), field),
        (*_binary(tensor(15), blob), field),
        (*_binary(tensor("16"), blob), field),
        (*_binary(tensor(True), blob), field),
        (*_binary(tensor(64), blob), field),
        (*_binary(tensor(16), blob + b"\0\0\0\0"), "inputs"),
        (*_binary(tensor(0), blob), "inference-header-content-length"),
    ]
    for url in urls.values():
        for body, headers, want in cases:
            _assert_field(_post(url, V2, token, content=body, headers=headers), 400, want)
        body, headers = _binary(tensor(16), blob)
        r = _post(url, V2, token, content=body, headers=headers)
        assert r.status_code == 200, r.text


def test_v2_a_non_ascii_digit_header_length_is_a_400(
    deployed: tuple[Server, str], urls: dict[str, str]
) -> None:
    """``Inference-Header-Content-Length: ²`` (byte 0xB2) passed ``str.isdigit`` and failed
    ``int``: a 500."""
    server, _ = deployed
    token = server.token()
    body = json.dumps({"inputs": [_tensor()]}).encode()
    headers = {"Authorization": f"Bearer {token}", "Connection": "close"}
    headers["Inference-Header-Content-Length"] = "\xb2"
    for url in urls.values():
        (answer,) = _responses(_raw(url, _head(V2, len(body), headers) + body))
        _assert_field(answer, 400, "inference-header-content-length")


# ---- other routes ------------------------------------------------------------------------------


def test_token_endpoint_refuses_deeply_nested_json_with_an_oauth_400(server: Server) -> None:
    """json.loads raised RecursionError: a 500."""
    body = b"[" * 100_000 + b"]" * 100_000
    r = httpx.post(f"{server.url}/v1/auth/token", content=body, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_request"


def test_register_refuses_a_malformed_url_naming_storage_url(server: Server) -> None:
    """urlsplit raised ValueError on an unclosed or bad IPv6 host: a 500."""
    with server.client() as client:
        for url in ("http://[::1/x.onnx", "http://[zz]/x.onnx"):
            body = {"model_name": "a", "framework": "onnx", "version": "1", "storage_url": url}
            _assert_field(client.post("/v1/models/register", json=body), 400, "storage_url")
    assert server.engine.models() == []  # nothing registered


def test_a_body_fastapi_cannot_parse_names_the_body(server: Server) -> None:
    headers = {"Content-Type": "application/json"}
    with server.client() as client:
        for body in (b'{"model_name": "\xff"}', b"[" * 100_000 + b"]" * 100_000):
            r = client.post("/v1/models/register", content=body, headers=headers)
            _assert_field(r, 400, "body")


def test_batch_job_errors_name_input_data_without_the_servers_paths(
    deployed: tuple[Server, str],
) -> None:
    """The engine's ``input_url`` is the request's ``input.data``; the data directory's
    absolute path is the server's business."""
    server, dep = deployed
    with server.client() as client:
        r = client.post(V1, json={"deployment_id": dep, "input": {"data": "missing.json"}})
    error = _assert_field(r, 400, "input.data")
    assert "missing.json" in error["message"]
    assert str(server.data_dir.resolve()) not in error["message"]


# ---- the input check itself ----------------------------------------------------------------


def test_a_negative_int_is_not_a_uint64() -> None:
    """-1 survives the round trip int64 -> uint64 -> int64, so it passed as 2**64 - 1."""
    from phi_engine.errors import InvalidRequestError

    spec = [InputSpec("x", np.dtype(np.uint64), ("N", 2))]
    with pytest.raises(InvalidRequestError) as info:
        parse_inputs({"x": np.array([[-1, 2]])}, spec, InputLimits())
    assert info.value.field == "x"
    got = parse_inputs({"x": np.array([[1, 2]])}, spec, InputLimits())
    assert got["x"].dtype == np.uint64 and got["x"].tolist() == [[1, 2]]
