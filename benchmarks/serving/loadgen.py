"""Closed-loop HTTP/1.1 load generator: N keep-alive connections, each sending its next request
as soon as the previous answer arrives, for a fixed duration after an excluded warm-up.

    python loadgen.py --port 8100 --kind peer --concurrency 64 --duration 15 --warmup 3 --out r.json

A deliberately small client (raw asyncio streams, uvloop when installed, pre-encoded requests)
so that it costs the shared machine as little CPU as possible. Every response is kept and checked
against the numpy reference after the run (not while timing). Kinds:

    peer      POST /predict  {"input": [256]}                          -> {"output": [10]}
    bentoml   POST /predict  {"input": [[256]]}                        -> [[10]]
    constant  POST /predict  {"input": [256]}                          -> anything (not checked)
    phi-v1    POST /v1/inference/run  the product sheet's body          -> {"output": {"y": [[10]]}}
    phi-v2    POST /v2/models/{name}/infer  V2 JSON tensors     -> {"outputs": [{data: [10]}]}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import inputs, reference

N_ROWS = 512


def build_requests(a: argparse.Namespace, rows: np.ndarray) -> list[bytes]:
    headers = [f"Host: 127.0.0.1:{a.port}", "Content-Type: application/json"]
    if a.token:
        headers.append(f"Authorization: Bearer {a.token}")
    path = a.path
    out = []
    for row in rows:
        r = row.tolist()
        if a.kind in ("peer", "constant"):
            body = {"input": r}
        elif a.kind == "bentoml":
            body = {"input": [r]}
        elif a.kind == "phi-v1":
            body = {"deployment_id": a.deployment_id, "input": {"data": [r]}, "priority": "normal"}
        elif a.kind == "phi-v2":
            body = {"inputs": [{"name": "x", "shape": [1, len(r)], "datatype": "FP32", "data": r}]}
        else:
            raise SystemExit(f"unknown kind {a.kind}")
        raw = json.dumps(body).encode()
        head = "\r\n".join([f"POST {path} HTTP/1.1", *headers, f"Content-Length: {len(raw)}"])
        out.append(head.encode() + b"\r\n\r\n" + raw)
    return out


def extract(kind: str, doc: object) -> list[float]:
    if kind == "peer":
        return doc["output"]  # type: ignore[index]
    if kind == "bentoml":
        return doc[0]  # type: ignore[index]
    if kind == "phi-v1":
        return doc["output"]["y"][0]  # type: ignore[index]
    if kind == "phi-v2":
        return doc["outputs"][0]["data"]  # type: ignore[index]
    raise ValueError(kind)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body, and whether the server will close the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = -1
    chunked = close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif name == b"connection" and b"close" in value.lower():
            close = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, b"".join(parts), close
    if length >= 0:
        return status, await reader.readexactly(length), close
    return status, await reader.read(), True


async def run(a: argparse.Namespace) -> dict[str, object]:
    rows = inputs(N_ROWS)
    requests = build_requests(a, rows)
    t_start = time.perf_counter()
    t_measure = t_start + a.warmup
    t_end = t_measure + a.duration
    lat: list[float] = []
    kept: list[tuple[int, bytes]] = []
    errors: dict[str, int] = {}
    done_total = 0

    def error(what: str) -> None:
        errors[what] = errors.get(what, 0) + 1

    async def connection(k: int) -> None:
        nonlocal done_total
        i = k * 7919
        reader = writer = None
        while True:
            now = time.perf_counter()
            if now >= t_end:
                break
            if writer is None:
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", a.port)
                except OSError as exc:
                    error(f"connect: {type(exc).__name__}")
                    await asyncio.sleep(0.05)
                    continue
            idx = i % N_ROWS
            i += 1
            t0 = time.perf_counter()
            try:
                writer.write(requests[idx])
                status, body, close = await read_response(reader)
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
            ) as exc:
                if t0 >= t_measure:
                    error(f"io: {type(exc).__name__}")
                writer.close()
                writer = None
                continue
            t1 = time.perf_counter()
            done_total += 1
            if t0 >= t_measure and t1 <= t_end:
                lat.append(t1 - t0)
                if status != 200:
                    error(f"http {status}: {body[:120]!r}")
                else:
                    kept.append((idx, body))
            if close:
                writer.close()
                writer = None
        if writer is not None:
            writer.close()

    tasks = [asyncio.ensure_future(connection(k)) for k in range(a.concurrency)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=a.warmup + a.duration + 120)
    except TimeoutError:
        error("client: requests still open 120 s after the end")

    # Check every kept answer against the numpy reference (after timing).
    expected = reference(rows)
    wrong = 0
    exec_ms, queue_ms, batch = [], [], []
    first_bad = None
    if a.kind != "constant":
        for idx, body in kept:
            try:
                doc = json.loads(body)
                got = np.asarray(extract(a.kind, doc), dtype=np.float32)
                ok = got.shape == expected[idx].shape and np.allclose(
                    got, expected[idx], rtol=1e-4, atol=1e-4
                )
            except Exception as exc:
                ok, doc = False, None
                first_bad = first_bad or f"{type(exc).__name__}: {body[:200]!r}"
            if not ok:
                wrong += 1
                first_bad = first_bad or body[:200].decode(errors="replace")
            elif a.kind == "phi-v1":
                exec_ms.append(doc["execution_time_ms"])
                queue_ms.append(doc["queue_time_ms"])
                batch.append(doc["batch_size"])
    if wrong:
        errors["wrong answer"] = wrong
    lat_ms = np.asarray(lat) * 1000.0
    out: dict[str, object] = {
        "kind": a.kind,
        "concurrency": a.concurrency,
        "duration_s": a.duration,
        "requests": int(lat_ms.size),
        "rps": lat_ms.size / a.duration,
        "p50_ms": float(np.percentile(lat_ms, 50)) if lat_ms.size else float("nan"),
        "p90_ms": float(np.percentile(lat_ms, 90)) if lat_ms.size else float("nan"),
        "p99_ms": float(np.percentile(lat_ms, 99)) if lat_ms.size else float("nan"),
        "mean_ms": float(lat_ms.mean()) if lat_ms.size else float("nan"),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "checked": len(kept) if a.kind != "constant" else 0,
        "first_bad": first_bad,
        "event_loop": type(asyncio.get_event_loop()).__module__,
    }
    if exec_ms:
        out["server_exec_ms_median"] = float(np.median(exec_ms))
        out["server_queue_ms_median"] = float(np.median(queue_ms))
        out["server_queue_ms_p99"] = float(np.percentile(queue_ms, 99))
        out["batch_size_mean"] = float(np.mean(batch))
        out["batch_size_median"] = float(np.median(batch))
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--kind", required=True)
    p.add_argument("--path", default="/predict")
    p.add_argument("--token", default=None)
    p.add_argument("--deployment-id", default=None)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    result = asyncio.run(run(a))
    Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
