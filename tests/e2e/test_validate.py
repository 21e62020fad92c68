"""POST /v1/security/validate: the compliance report of a weak, a default and a hardened setup.

The scores and statuses must differ as the check weights say: a server without auth fails a
critical check (insecure); a default one (auth on, loopback, unpinned hash, no model card) is
at risk; a hardened one (pinned hash, a publisher's signature, model card with metrics and risk
class, a year's log retention) is secure.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from phi_engine.engine import Engine
from phi_engine.errors import InvalidRequestError
from phi_engine.registry import build_manifest, sign_manifest
from phi_engine.security import CHECKS, STANDARDS
from phi_engine.server import running_server
from phi_test_models.tiny import mlp

CARD = {
    "intended_use": "tests of the compliance report",
    "limitations": "a 4-input toy network",
    "metrics": {"mse": 0.0},
    "risk_class": "minimal",
}


def _token(url: str, engine: Engine, scopes: list[str]) -> dict[str, str]:
    new = engine.clients.create(scopes)
    r = httpx.post(
        f"{url}/v1/auth/token",
        json={
            "client_id": new.client_id,
            "client_secret": new.client_secret,
            "grant_type": "client_credentials",
        },
    )
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _weight(report: dict, results: tuple[str, ...]) -> float:
    return sum(c["weight"] for c in report["checks"] if c["result"] in results)


def test_weak_default_and_hardened_reports_differ_as_the_weights_say(tmp_path: Path) -> None:
    path = mlp(tmp_path / "m.onnx", seed=0)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    reports = {}
    publisher = Ed25519PrivateKey.generate()
    public = publisher.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with Engine(tmp_path / "home", progress=False, log_retention_days=365) as engine:
        plain = engine.register("m", "onnx", "1", str(path))
        engine.trust_key("acme", public.decode())
        hard = engine.register(
            "m",
            "onnx",
            "2",
            str(path),
            sha256=digest,
            model_card=CARD,
            signature=sign_manifest(publisher.private_bytes_raw(), build_manifest(path)),
            signer="acme",
        )
        dep = engine.deploy(hard.model_id).deployment_id
        with running_server(engine, auth=False) as url:  # --no-auth, on loopback
            r = httpx.post(f"{url}/v1/security/validate", json={"model_id": plain.model_id})
            assert r.status_code == 200, r.text
            reports["weak"] = r.json()
        with running_server(engine) as url:
            admin = _token(url, engine, ["admin"])
            r = httpx.post(
                f"{url}/v1/security/validate", json={"model_id": plain.model_id}, headers=admin
            )
            reports["default"] = r.json()
            r = httpx.post(
                f"{url}/v1/security/validate", json={"deployment_id": dep}, headers=admin
            )
            reports["hardened"] = r.json()
            # Scope, fields and unknowns.
            infer_only = _token(url, engine, ["infer"])
            r = httpx.post(
                f"{url}/v1/security/validate", json={"model_id": plain.model_id}, headers=infer_only
            )
            assert r.status_code == 403
            r = httpx.post(f"{url}/v1/security/validate", json={}, headers=admin)
            assert r.status_code == 400 and r.json()["error"]["field"] == "model_id"
            r = httpx.post(
                f"{url}/v1/security/validate", json={"model_id": "mdl_nope"}, headers=admin
            )
            assert r.status_code == 404
            r = httpx.post(
                f"{url}/v1/security/validate",
                json={"model_id": plain.model_id, "standards": ["SOC 2"]},
                headers=admin,
            )
            assert r.status_code == 400 and r.json()["error"]["field"] == "standards"
        assert engine.verify_logs().ok
        validated = [e for e in engine.logs() if e.event == "validated"]
        assert len(validated) == 3

    weak, default, hardened = reports["weak"], reports["default"], reports["hardened"]
    for report in (weak, default, hardened):
        assert [c["id"] for c in report["checks"]] == [c.id for c in CHECKS]
        assert "not a certification" in report["disclaimer"] and report["not_assessed"]
        total = _weight(report, ("pass", "warn", "fail", "not_run"))
        bad = _weight(report, ("fail", "not_run")) + 0.5 * _weight(report, ("warn",))
        assert abs(report["risk_score"] - bad / total) < 1e-3, "risk = weighted failed share"
        for std in report["compliance"]:
            assert all(c["result"] == "pass" for c in report["checks"] if std in c["controls"])
        assert set(report["compliance"]) <= set(STANDARDS)

    def result(report: dict, check: str) -> str:
        return next(c["result"] for c in report["checks"] if c["id"] == check)

    assert result(weak, "auth_every_route") == "fail" and weak["status"] == "insecure"
    assert result(default, "auth_every_route") == "pass"
    assert result(default, "tls_or_loopback") == "pass"
    assert result(default, "hash_pinned") == "fail" and result(default, "model_card") == "fail"
    assert result(default, "signature") != "pass"
    assert default["status"] == "at_risk"
    hardened_checks = (
        "hash_pinned",
        "signature",
        "model_card",
        "evaluation_metrics",
        "risk_class",
        "input_limits",
        "retention",
    )
    for check in hardened_checks:
        assert result(hardened, check) == "pass", check
    assert hardened["status"] == "secure"
    assert weak["risk_score"] > default["risk_score"] > hardened["risk_score"]
    # Every automated check passes: every standard is listed, still with its disclaimer.
    assert hardened["risk_score"] == 0.0 and set(hardened["compliance"]) == set(STANDARDS)
    assert not set(default["compliance"]) & {"ISO/IEC 27001:2022", "EU AI Act"}


def test_log_retention_prunes_at_start_and_the_check_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time
    import types

    from phi_engine.observability import _events

    path = mlp(tmp_path / "m.onnx", seed=0)
    home = tmp_path / "home"
    forty_days_ago = types.SimpleNamespace(
        time=lambda: time.time() - 40 * 86400, monotonic=time.monotonic
    )
    monkeypatch.setattr(_events, "time", forty_days_ago)  # the log's clock only
    with Engine(home, progress=False) as engine:  # keeps every event
        model = engine.register("m", "onnx", "1", str(path))
        engine.deploy(model.model_id)
        check = next(c for c in engine.validate(model.model_id).checks if c.id == "retention")
        assert check.result == "fail"
        old = len(list(engine.logs()))
    monkeypatch.undo()
    with Engine(home, progress=False, log_retention_days=30) as engine:
        events = list(engine.logs())
        pruned = [e for e in events if e.event == "logs_pruned"]
        assert len(pruned) == 1 and pruned[0].fields["pruned"] == old
        assert all(e.event != "deployed" for e in events)
        assert engine.verify_logs().ok
        check = next(c for c in engine.validate(model.model_id).checks if c.id == "retention")
        assert check.result == "warn" and "six months" in check.evidence
        assert engine.apply_retention() is not None
    with Engine(home, progress=False, log_retention_days=400) as engine:
        check = next(c for c in engine.validate(model.model_id).checks if c.id == "retention")
        assert check.result == "pass"
    for bad in (0, -1, float("inf"), True, "30"):
        with pytest.raises(InvalidRequestError) as info:
            Engine(home, progress=False, log_retention_days=bad)  # type: ignore[arg-type]
        assert info.value.field == "log_retention_days"
