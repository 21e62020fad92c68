"""The runtime re-hash: a stored artifact changed while its model serves drops readiness and is
logged."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from phi_engine.engine import Engine
from phi_engine.errors import InvalidRequestError
from phi_test_models.tiny import mlp, mlp_reference


def test_a_tampered_artifact_drops_readiness_and_is_logged(tmp_path: Path) -> None:
    from phi_engine.server import running_server

    with Engine(tmp_path / "home", progress=False, rehash_interval_s=0.05) as engine:
        record = engine.register("mlp", "onnx", "1", str(mlp(tmp_path / "m.onnx", seed=0)))
        dep = engine.deploy(record.model_id)
        assert engine.check_integrity() == {record.model_id: True}
        assert dep.status == "ready"
        path = record.artifact_path
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        with path.open("ab") as f:
            f.write(b"\0")
        deadline = time.monotonic() + 10
        while dep.status != "failed" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert dep.status == "failed", "the re-hash loop must notice within a few intervals"
        failed = [e for e in engine.logs(dep.deployment_id) if e.event == "integrity_failed"]
        assert len(failed) == 1 and failed[0].level == "error", "logged once, not every interval"
        assert failed[0].fields["model_id"] == record.model_id
        # The model in memory is the verified one: a request sent anyway is still right.
        x = np.ones((1, 4), np.float32)
        out = engine.infer(dep.deployment_id, {"x": x}).outputs["y"]
        np.testing.assert_allclose(out, mlp_reference(x), rtol=1e-5, atol=1e-5)
        with running_server(engine, auth=False) as url:
            r = httpx.get(f"{url}/health/ready")
            assert r.status_code == 503 and r.json()["deployments"][dep.deployment_id] == "failed"
        report = engine.validate(deployment_id=dep.deployment_id)
        assert report.check("runtime_integrity").result == "pass"
        assert report.check("hash_at_load").result == "fail"
        assert engine.verify_logs().ok


def test_the_rehash_interval_is_checked_and_can_be_off(tmp_path: Path) -> None:
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(InvalidRequestError) as info:
            Engine(tmp_path / "a", rehash_interval_s=bad)
        assert info.value.field == "rehash_interval_s"
    with Engine(tmp_path / "b", progress=False, rehash_interval_s=None) as engine:
        record = engine.register("mlp", "onnx", "1", str(mlp(tmp_path / "m.onnx", seed=0)))
        dep = engine.deploy(record.model_id)
        report = engine.validate(deployment_id=dep.deployment_id)
        assert report.check("runtime_integrity").result == "fail"
