"""BentoML peer: a batchable API, max batch 32, one worker.

BentoML has no batch-window setting, only a latency budget (``max_latency_ms``, here 60 s).

    bentoml serve app_bentoml:MLPService --port 8100   (run from this folder)

API: ``POST /predict`` with ``{"input": [[256 floats]]}`` -> ``[[10 floats]]``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import bentoml
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import NumpyMLP

MAX_BATCH = int(os.environ.get("BENCH_MAX_BATCH", "32"))
MAX_LATENCY_MS = int(os.environ.get("BENCH_MAX_LATENCY_MS", "60000"))


@bentoml.service(workers=1, traffic={"timeout": 60, "max_concurrency": 1024})
class MLPService:
    def __init__(self) -> None:
        self.mlp = NumpyMLP()

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, input: np.ndarray) -> np.ndarray:
        return self.mlp(input.astype(np.float32, copy=False))
