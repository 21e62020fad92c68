"""``phi-engine demo``: the whole product over HTTP in one command.

It starts the embedded server on loopback over an engine in a temporary home, creates an OAuth 2.0
client, and then, as any HTTP client would: takes a token, registers a model the project builds (a
3-layer MLP, 256 -> 512 -> 512 -> 10, written as ONNX with seeded weights), deploys it, sends
requests of every priority class from concurrent clients (checking each answer against numpy),
runs a batch job, and prints the profile and the event log.
"""

from __future__ import annotations

import functools
import itertools
import json
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

LAYERS = (256, 512, 512, 10)
PRIORITIES = ("ultra-high", "high", "normal", "low")


@functools.cache
def mlp_weights(seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The demo model's layers (W, b), seeded."""
    rng = np.random.default_rng(seed)
    return [
        (
            (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32),
            (0.1 * rng.standard_normal(b)).astype(np.float32),
        )
        for a, b in itertools.pairwise(LAYERS)
    ]


def mlp_reference(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """The demo model in numpy."""
    h = x.astype(np.float64)
    layers = mlp_weights(seed)
    for i, (w, b) in enumerate(layers):
        h = h @ w + b
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    return h.astype(np.float32)


def write_mlp(path: Path, seed: int = 0) -> Path:
    """Write the demo model as ONNX (input ``x`` [batch, 256], output ``logits`` [batch, 10])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, prev = [], [], "x"
    layers = mlp_weights(seed)
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(layers) - 1
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"g{i}"]))
        out = "logits" if last else f"h{i}"
        nodes.append(helper.make_node("Identity" if last else "Relu", [f"g{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes,
        "demo_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", LAYERS[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", LAYERS[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def run(
    home: Path | None = None, seconds: float = 3.0, echo: Callable[[str], Any] = print
) -> dict[str, Any]:
    """The demo; returns what it measured (for tests)."""
    import httpx

    from phi_engine.engine import Engine
    from phi_engine.server._background import running_server

    with tempfile.TemporaryDirectory(prefix="phi-engine-demo-") as tmp:
        root = home or Path(tmp) / "home"
        with Engine(root, progress=False) as engine:
            client = engine.clients.create(["admin"], name="demo")
            with running_server(engine) as url:
                echo(f"phi_engine server on {url} (home {root})")
                token = httpx.post(
                    f"{url}/v1/auth/token",
                    json={
                        "client_id": client.client_id,
                        "client_secret": client.client_secret,
                        "grant_type": "client_credentials",
                    },
                ).json()
                echo(
                    f"token: {token['token_type']}, expires in {token['expires_in']} s, "
                    f"scope {token['scope']!r}"
                )
                headers = {"Authorization": f"Bearer {token['access_token']}"}
                with httpx.Client(base_url=url, headers=headers, timeout=120) as http:
                    return _tour(http, engine.home, seconds, echo)


def _tour(http: Any, home: Path, seconds: float, echo: Callable[[str], Any]) -> dict[str, Any]:
    (home / "data").mkdir(parents=True, exist_ok=True)
    model = write_mlp(home / "data" / "demo_mlp.onnx")  # clients name files in the data dir
    r = _ok(
        http.post(
            "/v1/models/register",
            json={
                "model_name": "demo_mlp",
                "framework": "onnx",
                "version": "1.0.0",
                "storage_url": model.as_uri(),
            },
        )
    )
    echo(f"POST /v1/models/register -> {r['model_id']}: {r['message']}")
    r = _ok(
        http.post(
            "/v1/models/deploy",
            json={
                "model_id": r["model_id"],
                "execution_mode": "local",
                "resource_allocation": {"cpu": 1, "nodes": 2},
                "scaling_policy": "fixed",
            },
        )
    )
    dep = r["deployment_id"]
    echo(f"POST /v1/models/deploy -> {dep}: {r['message']}")
    measured = _load(http, dep, seconds)
    echo(
        f"\n{measured['total']} requests from {len(PRIORITIES) * 2} concurrent clients in "
        f"{seconds:.0f} s, every answer checked against numpy ({measured['wrong']} wrong):"
    )
    echo(f"  {'priority':<11} {'served':>6} {'p50 ms':>7} {'p99 ms':>7}")
    for p in PRIORITIES:
        ms = measured["latency"][p] or [float("nan")]
        echo(
            f"  {p:<11} {len(measured['latency'][p]):>6} {np.percentile(ms, 50):>7.1f} "
            f"{np.percentile(ms, 99):>7.1f}"
        )
    rows = np.random.default_rng(1).standard_normal((500, LAYERS[0])).astype(np.float32)
    (home / "data" / "rows.npy").parent.mkdir(parents=True, exist_ok=True)
    np.save(home / "data" / "rows.npy", rows)
    r = _ok(
        http.post(
            "/v1/inference/run",
            json={
                "deployment_id": dep,
                "input": {"data": "rows.npy"},
                "batch_size": 100,
                "priority": "low",
            },
        )
    )
    out = np.load(home / "data" / r["output"])
    echo(
        f"\nbatch job {r['job_id']}: 500 rows -> {r['output']} in {r['execution_time']}, "
        f"max error {float(np.abs(out - mlp_reference(rows)).max()):.2e}"
    )
    prof = _ok(
        http.post(
            "/v1/models/profile",
            json={
                "deployment_id": dep,
                "batch_sizes": [1, 8, 32],
                "requests": 32,
                "deadline_ms": 50,
            },
        )
    )
    echo("\nPOST /v1/models/profile suggestions:")
    for message in prof["optimization_suggestions"]:
        echo(f"  - {message}")
    logs = _ok(http.get("/v1/logs", params={"deployment_id": dep}))["logs"]
    echo("\nGET /v1/logs:")
    for e in logs:
        echo(f"  {e['timestamp']}  {e['level']:<7} {e['event']}")
    return {**measured, "deployment_id": dep, "events": [e["event"] for e in logs]}


def _load(http: Any, dep: str, seconds: float) -> dict[str, Any]:
    """Two clients per priority class, one row per request, for ``seconds``."""
    latency: dict[str, list[float]] = {p: [] for p in PRIORITIES}
    wrong = 0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        nonlocal wrong
        priority = PRIORITIES[k % len(PRIORITIES)]
        rng = np.random.default_rng(k)
        while time.monotonic() < stop:
            x = rng.standard_normal((1, LAYERS[0])).astype(np.float32)
            sent = time.perf_counter()
            r = _ok(
                http.post(
                    "/v1/inference/run",
                    json={
                        "deployment_id": dep,
                        "input": {"data": x.tolist()},
                        "priority": priority,
                    },
                )
            )
            ms = (time.perf_counter() - sent) * 1000
            ok = np.allclose(r["output"]["logits"], mlp_reference(x), rtol=1e-4, atol=1e-4)
            with lock:
                latency[priority].append(ms)
                wrong += not ok

    with ThreadPoolExecutor(len(PRIORITIES) * 2) as pool:
        list(pool.map(client, range(len(PRIORITIES) * 2)))
    return {"latency": latency, "wrong": wrong, "total": sum(len(v) for v in latency.values())}


def _ok(response: Any) -> Any:
    if response.status_code >= 400:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {json.dumps(response.json())}"
        )
    return response.json()
