"""Two FastAPI peers on one uvicorn worker: ``--mode numpy`` computes each request with numpy
(no batching); ``--mode constant`` returns a constant without reading the body (the HTTP floor).

    python app_fastapi.py --mode numpy --port 8100 [--http auto|h11|httptools] [--loop ...]

API: ``POST /predict`` with ``{"input": [256 floats]}`` -> ``{"output": [10 floats]}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import NumpyMLP


def build(mode: str) -> FastAPI:
    app = FastAPI()
    if mode == "constant":
        const = json.dumps({"output": [0.0] * 10}).encode()

        @app.post("/predict")
        async def constant() -> Response:
            return Response(const, media_type="application/json")

    else:
        mlp = NumpyMLP()

        @app.post("/predict")
        async def predict(request: Request) -> Response:
            x = np.asarray(json.loads(await request.body())["input"], dtype=np.float32)
            y = mlp(x[None, :])[0]
            return Response(json.dumps({"output": y.tolist()}), media_type="application/json")

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["numpy", "constant"], required=True)
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--http", default="auto")
    p.add_argument("--loop", default="auto")
    a = p.parse_args()
    uvicorn.run(
        build(a.mode),
        host="127.0.0.1",
        port=a.port,
        log_level="warning",
        access_log=False,
        http=a.http,
        loop=a.loop,
    )


if __name__ == "__main__":
    main()
