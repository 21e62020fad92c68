"""Schemathesis against the server's own OpenAPI document, over real HTTP on loopback.

The schema is loaded from the running server (``/openapi.json``); every ``/v1`` and ``/v2``
operation (and the health and metrics routes beside them) is called with generated requests,
authenticated with an admin bearer token, against an engine seeded with one registered model,
one deployment and one finished batch job. Each generated case is sent twice: as generated
(ids are random strings, so the "unknown id" paths are fuzzed) and with the seeded ids put in
its path and body (so the code behind the id lookup is fuzzed too). Checks: no 5xx
(``not_a_server_error``), responses conform to the declared schema and content type, and every
error outside the OAuth token endpoint has API.md's shape with a status API.md allows.

Nothing is excluded. Two bounds the schema allows are tightened in the seeded pass only, where
they would make one legitimate request take minutes: ``POST /v1/models/profile`` ``requests``
(up to 100 000 timed inferences) and ``POST /v1/deployments/{id}/update`` ``step_seconds`` (up to
600 s between rollout steps). The generated value is still sent in the unseeded pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
)

from phi_test_models.tiny import mlp  # noqa: E402

from .conftest import Server  # noqa: E402

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
# API.md "Conventions": the statuses an error may have (never FastAPI's 422).
ERROR_STATUSES = {400, 401, 403, 404, 405, 409, 413, 429, 503}
MODEL_NAME, MODEL_VERSION = "fuzzed", "1.0.0"


@dataclass
class Seeded:
    """The server, an admin token and the ids that exist in its engine."""

    server: Server
    headers: dict[str, str]
    model_file: Path
    ids: dict[str, str] = field(default_factory=dict)

    def ensure(self) -> None:
        """Put back whatever a destructive case removed (a model, a deployment)."""
        engine = self.server.engine
        models = [m for m in engine.models(MODEL_NAME) if m.version == MODEL_VERSION]
        if not models:
            models = [engine.register(MODEL_NAME, "onnx", MODEL_VERSION, str(self.model_file))]
        model_id = models[0].model_id
        if engine.blocked(model_id) is not None:  # a fuzzed kill switch call stopped it
            engine.lift_kill_switch(model_id)
        served = [d for d in engine.deployments() if d.primary.record.model_id == model_id]
        if not served:
            served = [engine.deploy(model_id, resource_allocation={"cpu": 1, "nodes": 1})]
        self.ids.update(model_id=model_id, deployment_id=served[0].deployment_id)

    def substitute(self, case: Any) -> None:
        """Real ids in the case's path and body."""
        path = {
            "model_id": self.ids["model_id"],
            "deployment_id": self.ids["deployment_id"],
            "job_id": self.ids["job_id"],
            "name": MODEL_NAME,
            "version": MODEL_VERSION,
        }
        if case.path_parameters:
            for key in list(case.path_parameters):
                if key in path:
                    case.path_parameters[key] = path[key]
        if isinstance(case.body, dict):
            for key in ("model_id", "deployment_id"):
                if key in case.body:
                    case.body[key] = self.ids[key]
            label = f"{case.method.upper()} {case.path}"
            if label == "POST /v1/models/profile" and isinstance(case.body.get("requests"), int):
                case.body["requests"] = min(case.body["requests"], 8)
            if label == "POST /v1/deployments/{deployment_id}/update":
                step = case.body.get("step_seconds")
                if isinstance(step, int | float) and not isinstance(step, bool):
                    case.body["step_seconds"] = min(step, 0.05)


@pytest.fixture
def seeded(server: Server, tmp_path: Path) -> Iterator[Seeded]:
    s = Seeded(server, {"Authorization": f"Bearer {server.token()}"}, mlp(tmp_path / "m.onnx"))
    s.ensure()
    rows = [[0.5, -1.0, 2.0, 0.25]] * 5
    (server.data_dir / "rows.json").write_text(json.dumps(rows))
    job = server.engine.run_job(s.ids["deployment_id"], str(server.data_dir / "rows.json"))
    s.ids["job_id"] = job.job_id
    yield s


@pytest.fixture
def api_schema(seeded: Seeded) -> Any:
    return schemathesis.openapi.from_url(f"{seeded.server.url}/openapi.json", timeout=30)


schema = schemathesis.pytest.from_fixture("api_schema")


def assert_error_shape(response: Any, label: str) -> None:
    """API.md: an error is ``{"error": {"code", "message", "field"?}}`` with a listed status."""
    status = response.status_code
    if status < 400 or label == "POST /v1/auth/token":  # RFC 6749 §5.2 bodies there
        return
    # GET /v2/models/{name}/ready answers 400 {"name", "ready": false} (the V2 protocol).
    if label.startswith("GET /v2/models/") and label.endswith("/ready") and status == 400:
        assert response.json()["ready"] is False
        return
    assert status in ERROR_STATUSES, (label, status, response.text)
    body = response.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
    assert set(body["error"]) <= {"code", "message", "field"}, body
    assert "Traceback" not in response.text and 'File "' not in response.text, response.text


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    database=None,
    derandomize=True,  # the same cases on every run: a failure here reproduces
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_survives_fuzzing(case: Any, seeded: Seeded) -> None:
    label = f"{case.method.upper()} {case.path}"
    response = case.call_and_validate(headers=seeded.headers, checks=CHECKS, timeout=60)
    assert_error_shape(response, label)
    seeded.substitute(case)
    response = case.call_and_validate(headers=seeded.headers, checks=CHECKS, timeout=60)
    assert_error_shape(response, label)
    seeded.ensure()


