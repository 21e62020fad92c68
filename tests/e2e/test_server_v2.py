"""The Open Inference Protocol (V2) with the official Triton HTTP client, unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from phi_test_models.tiny import mlp, mlp_reference

from .conftest import Server

tritonclient_http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] missing")


@pytest.fixture
def served(server: Server, tmp_path: Path) -> tuple[Server, dict[str, str]]:
    path = mlp(tmp_path / "mlp.onnx", seed=0)
    m = server.engine.register("mlp", "onnx", "1.0.0", str(path))
    server.engine.deploy(m.model_id, resource_allocation={"cpu": 1, "nodes": 1})
    return server, {"Authorization": f"Bearer {server.token()}"}


def test_tritonclient_infers_with_json_and_binary_tensors(
    served: tuple[Server, dict[str, str]], rng: np.random.Generator
) -> None:
    server, headers = served
    client = tritonclient_http.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert client.is_server_live(headers=headers)
        assert client.is_model_ready("mlp", headers=headers)
        meta = client.get_model_metadata("mlp", headers=headers)
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        for binary in (False, True):
            x = rng.standard_normal((3, 4)).astype(np.float32)
            inp = tritonclient_http.InferInput("x", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = tritonclient_http.InferRequestedOutput("y", binary_data=binary)
            result = client.infer(
                "mlp", [inp], outputs=[out], headers=headers, priority=1, timeout=5_000_000
            )
            np.testing.assert_allclose(result.as_numpy("y"), mlp_reference(x), rtol=1e-5, atol=1e-5)
            # The verified artifact that answered, in the response's parameters.
            digest = server.engine.models()[0].sha256
            assert result.get_response()["parameters"] == {"model_sha256": digest}
        stats = client.get_inference_statistics("mlp", headers=headers)
        assert stats["model_stats"][0]["inference_count"] == 2
    finally:
        client.close()


def test_v2_metadata_repository_and_errors(served: tuple[Server, dict[str, str]]) -> None:
    server, headers = served
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as c:
        assert c.get("/v2").json()["name"] == "phi_engine"
        assert c.get("/v2/health/ready").json() == {"ready": True}
        assert c.get("/v2/models/mlp/versions/1.0.0").json()["versions"] == ["1.0.0"]
        assert c.get("/v2/models/mlp/versions/9.9.9").status_code == 404
        assert c.post("/v2/repository/index").json() == [
            {"name": "mlp", "version": "1.0.0", "state": "READY"}
        ]
        assert c.post("/v2/repository/models/mlp/unload").status_code == 200
        assert c.get("/v2/models/mlp/ready").status_code == 400
        assert c.post("/v2/repository/models/mlp/load").status_code == 200
        assert c.get("/v2/models/mlp/ready").status_code == 200
        body = {
            "inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]
        }
        r = c.post("/v2/models/mlp/infer", json=body)
        assert r.status_code == 400 and r.json()["error"]["field"] == "x"
        r = c.post(
            "/v2/models/mlp/infer", content=b"{", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400
    assert httpx.post(f"{server.url}/v2/models/mlp/infer", json=body).status_code == 401


def test_infer_fast_path_answers_like_the_route(
    served: tuple[Server, dict[str, str]], rng: np.random.Generator
) -> None:
    """Every V2 infer request gets the same status and body from the fast path (the live
    server) as from the FastAPI route behind it (a second server on the same engine with the
    fast path off)."""
    from phi_engine.server import create_app

    from .conftest import start

    server, headers = served
    routed = create_app(server.engine)
    routed.fast = None  # type: ignore[attr-defined]
    uv, thread, route_url = start(routed)
    reader = server.engine.clients.create(["models:read"])
    read_only = httpx.post(
        f"{server.url}/v1/auth/token",
        json={
            "client_id": reader.client_id,
            "client_secret": reader.client_secret,
            "grant_type": "client_credentials",
        },
    ).json()["access_token"]
    x = rng.standard_normal((2, 4)).astype(np.float32)
    good = {
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    blob = x.tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }
    ).encode()

    def tensor(**change: object) -> dict[str, object]:
        return {"inputs": [{**good["inputs"][0], **change}]}

    cases: list[tuple[str, dict[str, str], bytes]] = [
        ("/v2/models/mlp/infer", headers, json.dumps(good).encode()),
        ("/v2/models/mlp/versions/1.0.0/infer", headers, json.dumps({**good, "id": "r1"}).encode()),
        ("/v2/models/mlp/infer", headers, json.dumps(tensor(data=x.tolist())).encode()),
        (
            "/v2/models/mlp/infer",
            {**headers, "Inference-Header-Content-Length": str(len(head))},
            head + blob,
        ),
        ("/v2/models/mlp/infer", {}, json.dumps(good).encode()),
        (
            "/v2/models/mlp/infer",
            {"Authorization": f"Bearer {read_only}"},
            json.dumps(good).encode(),
        ),
        ("/v2/models/nope/infer", headers, json.dumps(good).encode()),
        ("/v2/models/mlp/versions/9/infer", headers, json.dumps(good).encode()),
        ("/v2/models/mlp/infer", headers, b"{not json"),
        ("/v2/models/mlp/infer", headers, b'{"inputs": {}}'),
        ("/v2/models/mlp/infer", headers, json.dumps(tensor(datatype="FP99")).encode()),
        ("/v2/models/mlp/infer", headers, json.dumps(tensor(shape=[3, 4])).encode()),
        ("/v2/models/mlp/infer", headers, json.dumps(tensor(name="z")).encode()),
        (
            "/v2/models/mlp/infer",
            headers,
            json.dumps({**good, "parameters": {"priority": -1}}).encode(),
        ),
        (
            "/v2/models/mlp/infer",
            headers,
            json.dumps({**good, "parameters": {"timeout": -5}}).encode(),
        ),
        (
            "/v2/models/mlp/infer",
            headers,
            json.dumps({**good, "outputs": [{"name": "w"}]}).encode(),
        ),
        (
            "/v2/models/mlp/infer",
            {**headers, "Inference-Header-Content-Length": "99999"},
            head + blob,
        ),
        ("/v2/models/mlp/infer", headers, b"\x00" * (65 << 20)),
    ]
    try:
        for path, hdrs, body in cases:
            answers = []
            for base in (server.url, route_url):
                r = httpx.post(base + path, content=body, headers=hdrs, timeout=60)
                answers.append(r)
            fast, route = answers
            assert fast.status_code == route.status_code, (path, fast.text, route.text)
            if fast.headers["content-type"].startswith("application/json"):
                a, b = fast.json(), route.json()
                if "error" in a:
                    assert a["error"]["code"] == b["error"]["code"] and a["error"].get(
                        "field"
                    ) == b["error"].get("field")
                else:
                    assert a == b, path
            else:
                assert fast.content == route.content
                assert (
                    fast.headers["inference-header-content-length"]
                    == route.headers["inference-header-content-length"]
                )
        ok = httpx.post(server.url + cases[0][0], content=cases[0][2], headers=headers).json()
        y = np.asarray(ok["outputs"][0]["data"], np.float32).reshape(ok["outputs"][0]["shape"])
        np.testing.assert_allclose(y, mlp_reference(x), rtol=1e-5, atol=1e-5)
    finally:
        uv.should_exit = True
        thread.join(timeout=30)


def test_plain_and_general_requests_answer_alike_in_float32(
    served: tuple[Server, dict[str, str]], rng: np.random.Generator
) -> None:
    """A body with nothing but its tensors, and the same with empty parameters, requested
    outputs or tensor parameters, all give the same answer, and the answer's float32 values are
    the model's own, exactly (they are written from the array)."""
    server, headers = served
    x = rng.standard_normal((3, 4)).astype(np.float32)
    tensor = {"name": "x", "shape": [3, 4], "datatype": "FP32", "data": x.ravel().tolist()}
    bodies = [
        {"inputs": [tensor]},  # plain
        {"inputs": [tensor], "parameters": {}},
        {"inputs": [tensor], "outputs": [{"name": "y"}]},
        {"inputs": [{**tensor, "parameters": {}}]},
    ]
    dep = server.engine.deployments()[0]
    want = server.engine.infer(dep.deployment_id, {"x": x}).outputs["y"]
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as c:
        answers = [c.post("/v2/models/mlp/infer", json=b).json() for b in bodies]
        for answer in answers:
            assert answer == answers[0]
        out = answers[0]["outputs"][0]
        got = np.asarray(out["data"], dtype=np.float64).astype(np.float32).reshape(out["shape"])
        np.testing.assert_array_equal(got, want)
        # a bad tensor name is a 400 naming the field
        bad = {"inputs": [{**tensor, "name": 7}]}
        r = c.post("/v2/models/mlp/infer", json=bad)
        assert r.status_code == 400 and r.json()["error"]["field"] == "inputs"
