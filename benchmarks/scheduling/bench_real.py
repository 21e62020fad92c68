"""The scheduler on a real model in real time, checked against the simulator on the same requests.

Run:  python benchmarks/scheduling/bench_real.py [--seq 8] [--duration 20]
          [--loads 0.5 0.8 1 1.5 2 4] [--policies phi-optimized fifo] [--threads 2]
          [--window 0.5] [--sim-seeds 5] [--rounds 1] [--capacity-per-round] [--write]

all-MiniLM-L6-v2 is compiled with phi_engine and deployed in process behind
``phi_engine.serving.Scheduler`` (one worker, max batch 32, every kernel on ``--threads``). A
warm-up sweep times batches of 1..32 rows and seeds each scheduler's latency model; a saturation
run through the scheduler (requests queued far beyond a batch) gives the capacity that loads are
multiples of, serving costs included. Then, for each load and policy, an open-loop generator
submits a Poisson workload (workloads.py: classes 5/15/40/40 %, SLOs 50/100/250/1000 ms ±50 %,
four tenants) at its arrival times, whatever the answers, and records how every request ended
and, for every batch, its requests and when the model started and finished it.

The same requests then run through the simulator (the same native policy code on a virtual
clock) on the real run's machine as replay.py reconstructs it from those records: the measured
submission times, each batch's measured occupancy of the worker (the model and the serving
overhead around it), and the machine's speed over the run, as the simulator's clock. The
simulated attainment is the median over ``--sim-seeds`` seeds. Per class, real and simulated SLO
attainment should agree within ±2 points (issue 4, item 5): the first table prints both and the
difference. The second gives what the replay measured, the spread of the simulated attainment
over the seeds, and the difference the plain simulator gives (the baseline: nominal arrival
times, latencies drawn at random from the run's batches).

With ``--rounds R`` each load runs R rounds on fresh requests, every policy on the same requests
within a round, in alternating order (A B, B A, ...), so that the machine's slow stretches fall
on each policy alike; a third table pools the rounds per policy (percentiles of all completed
requests, and each round's p99 over the baseline's, the last policy named, on the same requests).
On a shared 2-vCPU machine one 20-second p99 comes down to a handful of stalls, and this is the
comparison that can tell policies apart there. ``--capacity-per-round`` measures the capacity
again before each round (1.5 s at saturation): the machine's speed drifts by 10-30 % between
minutes, and a load meant as 0.8x of the capacity measured at the start can be 1x later.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import pathlib
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "tests"), str(HERE)]

import metrics  # noqa: E402
import replay  # noqa: E402
import workloads  # noqa: E402

import phi_engine  # noqa: E402
from _harness import machine  # noqa: E402
from phi_engine._native import require_core  # noqa: E402
from phi_engine.errors import OverloadedError  # noqa: E402
from phi_engine.serving import ModelRunner, Scheduler  # noqa: E402

# Outcome codes of csrc/core/scheduler/types.h, as simulate() reports them.
OUTCOME = {"completed": 1, "shed": 2, "queue_full": 3, "deadline_infeasible": 4, "closed": 6}
FAILED = 7
CLASS_ORDER = ("ultra", "high", "normal", "low")  # the tables' order
SIZES = (1, 2, 4, 8, 16, 32)
CAPACITY_PER_ROUND_S = 1.5  # the saturation run before each round (--capacity-per-round)


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
        self.lock = threading.Lock()
        self.done = threading.Semaphore(0)

    def callback(self, i: int, now: Any) -> Any:
        def record(future: Any) -> None:
            t = now()
            exc = future.exception()
            with self.lock:
                self.finish[i] = t
                if exc is None:
                    self.outcome[i] = OUTCOME["completed"]
                elif isinstance(exc, OverloadedError):
                    self.outcome[i] = OUTCOME.get(exc.reason, FAILED)
                else:
                    self.outcome[i] = FAILED
            self.done.release()

        return record


class TracedRunner:
    """The model runner, logging every batch: its requests, when the model started and ended.

    Payloads are ``(request index, model inputs)``; the model gets the inputs.
    """

    def __init__(self, runner: ModelRunner, now: Any) -> None:
        self.runner = runner
        self.now = now
        self.log: list[tuple[list[int], float, float]] = []

    def __call__(self, items: list[tuple[int, dict[str, np.ndarray]]]) -> list[Any]:
        t0 = self.now()
        out = self.runner([payload for _, payload in items])
        self.log.append(([i for i, _ in items], t0, self.now()))
        return out


@dataclass
class RealRun:
    """One real run, in seconds from its start.

    Attributes:
        workload: The requests as submitted: ``arrival`` is each one's submission time and
            ``deadline`` that plus its relative deadline (which the scheduler was given).
        slip: Submission time less nominal arrival time, per request.
        result: ``outcome`` and ``finish`` per request, and the scheduler's ``stats``.
        batches: What the worker ran, on the scheduler's clock.
        t0: The run's start on the scheduler's clock.
        cycles: (requests, seconds) per batch: the worker's time on it, futures included.
    """

    workload: dict[str, np.ndarray]
    slip: np.ndarray
    result: dict[str, Any]
    batches: replay.Batches
    t0: float
    cycles: list[tuple[int, float]]


def run_real(
    runner: ModelRunner,
    payload: dict[str, np.ndarray],
    wl: workloads.Workload,
    policy: str,
    seed_table: dict[int, list[float]],
) -> RealRun:
    """Submit the workload open loop at its arrival times and record how it went."""
    n = len(wl["arrival"])
    rec = Recorder(n)
    now = require_core().Scheduler.now
    traced = TracedRunner(runner, now)
    sched = Scheduler(traced, policy=policy, max_batch=max(SIZES), workers=1)
    sched.seed_latencies(seed_table)
    relative = wl["deadline"] - wl["arrival"]
    # The heap built so far (model, engine, workload) is frozen out of the collector's reach, so
    # a full collection during the run scans only what the run allocates (a collection over the
    # whole heap stalled the generator for tens of milliseconds, submitting a burst after it).
    gc.collect()
    gc.freeze()
    t0 = now() + 0.05
    submitted = np.empty(n)
    for i in range(n):
        # Sleep, never spin: a spinning generator would take one of the cores the model runs on.
        # Each request's deadline runs from its real submission, recorded here.
        wait = t0 + wl["arrival"][i] - now()
        if wait > 0:
            time.sleep(wait)
        submitted[i] = now()
        future = sched.submit(
            (i, payload),
            priority=int(wl["cls"][i]),
            deadline_ms=float(relative[i]) * 1000,
            tenant=f"t{int(wl['tenant'][i])}",
        )
        future.add_done_callback(rec.callback(i, now))
    for _ in range(n):
        rec.done.acquire()
    gc.unfreeze()
    stats = sched.stats()
    cycles = sched.recent_batches()
    sched.close()
    as_submitted = dict(wl)
    as_submitted["arrival"] = submitted - t0
    as_submitted["deadline"] = submitted - t0 + relative
    return RealRun(
        workload=as_submitted,
        slip=submitted - t0 - wl["arrival"],
        result={"outcome": rec.outcome, "finish": rec.finish - t0, "stats": stats},
        batches=replay.Batches.from_log(traced.log, submitted),
        t0=t0,
        cycles=cycles,
    )


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


def config(policy: str) -> dict[str, Any]:
    """The real runs' scheduler settings, for the simulator."""
    return {"policy": policy, "max_batch": max(SIZES), "workers": 1, "max_queue": 100000}


