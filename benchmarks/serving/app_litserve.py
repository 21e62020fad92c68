"""LitServe peer: dynamic batching, max batch 32, 5 ms window, one CPU worker.

API: ``POST /predict`` with ``{"input": [256 floats]}`` -> ``{"output": [10 floats]}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import litserve as ls
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import NumpyMLP


class MLPAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.mlp = NumpyMLP()

    def decode_request(self, request: dict) -> np.ndarray:
        return np.asarray(request["input"], dtype=np.float32)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.mlp(x)

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict:
        return {"output": output.tolist()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--window-ms", type=float, default=5.0)
    a = p.parse_args()
    api = MLPAPI(max_batch_size=a.max_batch, batch_timeout=a.window_ms / 1000.0)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=60)
    server.run(
        host="127.0.0.1",
        port=a.port,
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
