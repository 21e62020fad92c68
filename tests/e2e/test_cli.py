"""The phi-engine command: clients, register, deploy, infer, logs, and the demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from phi_test_models.tiny import mlp, mlp_reference


def cli(*args: str, home: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "phi_engine.cli", *args, "--home", str(home)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=check)


def test_clients_register_deploy_infer_logs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    made = json.loads(
        cli("clients", "create", "--scopes", "infer models:read", "--json", home=home).stdout
    )
    assert made["client_id"].startswith("cl_") and len(made["client_secret"]) >= 32
    assert made["scopes"] == ["models:read", "infer"] or set(made["scopes"]) == {
        "infer",
        "models:read",
    }
    listed = json.loads(cli("clients", "list", "--json", home=home).stdout)
    assert [c["client_id"] for c in listed] == [made["client_id"]]
    assert made["client_secret"] not in json.dumps(listed)

    model = mlp(tmp_path / "m.onnx")
    reg = json.loads(
        cli("register", "mlp", "onnx", "1.0.0", str(model), "--json", home=home).stdout
    )
    dep = json.loads(
        cli("deploy", reg["model_id"], "--cpu", "1", "--replicas", "1", "--json", home=home).stdout
    )
    x = [[0.5, -1.0, 2.0, 0.25]]
    out = json.loads(
        cli("infer", dep["deployment_id"], json.dumps({"x": x}), "--json", home=home).stdout
    )
    np.testing.assert_allclose(
        out["output"]["y"], mlp_reference(np.array(x, np.float32)), rtol=1e-5, atol=1e-5
    )
    events = [e["event"] for e in json.loads(cli("logs", "--json", home=home).stdout)]
    assert "model_registered" in events and "deployed" in events


def test_errors_exit_with_a_status_and_one_line(tmp_path: Path) -> None:
    r = cli("deploy", "mdl_0000000000000000", home=tmp_path / "home", check=False)
    assert r.returncode == 3 and r.stderr.strip().startswith("error:")
    assert "Traceback" not in r.stderr
    r = cli("clients", "create", "--scopes", "superuser", home=tmp_path / "home", check=False)
    assert r.returncode == 2 and "scope" in r.stderr


@pytest.mark.slow
def test_demo_shows_the_product_over_http(tmp_path: Path) -> None:
    r = cli("demo", "--seconds", "1", home=tmp_path / "home")
    assert "POST /v1/models/register -> mdl_" in r.stdout
    assert "(0 wrong)" in r.stdout
    assert "batch job job_" in r.stdout and "GET /v1/logs:" in r.stdout