def simulate_replay(
    core: Any, policy: str, real: RealRun, rp: replay.Replay, seeds: int
) -> list[dict[str, Any]]:
    """The run's requests through the simulator on the replayed machine, once per seed (times
    in seconds from the run's start)."""
    w = rp.workload(real.workload)
    return [
        rp.result(core.simulate(config(policy), w, rp.cost, rp.seconds, seed))
        for seed in range(seeds)
    ]


def simulate_iid(
    core: Any, policy: str, real: RealRun, seed_table: dict[int, list[float]], seed: int
) -> tuple[workloads.Workload, dict[str, Any]]:
    """The baseline simulator: nominal arrival times, latencies drawn at random from the
    worker's time on the run's batches by size (sizes it ran fewer than MIN_SAMPLES times also
    get the sweep's samples). Returns the workload it ran and its result."""
    by_size: dict[int, list[float]] = defaultdict(list)
    for size, seconds in real.cycles:
        by_size[size].append(seconds)
    costs, table = [], []
    for s in sorted(set(by_size) | set(seed_table)):
        xs = by_size.get(s, [])
        if len(xs) < replay.MIN_SAMPLES:
            xs = xs + seed_table.get(s, [])
        costs.append(float(s))
        table.append(xs)
    nominal = dict(real.workload)
    nominal["arrival"] = real.workload["arrival"] - real.slip
    nominal["deadline"] = real.workload["deadline"] - real.slip
    return nominal, core.simulate(config(policy), nominal, costs, table, seed)


