"""The kill switch: a scoped, audited call that takes a model out of service at once."""

from __future__ import annotations

from pathlib import Path

from phi_test_models.tiny import mlp

from .conftest import Server


def test_kill_switch_stops_serving_blocks_redeploy_and_is_logged(
    server: Server, tmp_path: Path
) -> None:
    eng = server.engine
    a = eng.register("mlp", "onnx", "1", str(mlp(tmp_path / "a.onnx", seed=0)))
    b = eng.register("mlp", "onnx", "2", str(mlp(tmp_path / "b.onnx", seed=1)))
    serving_a = eng.deploy(a.model_id, resource_allocation={"cpu": 1}).deployment_id
    serving_b = eng.deploy(b.model_id, resource_allocation={"cpu": 1}).deployment_id
    eng.update(serving_a, b.model_id, "canary", canary_percent=50)  # b is also a candidate here
    row = {"input": {"data": [[1.0, 2.0, 3.0, 4.0]]}}
    with server.client() as admin, server.client("infer deploy") as no_security:
        r = no_security.post(
            "/v1/security/kill-switch", json={"model_id": b.model_id, "reason": "leak"}
        )
        assert r.status_code == 403 and r.json()["error"]["field"] == "scope"
        r = admin.post("/v1/security/kill-switch", json={"model_id": b.model_id, "reason": " "})
        assert r.status_code == 400, r.text
        r = admin.post("/v1/security/kill-switch", json={"model_id": "mdl_nope", "reason": "x"})
        assert r.status_code == 404
        assert eng.blocked(b.model_id) is None, "refused calls block nothing"

        r = admin.post(
            "/v1/security/kill-switch",
            json={"model_id": b.model_id, "reason": "weights exfiltration suspected"},
        )
        assert r.status_code == 200, r.text
        assert sorted(r.json()["deployments"]) == sorted([serving_a, serving_b])
        # b's own deployment is gone; a's deployment serves a alone, at once.
        assert (
            admin.post("/v1/inference/run", json={**row, "deployment_id": serving_b}).status_code
            == 404
        )
        for _ in range(10):
            r = admin.post("/v1/inference/run", json={**row, "deployment_id": serving_a})
            assert r.status_code == 200 and r.json()["model_id"] == a.model_id
        assert eng.deployment(serving_a).candidate_model_id is None
        # Deploying or updating to b is refused until the switch is lifted.
        r = admin.post("/v1/models/deploy", json={"model_id": b.model_id})
        assert r.status_code == 409 and "kill switch" in r.json()["error"]["message"]
        r = admin.post(
            f"/v1/deployments/{serving_a}/update",
            json={"model_id": b.model_id, "strategy": "canary"},
        )
        assert r.status_code == 409
        logs = admin.get("/v1/logs", params={"limit": 100}).json()["logs"]
        kill = [e for e in logs if e["event"] == "kill_switch"]
        assert len(kill) == 1 and kill[0]["actor"] == server.client_id
        assert kill[0]["reason"] == "weights exfiltration suspected"
        assert kill[0]["model_id"] == b.model_id and kill[0]["level"] == "error"

        r = no_security.delete(f"/v1/security/kill-switch/{b.model_id}")
        assert r.status_code == 403
        assert admin.delete(f"/v1/security/kill-switch/{b.model_id}").status_code == 200
        assert admin.delete(f"/v1/security/kill-switch/{b.model_id}").status_code == 404
        r = admin.post("/v1/models/deploy", json={"model_id": b.model_id})
        assert r.status_code == 200, r.text
        logs = admin.get("/v1/logs", params={"limit": 100}).json()["logs"]
        assert any(e["event"] == "kill_switch_lifted" for e in logs)
    assert eng.verify_logs().ok, "the audit chain holds the kill switch's events"
