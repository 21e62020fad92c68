"""phi-optimized's decision time with about 1000 requests queued, quickly.

Two measurements, both on the simulator (the native scheduler's own code on a virtual clock,
timed on the wall clock per decision): the probe of ``bench_simulated`` (1000 requests queued at
time 0, then arrivals at the rate full batches serve) and the 4× Poisson unit-cost run, whose
queue holds about 1000 requests while phi sheds and rejects. Prints one line per repeat and the
medians. To compare two builds, run it from each alternately (``--repeats 1`` in a loop) and
take the median of the paired ratios: this machine's speed moves by a third between minutes.

    python benchmarks/scheduling/bench_decision.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduling import bench_simulated, latency_tables, metrics, workloads


def overload_run(core: object, table: latency_tables.LatencyTable, load: float) -> float:
    """Median decision time (µs) at 900-1100 queued in a Poisson unit-cost run at ``load``."""
    cap = 32 / table.median(32)
    rate = load * cap / workloads.mean_cost("unit")
    w = workloads.generate("poisson", rate, 30.0, [0, 0, 0, round(load * 1000)], "unit")
    config = bench_simulated.policy_config(bench_simulated.PHI, 32)
    result = core.simulate(config, w, table.cost, table.seconds, 0)  # type: ignore[attr-defined]
    return metrics.decision_times(result).median_at_1000_us


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--table", type=Path, default=latency_tables.MINILM_TABLE)
    args = p.parse_args(argv)
    from phi_engine._native import require_core

    core = require_core()
    table = latency_tables.load_table(args.table)
    probes, overloads = [], []
    for seed in range(args.repeats):
        probe = bench_simulated.decision_probe(core, table, 32, 20.0, seed).median_at_1000_us
        over = overload_run(core, table, 4.0)
        probes.append(probe)
        overloads.append(over)
        print(f"repeat {seed}: probe {probe:.2f} µs, 4× run {over:.2f} µs", flush=True)
    print(
        f"median: probe {statistics.median(probes):.2f} µs, "
        f"4× run {statistics.median(overloads):.2f} µs (target ≤ 20 µs)"
    )


if __name__ == "__main__":
    main()
