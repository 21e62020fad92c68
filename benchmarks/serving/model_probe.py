"""One request body per load-generator kind, for the readiness probe of bench_serving.py."""

from __future__ import annotations

import json

PROBE_ROW = [0.0] * 256


def probe_body(kind: str, deployment_id: str | None) -> bytes:
    if kind in ("peer", "constant"):
        body: object = {"input": PROBE_ROW}
    elif kind == "bentoml":
        body = {"input": [PROBE_ROW]}
    elif kind == "phi-v1":
        body = {
            "deployment_id": deployment_id,
            "input": {"data": [PROBE_ROW]},
            "priority": "normal",
        }
    elif kind == "phi-v2":
        body = {"inputs": [{"name": "x", "shape": [1, 256], "datatype": "FP32", "data": PROBE_ROW}]}
    else:
        raise ValueError(kind)
    return json.dumps(body).encode()