def attainment(wl: workloads.Workload, result: dict[str, Any]) -> np.ndarray:
    """Per class, ultra first, in %."""
    return 100 * np.array(metrics.class_attainment(wl, result))[::-1]


def compare(
    load: float, policy: str, real: RealRun, sims: Sequence[dict[str, Any]], duration: float
) -> list[str]:
    """One row of the results table; the simulated figures are medians over the seeds."""
    wl = real.workload
    r_att = attainment(wl, real.result)
    s_att = np.median([attainment(wl, s) for s in sims], axis=0)
    p = metrics.latency_ms(wl, real.result)
    q = np.median([metrics.latency_ms(wl, s)[:2] for s in sims], axis=0)
    goodput = np.median([metrics.goodput(wl, s, duration) for s in sims])
    return [
        f"{load:g}",
        policy,
        f"{metrics.goodput(wl, real.result, duration):.0f}",
        f"{goodput:.0f}",
        " / ".join(f"{a:.1f}" for a in r_att),
        " / ".join(f"{a:.1f}" for a in s_att),
        f"{np.max(np.abs(r_att - s_att)):.1f}",
        f"{p[0]:.1f} / {p[1]:.1f}",
        f"{q[0]:.1f} / {q[1]:.1f}",
        f"{metrics.wasted_percent(wl, real.result):.2f}",
        f"{real.result['stats']['submit_ns'] / len(wl['arrival']) / 1e3:.1f}",
    ]


def diagnose(
    load: float,
    policy: str,
    real: RealRun,
    rp: replay.Replay,
    sims: Sequence[dict[str, Any]],
    iid: tuple[workloads.Workload, dict[str, Any]],
    capacity: float,
) -> list[str]:
    """One row of the replay table: what was measured, the seeds' spread, the baseline, and
    the capacity the load was a multiple of."""
    r_att = attainment(real.workload, real.result)
    per_seed = np.array([attainment(real.workload, s) for s in sims])
    worst = int(np.argmax(np.abs(np.median(per_seed, axis=0) - r_att)))
    b = real.batches
    speed = rp.clock.speed
    return [
        f"{load:g}",
        policy,
        f"{b.size.size} / {b.size.mean():.1f}" if b.size.size else "0 / —",
        f"{np.percentile(real.slip, 99) * 1e3:.1f} / {real.slip.max() * 1e3:.0f}",
        f"{rp.overhead * 1e3:.2f}",
        f"{np.percentile(speed, 5):.2f}–{np.percentile(speed, 95):.2f}",
        f"{CLASS_ORDER[worst]} {r_att[worst]:.1f}: "
        f"{per_seed[:, worst].min():.1f}–{per_seed[:, worst].max():.1f}",
        f"{np.max(np.abs(attainment(*iid) - r_att)):.1f}",
        f"{capacity:.0f}",
    ]


