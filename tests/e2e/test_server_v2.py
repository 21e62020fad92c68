"""The Open Inference Protocol (V2) with the official Triton HTTP client, unchanged."""

from __future__ import annotations

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
