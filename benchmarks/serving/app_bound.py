"""The least a Python server can do per request, for the serving benchmark's concurrency-1 bound:
a bare ASGI app under uvicorn (httptools, uvloop, one worker) that reads the body and answers a
constant, after running the compiled model on a fixed row with ``--model``. No parsing, checks,
auth, scheduling or answer encoding; the answer is not the model's.

    python app_bound.py --port 8100 [--model]

With ``--model`` its latency above the bare app's is what the model's batch-1 run costs inside a
server (the cache as the HTTP path leaves it), a floor under any server of this model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model import inputs, write_onnx

ANSWER = b'{"output": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]}'
HEADERS = [(b"content-type", b"application/json")]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--model", action="store_true", help="run the model on each request")
    a = p.parse_args()

    import uvicorn

    from phi_engine.graph import compile

    compiled = None
    feeds = {"x": inputs(1)}
    if a.model:
        compiled = compile(write_onnx(Path(tempfile.mkdtemp(prefix="phi-bound-")) / "mlp.onnx"))
        compiled.run(feeds)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        if compiled is not None:
            compiled.run(feeds, 1, check=False)  # one thread, as a cpu=1 deployment
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": ANSWER})

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=a.port,
        log_level="warning",
        access_log=False,
        http="httptools",
        loop="uvloop",
        lifespan="off",
    )


if __name__ == "__main__":
    main()