def run(args: argparse.Namespace) -> tuple[list[list[str]], list[list[str]]]:
    """Every load and policy, real then simulated: (results rows, replay rows)."""
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
    rows, notes, pooled = [], [], []
    for load in args.loads:
        runs: dict[str, list[RealRun]] = defaultdict(list)
        for r in range(args.rounds):
            # Round r runs every policy on the same requests; the order alternates between
            # rounds, so that a slow stretch of the machine falls on each policy alike.
            seed = [args.seed, int(load * 100)] + ([r] if args.rounds > 1 else [])
            round_cap = cap
            if args.capacity_per_round:
                round_cap = saturated_capacity(runner, payload, CAPACITY_PER_ROUND_S)
                print(f"load {load:g} round {r}: capacity {round_cap:.0f} requests/s", flush=True)
            wl = workloads.generate("poisson", load * round_cap, args.duration, seed)
            order = args.policies if r % 2 == 0 else args.policies[::-1]
            for policy in order:
                real = run_real(runner, payload, wl, policy, seed_table)
                runs[policy].append(real)
                rp = replay.Replay.from_batches(real.batches, real.t0, args.window, seed_table)
                sims = simulate_replay(core, policy, real, rp, args.sim_seeds)
                iid = simulate_iid(core, policy, real, seed_table, args.seed)
                rows.append(compare(load, policy, real, sims, args.duration))
                notes.append(diagnose(load, policy, real, rp, sims, iid, round_cap))
                print(" | ".join(rows[-1]) + " || " + " | ".join(notes[-1][2:]), flush=True)
        if args.rounds > 1:
            pooled += pool_rounds(load, runs, args.policies[-1])
    return rows, notes, pooled


def pool_rounds(load: float, runs: dict[str, list[RealRun]], baseline: str) -> list[list[str]]:
    """Per policy over all rounds at one load: the percentiles of every round's completed
    requests pooled, and each round's p99 over the baseline's p99 on the same requests."""

    def e2e(real: RealRun) -> np.ndarray:
        done = real.result["outcome"] == OUTCOME["completed"]
        return (real.result["finish"][done] - real.workload["arrival"][done]) * 1e3

    base_p99 = [float(np.percentile(e2e(r), 99)) for r in runs[baseline]]
    base_pooled = float(np.percentile(np.concatenate([e2e(r) for r in runs[baseline]]), 99))
    out = []
    for policy, reals in runs.items():
        lat = np.concatenate([e2e(r) for r in reals])
        p50, p99 = np.percentile(lat, [50, 99])
        ratios = np.array([np.percentile(e2e(r), 99) for r in reals]) / base_p99
        att = np.median([attainment(r.workload, r.result) for r in reals], axis=0)
        out.append(
            [
                f"{load:g}",
                policy,
                str(len(reals)),
                f"{p50:.1f} / {p99:.1f}",
                f"{p99 / base_pooled:.2f}",
                f"{np.median(ratios):.2f} ({ratios.min():.2f}–{ratios.max():.2f})",
                f"{int(np.sum(ratios <= 1.05))} of {len(ratios)}",
                " / ".join(f"{a:.1f}" for a in att),
            ]
        )
    return out


HEADER = [
    "load",
    "policy",
    "goodput real",
    "goodput sim",
    "attainment % real (ultra / high / normal / low)",
    "attainment % sim",
    "max \\|diff\\| points",
    "p50 / p99 ms real",
    "p50 / p99 ms sim",
    "wasted % real",
    "submit µs/req",
]
REPLAY_HEADER = [
    "load",
    "policy",
    "batches / mean size",
    "submission slip p99 / max ms",
    "overhead ms/batch",
    "speed p5–p95",
    "worst class real %: sim range over seeds",
    "max \\|diff\\| plain sim",
    "capacity req/s",
]


POOLED_HEADER = [
    "load",
    "policy",
    "rounds",
    "p50 / p99 ms, pooled",
    "pooled p99 / baseline's",
    "round p99 / baseline's: median (range)",
    "rounds ≤ 1.05",
    "attainment % median (ultra / high / normal / low)",
]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.8, 1, 1.5, 2, 4])
    parser.add_argument("--policies", nargs="+", default=["phi-optimized", "fifo"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--window", type=float, default=replay.WINDOW_S, help="seconds of the speed profile"
    )
    parser.add_argument("--sim-seeds", type=int, default=5)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="rounds per load, each on fresh requests, the policies' order alternating; with more "
        "than one, a last table pools them (the baseline is the last policy named)",
    )
    parser.add_argument(
        "--capacity-per-round",
        action="store_true",
        help="measure the capacity again before each round (a 1.5 s saturation run), so that a "
        "load is a multiple of what the machine serves at that time",
    )
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    rows, notes, pooled = run(args)
    text = table(HEADER, rows) + "\n\n" + table(REPLAY_HEADER, notes)
    if pooled:
        text += "\n\n" + table(POOLED_HEADER, pooled)
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
