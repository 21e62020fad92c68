"""A disabled client's tokens stop working at once, on every route (fast path included)."""

from __future__ import annotations

from pathlib import Path

import httpx

from phi_test_models.tiny import mlp

from .conftest import Server


def test_disabling_a_client_revokes_its_tokens(server: Server, tmp_path: Path) -> None:
    m = server.engine.register("mlp", "onnx", "1", str(mlp(tmp_path / "mlp.onnx", seed=0)))
    dep = server.engine.deploy(m.model_id, resource_allocation={"cpu": 1}).deployment_id
    new = server.engine.clients.create(["infer", "models:read"], name="soon-gone")
    token = httpx.post(
        f"{server.url}/v1/auth/token",
        json={
            "client_id": new.client_id,
            "client_secret": new.client_secret,
            "grant_type": "client_credentials",
        },
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    body = {"deployment_id": dep, "input": {"data": [[1.0, 2.0, 3.0, 4.0]]}}
    v2 = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    calls = [
        ("POST", "/v1/inference/run", body),
        ("POST", "/v2/models/mlp/infer", v2),
        ("GET", "/v1/models", None),
    ]
    for method, path, payload in calls:
        r = httpx.request(method, server.url + path, json=payload, headers=headers)
        assert r.status_code == 200, (path, r.text)
    server.engine.clients.disable(new.client_id)
    for method, path, payload in calls:
        r = httpx.request(method, server.url + path, json=payload, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert "disabled" in r.json()["error"]["message"]
    r = httpx.post(
        f"{server.url}/v1/auth/token",
        json={
            "client_id": new.client_id,
            "client_secret": new.client_secret,
            "grant_type": "client_credentials",
        },
    )
    assert r.status_code == 401
    # Other clients are untouched.
    with server.client() as c:
        assert c.post("/v1/inference/run", json=body).status_code == 200
