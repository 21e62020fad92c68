"""The scheduler on a real model in real time, checked against the simulator on the same requests.

Run:  python benchmarks/scheduling/bench_real.py [--seq 8] [--duration 10]
          [--loads 0.5 0.8 1 1.5 2 4] [--policies phi-optimized fifo] [--threads 2] [--write]

all-MiniLM-L6-v2 is compiled with phi_engine and deployed in process behind
``phi_engine.serving.Scheduler`` (one worker, max batch 32, every kernel on ``--threads``). A
warm-up sweep times batches of 1..32 rows and seeds each scheduler's latency model; a saturation
run through the scheduler (requests queued far beyond a batch) gives the capacity that loads are
multiples of, serving costs included. Then, for each load and policy, an open-loop generator
submits a Poisson workload (workloads.py: classes 5/15/40/40 %, SLOs 50/100/250/1000 ms ±50 %,
four tenants) at its arrival times, whatever the answers, and records how every request ended.

The same workload then runs through the simulator (the same native policy code on a virtual
clock), with batch latencies drawn from those the real run measured. Per class, real and
simulated SLO attainment should agree within ±2 points (issue 4, item 5): the table prints both
and the difference.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests"), str(HERE)]

import metrics  # noqa: E402
import workloads  # noqa: E402

import phi_engine  # noqa: E402
from _harness import machine  # noqa: E402
from phi_engine._native import require_core  # noqa: E402
from phi_engine.errors import OverloadedError  # noqa: E402
from phi_engine.serving import ModelRunner, Scheduler  # noqa: E402

# Outcome codes of csrc/core/scheduler/types.h, as simulate() reports them.
OUTCOME = {"completed": 1, "shed": 2, "queue_full": 3, "deadline_infeasible": 4, "closed": 6}
FAILED = 7
CLASS_LABELS = ("low", "normal", "high", "ultra")
SIZES = (1, 2, 4, 8, 16, 32)


def load_model(seq: int, threads: int) -> tuple[ModelRunner, dict[str, np.ndarray]]:
    """MiniLM compiled with phi_engine, and one request's payload (one row of ``seq`` tokens)."""
    from phi_test_models import minilm

    phi_engine.set_num_threads(threads)
    cm = phi_engine.compile(minilm.export(), max_batch=max(SIZES))
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, size=(1, seq), dtype=np.int64)
    full = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }
    return ModelRunner(cm), {name: full[name] for name in cm.inputs}


def sweep(
    runner: ModelRunner, payload: dict[str, np.ndarray], repeats: int
) -> dict[int, list[float]]:
    """Seconds per batch of each size (after one untimed run)."""
    out: dict[int, list[float]] = {}
    for size in SIZES:
        batch = [payload] * size
        runner(batch)
        out[size] = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            runner(batch)
            out[size].append(time.perf_counter() - t0)
    return out


class Recorder:
    """How each request of one run ended, on the scheduler's clock."""

    def __init__(self, n: int) -> None:
        self.outcome = np.zeros(n, np.uint8)
        self.finish = np.full(n, np.nan)
        self.start = np.full(n, np.nan)
        self.batches: dict[int, list[float]] = defaultdict(list)  # batch size -> exec seconds
        self.cycles: list[tuple[int, float]] = []  # (batch size, worker seconds) per batch
        self.lock = threading.Lock()
        self.done = threading.Semaphore(0)

    def callback(self, i: int, now: Any) -> Any:
        def record(future: Any) -> None:
            t = now()
            exc = future.exception()
            with self.lock:
                self.finish[i] = t
                if exc is None:
                    r = future.result()
                    self.outcome[i] = OUTCOME["completed"]
                    self.start[i] = t - r.execution_time_ms / 1000
                    self.batches[r.batch_size].append(r.execution_time_ms / 1000)
                elif isinstance(exc, OverloadedError):
                    self.outcome[i] = OUTCOME.get(exc.reason, FAILED)
                else:
                    self.outcome[i] = FAILED
            self.done.release()

        return record


def run_real(
    runner: ModelRunner,
    payload: dict[str, np.ndarray],
    wl: workloads.Workload,
    policy: str,
    seed_table: dict[int, list[float]],
) -> tuple[dict[str, Any], Recorder]:
    """Submit the workload open loop at its arrival times; returns (result dict, recorder)."""
    n = len(wl["arrival"])
    rec = Recorder(n)
    now = require_core().Scheduler.now
    sched = Scheduler(runner, policy=policy, max_batch=max(SIZES), workers=1)
    sched.seed_latencies(seed_table)
    t0 = now() + 0.05
    arrival_at = np.empty(n)
    for i in range(n):
        # Sleep, never spin: a spinning generator would take one of the cores the model runs on.
        # Each request's deadline runs from its real submission, recorded here.
        wait = t0 + wl["arrival"][i] - now()
        if wait > 0:
            time.sleep(wait)
        arrival_at[i] = now()
        future = sched.submit(
            payload,
            priority=int(wl["cls"][i]),
            deadline_ms=float(wl["deadline"][i] - wl["arrival"][i]) * 1000,
            tenant=f"t{int(wl['tenant'][i])}",
        )
        future.add_done_callback(rec.callback(i, now))
    for _ in range(n):
        rec.done.acquire()
    stats = sched.stats()
    rec.cycles = sched.recent_batches()
    sched.close()
    # The scheduler's deadlines ran from each request's real submission, a little after its
    # nominal arrival: finish is shifted by that slip, so finish <= deadline means it met them.
    result = {
        "outcome": rec.outcome,
        "start": rec.start - arrival_at + wl["arrival"],
        "finish": rec.finish - arrival_at + wl["arrival"],
        "decision_queue": np.zeros(0),
        "decision_ns": np.zeros(0),
        "submit_ns": float(stats["submit_ns"]),
        "stats": stats,
    }
    return result, rec