def test_the_schema_covers_v1_and_v2(seeded: Seeded) -> None:
    spec = httpx.get(f"{seeded.server.url}/openapi.json", timeout=30).json()
    paths = set(spec["paths"])
    assert {"/v1/models/register", "/v1/inference/run", "/v2/models/{name}/infer"} <= paths


# ---- the V2 infer body, which the served schema does not declare -------------------------------

# The V2 infer routes read the raw body (JSON or binary tensor data), so FastAPI's schema declares
# no request body for them and the fuzzing above sends none. This is the Open Inference
# Protocol's inference request (KServe V2, "$inference_request"), grafted onto the served schema.
V2_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
V2_DATATYPES += ["FP16", "FP32", "FP64", "BYTES"]
V2_INFER_BODY = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype", "data"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer"}},
                    "datatype": {"type": "string", "enum": V2_DATATYPES},
                    "parameters": {"type": "object"},
                    "data": {},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
            },
        },
    },
}


@pytest.fixture
def v2_infer_schema(seeded: Seeded) -> Any:
    spec = httpx.get(f"{seeded.server.url}/openapi.json", timeout=30).json()
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"):
        spec["paths"][path]["post"]["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": V2_INFER_BODY}},
        }
        # The version query parameter FastAPI adds to the route without {version} is dropped:
        # it is an artefact of one handler serving both paths.
        params = spec["paths"][path]["post"].get("parameters", [])
        spec["paths"][path]["post"]["parameters"] = [
            p for p in params if p["in"] == "path" or p["name"] != "version"
        ]
    return schemathesis.openapi.from_dict(spec).include(path_regex=r"^/v2/models/.*/infer$")


v2_schema = schemathesis.pytest.from_fixture("v2_infer_schema")


@v2_schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_v2_infer_bodies_survive_fuzzing(case: Any, seeded: Seeded) -> None:
    seeded.substitute(case)
    response = case.call_and_validate(
        base_url=seeded.server.url, headers=seeded.headers, checks=CHECKS, timeout=60
    )
    assert_error_shape(response, f"{case.method.upper()} {case.path}")


# ---- 500s the fuzzing once found, one request each (fixed; kept as regressions) ---------------

X = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}


def post_v2(seeded: Seeded, body: object) -> httpx.Response:
    url = f"{seeded.server.url}/v2/models/{MODEL_NAME}/infer"
    return httpx.post(url, json=body, headers=seeded.headers, timeout=30)


def assert_400(response: httpx.Response) -> None:
    # pytest.fail without a traceback: formatting such tracebacks after the fuzzing above has
    # tripped a CPython 3.11.7 ast bug ("AST constructor recursion depth mismatch").
    if response.status_code != 400 or response.json()["error"]["code"] != "invalid_request":
        pytest.fail(f"expected 400 invalid_request: {response.status_code} {response.text}", False)


@pytest.mark.parametrize("parameters", [[1], "a", 3])
def test_v2_request_parameters_that_are_not_an_object_are_400(
    seeded: Seeded, parameters: object
) -> None:
    assert_400(post_v2(seeded, {"inputs": [X], "parameters": parameters}))


@pytest.mark.parametrize(
    "outputs", ["y", [1], [{}], [{"name": "y", "parameters": "b"}], {"name": "y"}], ids=repr
)
def test_v2_malformed_requested_outputs_are_400(seeded: Seeded, outputs: object) -> None:
    assert_400(post_v2(seeded, {"inputs": [X], "outputs": outputs}))


def test_v2_input_parameters_that_are_not_an_object_are_400(seeded: Seeded) -> None:
    assert_400(post_v2(seeded, {"inputs": [{**X, "parameters": "p"}]}))


@pytest.mark.parametrize("name", [[], ["x"], {"a": 1}], ids=repr)
def test_v2_input_names_that_are_not_strings_are_400(seeded: Seeded, name: object) -> None:
    assert_400(post_v2(seeded, {"inputs": [{**X, "name": name}]}))


def test_v2_timeout_too_large_for_a_float_is_400(seeded: Seeded) -> None:
    assert_400(post_v2(seeded, {"inputs": [X], "parameters": {"timeout": 10**400}}))


@pytest.mark.parametrize("field", ["input", "output_url"])
def test_v1_file_names_with_a_nul_byte_are_400(seeded: Seeded, field: str) -> None:
    body: dict[str, Any] = {"deployment_id": seeded.ids["deployment_id"]}
    body["input"] = {"data": "a\x00.json" if field == "input" else "rows.json"}
    if field == "output_url":
        body["output_url"] = "out\x00.json"
    r = httpx.post(
        f"{seeded.server.url}/v1/inference/run", json=body, headers=seeded.headers, timeout=30
    )
    assert_400(r)


# ---- what the served schema says about errors ----------------------------------------------------


def test_the_schema_declares_the_errors_the_server_sends(seeded: Seeded) -> None:
    spec = httpx.get(f"{seeded.server.url}/openapi.json", timeout=30).json()
    register = spec["paths"]["/v1/models/register"]["post"]
    assert "422" not in register["responses"]
    assert {"400", "401", "403"} <= set(register["responses"])
    assert spec.get("components", {}).get("securitySchemes")
    # The server really answers 400 where the schema promises 422.
    r = httpx.post(
        f"{seeded.server.url}/v1/models/register", json={}, headers=seeded.headers, timeout=30
    )
    assert r.status_code == 400
