"""Ray Serve peer: one replica, ``@serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)``.

API: ``POST /predict`` with ``{"input": [256 floats]}`` -> ``{"output": [10 floats]}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import ray
from ray import serve
from starlette.requests import Request

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def build(max_batch: int, window_s: float):
    @serve.deployment(num_replicas=1, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
    class MLP:
        def __init__(self) -> None:
            sys.path.insert(0, str(HERE))
            from model import NumpyMLP

            self.mlp = NumpyMLP()

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=window_s)
        async def predict(self, rows: list[np.ndarray]) -> list[list[float]]:
            return self.mlp(np.stack(rows)).tolist()

        async def __call__(self, request: Request) -> dict:
            body = await request.json()
            return {"output": await self.predict(np.asarray(body["input"], dtype=np.float32))}

    return MLP.bind()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--window-ms", type=float, default=5.0)
    a = p.parse_args()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    serve.run(build(a.max_batch, a.window_ms / 1000.0), route_prefix="/predict")
    print("ray serve ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
