"""The product sheet's API over real HTTP on loopback, with the sheet's own JSON bodies."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from phi_test_models.tiny import mlp, mlp_reference

from .conftest import Server


@pytest.fixture
def model_file(server: Server) -> Path:
    """A model in the server's data directory, where clients may name files."""
    return mlp(server.data_dir / "models" / "mlp.onnx", seed=0)


def test_the_sheet_end_to_end(server: Server, model_file: Path) -> None:
    # Authentication (sheet: JSON body) -> token
    r = httpx.post(
        f"{server.url}/v1/auth/token",
        json={
            "client_id": server.client_id,
            "client_secret": server.client_secret,
            "grant_type": "client_credentials",
        },
    )
    assert r.status_code == 200, r.text
    token = r.json()
    assert token["token_type"] == "Bearer" and token["expires_in"] == 3600
    assert r.headers["cache-control"] == "no-store"
    c = httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {token['access_token']}"},
        timeout=60,
    )
    with c:
        # 1.1 register
        r = c.post(
            "/v1/models/register",
            json={
                "model_name": "quantum_ai_v2",
                "framework": "TensorFlow",  # any case; the artifact is ONNX exported from it
                "version": "2.0.0",
                "storage_url": model_file.as_uri(),
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "success" and body["model_id"].startswith("mdl_")
        model_id = body["model_id"]
        # 1.2 deploy (resources this machine has)
        r = c.post(
            "/v1/models/deploy",
            json={
                "model_id": model_id,
                "execution_mode": "local",
                "resource_allocation": {"cpu": 1, "nodes": 2},
                "scaling_policy": "auto",
            },
        )
        assert r.status_code == 200, r.text
        dep_id = r.json()["deployment_id"]
        assert "2 replicas" in r.json()["message"]
        # 1.3 inference, inline
        x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
        r = c.post(
            "/v1/inference/run",
            json={
                "deployment_id": dep_id,
                "input": {"data": x.tolist()},
                "batch_size": 128,
                "priority": "ultra-high",
                "execution_policy": "quantum-optimized",
            },
        )
        assert r.status_code == 200, r.text
        out = r.json()
        np.testing.assert_allclose(out["output"]["y"], mlp_reference(x), rtol=1e-5, atol=1e-5)
        assert out["execution_time"].endswith("ms") and out["model_version"] == "2.0.0"
        # 1.3 inference, a file of rows in the data directory: a batch job
        rows = np.random.default_rng(4).standard_normal((37, 4)).astype(np.float32)
        (server.data_dir / "input_data.json").write_text(json.dumps(rows.tolist()))
        r = c.post(
            "/v1/inference/run",
            json={
                "deployment_id": dep_id,
                "input": {"data": "input_data.json"},
                "batch_size": 16,
                "priority": "low",
            },
        )
        assert r.status_code == 200, r.text
        result = json.loads((server.data_dir / r.json()["output"]).read_text())
        np.testing.assert_allclose(result["y"], mlp_reference(rows), rtol=1e-5, atol=1e-5)
        # async job: 202, then poll
        r = c.post(
            "/v1/inference/run",
            json={
                "deployment_id": dep_id,
                "input": {"data": "input_data.json"},
                "output_url": "async_out.json",
                "async": True,
            },
        )
        assert r.status_code == 202 and r.json()["job_id"].startswith("job_")
        job_id = r.json()["job_id"]
        for _ in range(200):
            status = c.get(f"/v1/inference/{job_id}").json()["status"]
            if status in ("completed", "failed"):
                break
            import time

            time.sleep(0.05)
        assert status == "completed"
        # 2.1 logs
        r = c.get("/v1/logs", params={"deployment_id": dep_id})
        assert r.status_code == 200
        events = [e["event"] for e in r.json()["logs"]]
        assert "deployed" in events and all("timestamp" in e for e in r.json()["logs"])
        # 2.2 security validation (the sheet's standards)
        r = c.post(
            "/v1/security/validate",
            json={"deployment_id": dep_id, "standards": ["ISO 27001", "GDPR", "EU AI Act", "NIST"]},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] in ("secure", "at_risk", "insecure")
        assert 0 <= body["risk_score"] <= 1 and isinstance(body["compliance"], list)
        assert body["checks"] and "not a certification" in body["disclaimer"]
        # 3.1 auto-scale (the sheet's fields, bounds this machine holds)
        r = c.post(
            "/v1/models/auto-scale",
            json={
                "deployment_id": dep_id,
                "gpu_min": 1,
                "gpu_max": 2,
                "tpu_enabled": False,
                "threshold": "85% utilization",
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["scaling_mode"] == "adaptive" and r.json()["gpu_allocated"] == 0
        # 3.2 profile
        r = c.post(
            "/v1/models/profile",
            json={"deployment_id": dep_id, "batch_sizes": [1, 4], "requests": 8},
        )
        assert r.status_code == 200, r.text
        prof = r.json()
        assert {"execution_time", "latency_distribution", "optimization_suggestions"} <= set(prof)
        assert "99th_percentile" in prof["latency_distribution"]
        # listing
        assert [m["model_id"] for m in c.get("/v1/models").json()["models"]] == [model_id]
        assert c.get(f"/v1/deployments/{dep_id}").json()["replicas"] == 2


def test_errors_are_json_with_the_status_and_field(server: Server, model_file: Path) -> None:
    with server.client() as c:
        r = c.post("/v1/models/register", json={"model_name": "m", "framework": "onnx"})
        assert r.status_code == 400 and r.json()["error"]["field"] in ("version", "storage_url")
        r = c.post(
            "/v1/models/register",
            json={
                "model_name": "m",
                "framework": "onnx",
                "version": "1",
                "storage_url": model_file.as_uri(),
                "colour": "red",
            },
        )
        assert r.status_code == 400 and r.json()["error"]["field"] == "colour"
        r = c.post("/v1/models/deploy", json={"model_id": "mdl_0000000000000000"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        body = {
            "model_name": "m",
            "framework": "onnx",
            "version": "1",
            "storage_url": model_file.as_uri(),
        }
        model_id = c.post("/v1/models/register", json=body).json()["model_id"]
        r = c.post("/v1/models/register", json=body)
        assert r.status_code == 409 and r.json()["error"]["field"] == "version"
        r = c.post("/v1/models/deploy", json={"model_id": model_id, "precision": "fp16"})
        assert r.status_code == 400 and r.json()["error"]["field"] == "precision"
        assert "GPU placement" in r.json()["error"]["message"]
        r = c.post("/v1/models/deploy", json={"model_id": model_id, "precision": "bf16"})
        assert r.status_code == 200 and r.json()["precision"] == "bf16"
        dep = c.post("/v1/models/deploy", json={"model_id": model_id}).json()["deployment_id"]
        r = c.post(
            "/v1/inference/run", json={"deployment_id": dep, "input": {"data": [[1.0, 2.0]]}}
        )
        assert r.status_code == 400 and r.json()["error"]["field"] == "x"
        r = c.post(
            "/v1/inference/run",
            json={"deployment_id": dep, "input": {"data": "../../etc/passwd.json"}},
        )
        assert r.status_code == 400 and r.json()["error"]["field"] == "input.data"
        r = c.post(
            "/v1/models/deploy", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400
        r = c.get("/v1/nowhere")
        assert r.status_code == 404 and "error" in r.json()
        r = c.post(
            "/v1/models/register",
            content=b"x" * (65 << 20),
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 413


def test_auth_401_403_and_token_forms(server: Server) -> None:
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    r = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    reader = server.engine.clients.create(["models:read"])
    # form body (RFC 6749 §4.4.2) and HTTP Basic (§2.3.1)
    r = httpx.post(
        f"{server.url}/v1/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": reader.client_id,
            "client_secret": reader.client_secret,
        },
    )
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{server.url}/v1/auth/token",
        data={"grant_type": "client_credentials"},
        auth=(reader.client_id, reader.client_secret),
    )
    assert r.status_code == 200, r.text
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert httpx.get(f"{server.url}/v1/models", headers=headers).status_code == 200
    r = httpx.post(f"{server.url}/v1/models/deploy", json={"model_id": "x"}, headers=headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    # wrong secret: 401 invalid_client (§5.2); wrong grant: 400 unsupported_grant_type
    r = httpx.post(
        f"{server.url}/v1/auth/token",
        data={"grant_type": "client_credentials"},
        auth=(reader.client_id, "wrong"),
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    assert "Basic" in r.headers["www-authenticate"]
    r = httpx.post(f"{server.url}/v1/auth/token", json={"grant_type": "password"})
    assert r.status_code == 400 and r.json()["error"] == "unsupported_grant_type"


def test_token_endpoint_is_rate_limited(server: Server) -> None:
    codes = []
    for _ in range(30):
        r = httpx.post(
            f"{server.url}/v1/auth/token",
            json={
                "client_id": server.client_id,
                "client_secret": "wrong",
                "grant_type": "client_credentials",
            },
        )
        codes.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            break
    assert codes[0] == 401 and codes[-1] == 429


def test_health_and_openapi(server: Server) -> None:
    assert httpx.get(f"{server.url}/health/live").json() == {"status": "live"}
    assert httpx.get(f"{server.url}/health/ready").status_code == 200
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/models/register" in spec["paths"] and "/v1/inference/run" in spec["paths"]


def test_metrics_count_requests_by_outcome(server: Server, model_file: Path) -> None:
    with server.client() as c:
        body = {
            "model_name": "m",
            "framework": "onnx",
            "version": "1",
            "storage_url": model_file.as_uri(),
        }
        model_id = c.post("/v1/models/register", json=body).json()["model_id"]
        dep = c.post("/v1/models/deploy", json={"model_id": model_id}).json()["deployment_id"]
        for _ in range(5):
            r = c.post(
                "/v1/inference/run",
                json={"deployment_id": dep, "input": {"data": [[1.0, 2.0, 3.0, 4.0]]}},
            )
            assert r.status_code == 200
        text = c.get("/metrics").text
    assert f'phi_requests_total{{deployment="{dep}",outcome="completed"}} 5' in text
    assert f'phi_queue_seconds_count{{deployment="{dep}"}} 5' in text
    assert f'phi_compute_seconds_bucket{{deployment="{dep}",le="+Inf"}} 5' in text
    assert "# TYPE phi_replicas gauge" in text
    sha = server.engine.model(model_id).sha256
    assert f'model_id="{model_id}",sha256="{sha}"}} 1' in text, "phi_model_info"
    assert httpx.get(f"{server.url}/metrics").status_code == 401


def test_logs_stream_as_server_sent_events(server: Server, model_file: Path) -> None:
    m = server.engine.register("mlp", "onnx", "1", str(model_file))
    d = server.engine.deploy(m.model_id, resource_allocation={"cpu": 1})
    headers = {"Authorization": f"Bearer {server.token()}", "Accept": "text/event-stream"}
    seen: list[dict[str, object]] = []
    with httpx.stream(
        "GET",
        f"{server.url}/v1/logs",
        params={"deployment_id": d.deployment_id},
        headers=headers,
        timeout=30,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[6:]))
                if seen[-1]["event"] == "scaled":
                    break
                if seen[-1]["event"] == "deployed":
                    server.engine.scale(d.deployment_id, 2)  # a new event while streaming
    assert [e["event"] for e in seen] == ["integrity_verified", "deployed", "scaled"]


def test_storage_urls_outside_the_data_directory_are_refused(
    server: Server, tmp_path: Path
) -> None:
    outside = mlp(tmp_path / "elsewhere.onnx")
    with server.client() as c:
        for url in (
            str(outside),
            outside.as_uri(),
            "/etc/passwd",
            "../../etc/passwd",
            "http://127.0.0.1:1/model.onnx",
            "http://localhost/m.onnx",
        ):
            r = c.post(
                "/v1/models/register",
                json={"model_name": "m", "framework": "onnx", "version": "1", "storage_url": url},
            )
            assert r.status_code == 400, (url, r.text)
            assert r.json()["error"]["field"] == "storage_url"
    assert server.engine.models() == []


def test_inference_fast_path_answers_like_the_route(server: Server, model_file: Path) -> None:
    m = server.engine.register("mlp", "onnx", "1", str(model_file))
    dep = server.engine.deploy(m.model_id, resource_allocation={"cpu": 1}).deployment_id
    url = f"{server.url}/v1/inference/run"
    body = {"deployment_id": dep, "input": {"data": [[1.0, 2.0, 3.0, 4.0]]}}
    r = httpx.post(url, json=body)  # no token
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    reader = server.engine.clients.create(["models:read"])
    token = httpx.post(
        f"{server.url}/v1/auth/token",
        json={
            "client_id": reader.client_id,
            "client_secret": reader.client_secret,
            "grant_type": "client_credentials",
        },
    ).json()["access_token"]
    r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403 and r.json()["error"]["field"] == "scope"
    with server.client() as c:
        r = c.post("/v1/inference/run", json=body)
        assert r.json()["model_sha256"] == m.sha256, "the verified artifact's digest is named"
        assert r.status_code == 200 and r.json()["output"]["y"][0] == pytest.approx(
            mlp_reference(np.array([[1.0, 2.0, 3.0, 4.0]], np.float32))[0].tolist(), abs=1e-5
        )
        for bad, field in (
            ({**body, "priority": "urgent"}, "priority"),
            ({**body, "colour": 1}, "colour"),
            ({**body, "deadline_ms": -5}, "deadline_ms"),
            ({**body, "deployment_id": 7}, "deployment_id"),
        ):
            r = c.post("/v1/inference/run", json=bad)
            assert r.status_code == 400 and r.json()["error"]["field"] == field, r.text
        r = c.post("/v1/inference/run", json={**body, "deployment_id": "dep_nope"})
        assert r.status_code == 404
        chunks = (b"1" * (1 << 20) for _ in range(65))  # streamed: no Content-Length
        r = c.post(
            "/v1/inference/run", content=chunks, headers={"content-type": "application/json"}
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_a_bug_is_a_500_with_an_incident_id_and_no_internals(
    server: Server,
    model_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The fast path (inline inference, V2 infer) and the app (any other route) answer a bug
    the same way: 500, an incident id that the server's log repeats with the traceback, and
    nothing of the exception in the body."""
    engine = server.engine
    record = engine.register("mlp", "onnx", "1.0.0", str(model_file))
    dep = engine.deploy(record.model_id).deployment_id
    secret = "/internal/path/and secret detail"

    async def broken_ainfer(*args: object, **kwargs: object) -> None:
        raise RuntimeError(secret)

    def broken_models(*args: object, **kwargs: object) -> None:
        raise RuntimeError(secret)

    monkeypatch.setattr(engine, "ainfer", broken_ainfer)
    monkeypatch.setattr(engine, "models", broken_models)
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}
    with server.client() as c, caplog.at_level("ERROR", logger="phi_engine.server"):
        answers = [
            c.post(
                "/v1/inference/run", json={"deployment_id": dep, "input": {"data": [[1.0] * 4]}}
            ),
            c.post("/v2/models/mlp/infer", json={"inputs": [tensor]}),
            c.get("/v1/models"),
        ]
    for r in answers:
        assert r.status_code == 500, r.text
        error = r.json()["error"]
        assert error["code"] == "internal_error" and "this is a bug" in error["message"]
        assert secret not in r.text and "RuntimeError" not in r.text
        incident = error["message"].split("incident ")[1].split(")")[0]
        logged = [rec for rec in caplog.records if incident in rec.getMessage()]
        assert logged and secret in (logged[0].exc_text or ""), "the log has the traceback"