def per_batch(rec: Recorder) -> dict[int, list[float]]:
    """The worker's whole time on each batch (futures included), by batch size."""
    out: dict[int, list[float]] = defaultdict(list)
    for size, seconds in rec.cycles:
        out[size].append(seconds)
    return out


def saturated_capacity(
    runner: ModelRunner, payload: dict[str, np.ndarray], seconds: float
) -> float:
    """Requests per second the deployment serves when every batch is full.

    Measured through the scheduler itself, with requests queued far beyond what a batch holds,
    so that it counts what serving costs besides the model (stacking inputs, futures, threads).
    """
    sched = Scheduler(runner, max_batch=max(SIZES), workers=1)
    batch = max(SIZES)
    futures = [sched.submit(payload, priority="low") for _ in range(batch * 4)]
    for f in futures:
        f.result()  # warm: plans built, caches hot
    t0 = time.perf_counter()
    served = 0
    while time.perf_counter() - t0 < seconds:
        futures = [sched.submit(payload, priority="low") for _ in range(batch * 8)]
        for f in futures:
            f.result()
        served += len(futures)
    rate = served / (time.perf_counter() - t0)
    sched.close()
    return rate


def run(args: argparse.Namespace) -> list[list[str]]:
    core = require_core()
    runner, payload = load_model(args.seq, args.threads)
    seed_table = sweep(runner, payload, args.repeats)
    medians = [float(np.median(seed_table[s])) for s in SIZES]
    cap = saturated_capacity(runner, payload, 3.0)
    print(
        f"MiniLM seq {args.seq}, {args.threads} threads: batch latency medians (ms) "
        + ", ".join(f"{s}: {m * 1e3:.1f}" for s, m in zip(SIZES, medians, strict=True))
        + f"; capacity {cap:.0f} requests/s"
    )
    rows = []
    for load in args.loads:
        wl = workloads.generate("poisson", load * cap, args.duration, [args.seed, int(load * 100)])
        for policy in args.policies:
            real, rec = run_real(runner, payload, wl, policy, seed_table)
            costs, seconds = sim_table_from(rec, seed_table)
            sim = core.simulate(
                {"policy": policy, "max_batch": max(SIZES), "workers": 1, "max_queue": 100000},
                wl,
                costs,
                seconds,
                args.seed,
            )
            rows.append(compare(load, policy, wl, real, sim, args.duration))
            print(" | ".join(rows[-1]), flush=True)
    return rows


def sim_table_from(
    rec: Recorder, seed_table: dict[int, list[float]]
) -> tuple[list[float], list[list[float]]]:
    batches = per_batch(rec)
    sizes = sorted(set(batches) | set(seed_table))
    costs, seconds = [], []
    for s in sizes:
        xs = batches.get(s, [])
        if len(xs) < 5:
            xs = xs + seed_table.get(s, [])
        if xs:
            costs.append(float(s))
            seconds.append(xs)
    return costs, seconds


def compare(
    load: float, policy: str, wl: workloads.Workload, real: dict, sim: dict, duration: float
) -> list[str]:
    r_att = metrics.class_attainment(wl, real)
    s_att = metrics.class_attainment(wl, sim)
    diff = max(abs(a - b) for a, b in zip(r_att, s_att, strict=True)) * 100
    p = metrics.latency_ms(wl, real)
    q = metrics.latency_ms(wl, sim)
    return [
        f"{load:g}",
        policy,
        f"{metrics.goodput(wl, real, duration):.0f}",
        f"{metrics.goodput(wl, sim, duration):.0f}",
        " / ".join(f"{a * 100:.1f}" for a in reversed(r_att)),
        " / ".join(f"{a * 100:.1f}" for a in reversed(s_att)),
        f"{diff:.1f}",
        f"{p[0]:.1f} / {p[1]:.1f}",
        f"{q[0]:.1f} / {q[1]:.1f}",
        f"{metrics.wasted_percent(wl, real):.2f}",
        f"{real['submit_ns'] / len(wl['arrival']) / 1e3:.1f}",
    ]


HEADER = [
    "load",
    "policy",
    "goodput real",
    "goodput sim",
    "attainment % real (ultra / high / normal / low)",
    "attainment % sim",
    "max |diff| points",
    "p50 / p99 ms real",
    "p50 / p99 ms sim",
    "wasted % real",
    "submit µs/req",
]


def table(rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.8, 1, 1.5, 2, 4])
    parser.add_argument("--policies", nargs="+", default=["phi-optimized", "fifo"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    rows = run(args)
    text = table(rows)
    print(text)
    if args.write:
        command = "python benchmarks/scheduling/bench_real.py " + " ".join(sys.argv[1:])
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(
                f"\n### Scheduler, real runs against the simulator — {datetime.date.today()} — "
                f"{machine()}\n\n`{command}`\n\n{text}\n"
            )


if __name__ == "__main__":
    main()
