"""Where phi_engine's serving time goes, without HTTP or a profiler's overhead: CPU per request
of each layer, measured in-process at a fixed concurrency (closed loop over the ASGI app).

    taskset -c 0 python profile_phi_app.py [--concurrency 64] [--seconds 3]

Rows (each: req/s on this one event loop, process CPU µs per request, main-thread µs per request):
    asgi constant app       a FastAPI endpoint returning a constant (the framework floor, no HTTP)
    asgi phi /v1 auth on    create_app(engine, auth=True), POST /v1/inference/run
    asgi phi /v1 auth off   the same with auth=False (the bearer check's share)
    asgi phi /v2 auth on    POST /v2/models/mlp/infer, JSON tensors
    engine.submit direct    engine.submit + asyncio.wrap_future with the row list (no FastAPI)
    json decode+encode      json.loads of the /v1 body + json.dumps of the /v1 answer
The HTTP server's own share is the difference between the live constant endpoint's CPU per
request (bench_serving.py's "server CPU µs/req") and the ASGI constant row here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import inputs, reference, write_onnx


def scope(path: str, body: bytes, token: str | None) -> dict:
    headers = [
        (b"host", b"127.0.0.1"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if token:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


async def asgi_call(app, sc: dict, body: bytes) -> tuple[int, bytes]:
    sent = False
    out: dict = {"status": 0, "body": []}

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(msg: dict) -> None:
        if msg["type"] == "http.response.start":
            out["status"] = msg["status"]
        elif msg["type"] == "http.response.body":
            out["body"].append(msg.get("body", b""))

    await app(sc, receive, send)
    return out["status"], b"".join(out["body"])


async def closed_loop(one, concurrency: int, seconds: float) -> tuple[int, float, float, float]:
    """Runs ``one(i)`` from ``concurrency`` coroutines for ``seconds`` (after 0.5 s warm-up)."""
    count = 0
    stop = False
    measuring = False

    async def worker(k: int) -> None:
        nonlocal count
        i = k
        while not stop:
            await one(i)
            await asyncio.sleep(0)  # an app that never suspends would starve the timer
            i += concurrency
            if measuring:
                count += 1

    tasks = [asyncio.ensure_future(worker(k)) for k in range(concurrency)]
    await asyncio.sleep(0.5)
    measuring = True
    t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
    await asyncio.sleep(seconds)
    wall, cpu, main = time.perf_counter() - t0, time.process_time() - c0, time.thread_time() - m0
    n = count
    stop = True
    await asyncio.gather(*tasks)
    return n, wall, cpu, main


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args()

    import numpy as np
    from fastapi import FastAPI
    from fastapi.responses import Response

    from phi_engine import Engine
    from phi_engine.server import create_app

    home = Path(tempfile.mkdtemp(prefix="phi-prof-home-"))
    engine = Engine(home, progress=False)
    rec = engine.register("mlp", "onnx", "1.0.0", write_onnx(home / "src" / "mlp.onnx").as_uri())
    dep = engine.deploy(rec.model_id, "local", {"cpu": 1, "nodes": 1}, "fixed", max_batch=32)
    new = engine.clients.create(["admin"], name="prof")
    token = engine.tokens.issue(
        engine.clients.authenticate(new.client_id, new.client_secret), ["infer"]
    )["access_token"]
    app_on, app_off = create_app(engine, auth=True), create_app(engine, auth=False)
    const_app = FastAPI()
    const = json.dumps({"output": [0.0] * 10}).encode()

    @const_app.post("/predict")
    async def constant() -> Response:
        return Response(const, media_type="application/json")

    rows = inputs(256)
    expected = reference(rows)
    v1 = [
        json.dumps(
            {
                "deployment_id": dep.deployment_id,
                "input": {"data": [r.tolist()]},
                "priority": "normal",
            }
        ).encode()
        for r in rows
    ]
    v2 = [
        json.dumps(
            {"inputs": [{"name": "x", "shape": [1, 256], "datatype": "FP32", "data": r.tolist()}]}
        ).encode()
        for r in rows
    ]
    lists = [[r.tolist()] for r in rows]
    s_v1_on = scope("/v1/inference/run", v1[0], token)
    s_v1_off = scope("/v1/inference/run", v1[0], None)
    s_v2_on = scope("/v2/models/mlp/infer", v2[0], token)
    s_const = scope("/predict", b"{}", None)
    answer = None

    def checked(fn):
        async def one(i: int) -> None:
            status, body = await fn(i)
            assert status == 200, body[:300]

        return one

    async def v1_on(i: int):
        return await asgi_call(app_on, s_v1_on, v1[i % 256])

    async def v1_off(i: int):
        return await asgi_call(app_off, s_v1_off, v1[i % 256])

    async def v2_on(i: int):
        return await asgi_call(app_on, s_v2_on, v2[i % 256])

    async def const_call(i: int):
        return await asgi_call(const_app, s_const, b"{}")

    async def direct(i: int) -> None:
        res = await asyncio.wrap_future(engine.submit(dep.deployment_id, lists[i % 256]))
        assert np.allclose(res.outputs["y"][0], expected[i % 256], atol=1e-4)

    async def codec(i: int) -> None:
        json.loads(v1[i % 256])
        json.dumps(answer)

    async def run_all() -> None:
        nonlocal answer
        _, body = await v1_on(0)
        answer = json.loads(body)
        print(
            f"concurrency {a.concurrency}, {a.seconds:g} s each, one event loop, "
            f"deployment cpu=1 nodes=1 max_batch=32\n"
        )
        print(
            "| path (in-process, no HTTP) | req/s | process CPU µs/req | loop-thread CPU µs/req |"
        )
        print("|---|---|---|---|")
        for name, fn in [
            ("asgi constant app", checked(const_call)),
            ("asgi phi /v1 auth on", checked(v1_on)),
            ("asgi phi /v1 auth off", checked(v1_off)),
            ("asgi phi /v2 auth on", checked(v2_on)),
            ("engine.submit direct (+wrap_future)", direct),
            ("json decode /v1 body + encode answer", codec),
        ]:
            n, wall, cpu, main_t = await closed_loop(fn, a.concurrency, a.seconds)
            print(
                f"| {name} | {n / wall:,.0f} | {cpu / n * 1e6:,.0f} | {main_t / n * 1e6:,.0f} |",
                flush=True,
            )

    asyncio.run(run_all())
    engine.close()


if __name__ == "__main__":
    main()
