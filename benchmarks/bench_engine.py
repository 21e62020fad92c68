"""``phi_engine.Engine`` against its targets (issue 5): call overhead, registration, restart.

Run:  python benchmarks/bench_engine.py [--quick] [--rounds 7] [--calls 2000] [--homes 5]
          [--restarts 5] [--no-minilm-restart] [--explain]

1. **Call overhead** (target: ``Engine.infer`` ≤ 20 µs above the model's own execution, batch 1,
   median). A tiny MLP (``tests/phi_test_models/tiny.py``, width 16, 2 layers) and a medium one
   (width 256, 4 layers by default) are registered and deployed with
   ``resource_allocation={"cpu": 1, "nodes": 1}`` (one replica, one thread). Each round times a
   block of ``--calls`` calls of each of these, in an order that rotates from round to round (one
   untimed call first), and the table gives the median over rounds of the per-call mean:

   - ``engine.infer(dep, {"x": x})`` (x float32 [1, 4]): the in-process path (runs in the caller's
     thread when the deployment is idle);
   - ``engine.submit(dep, {"x": x}).result()``: the queued path through the worker threads;
   - baseline: ``phi_engine.compile(path).run({"x": x}, threads)`` with the deployment's
     ``threads_per_replica`` (the model alone, input checks included);
   - for context, the same with ``check=False`` (the model alone, as the engine calls it after
     checking the request itself).

   ``--explain`` adds a split of ``infer`` into layers (engine wrapper, deployment and scheduler,
   input parsing, runner, model), each timed on its own the same way.
2. **Registration** (target: MiniLM-L6 from a local file ≤ 3 s). MiniLM is exported to ONNX once
   (``tests/phi_test_models/minilm.py``, cached under ``build/test-models``), outside the timing.
   Each round registers it into a fresh home and, as the baseline, compiles the same file with
   ``phi_engine.compile``. The split of ``register`` (fetch + hash, parse, compile, store, commit)
   comes from timers wrapped around the registry's steps in this process (no change to src).
3. **Restart** (target: an engine with 10 deployments back ≤ 2 s). 10 MLPs (distinct seeds) are
   registered and deployed (local mode, default resources), the engine is closed, then each round
   times ``Engine(home)`` until the constructor returns (restore is synchronous) and until all 10
   deployments have answered one request each. Baseline: ``Engine`` on a home with no
   deployments, in the same round. The same with 10 deployments of MiniLM unless
   ``--no-minilm-restart``.

Machines are noisy: quote medians and ratios, and check the load before a run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "tests")]

import phi_engine  # noqa: E402
from _harness import machine, markdown_table  # noqa: E402
from phi_test_models import tiny  # noqa: E402

HEADER = ("target", "ours (median)", "baseline (median, same run)", "ours − baseline", "ratio")


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def us(s: float) -> str:
    return f"{s * 1e6:.1f} µs"


def secs(s: float) -> str:
    return f"{s:.2f} s" if s >= 0.1 else f"{s * 1e3:.1f} ms"


def spread(xs: list[float], fmt: Callable[[float], str]) -> str:
    """The median, and the range of the rounds in its unit: ``31.2 µs (28.0–40.1)``."""
    m = med(xs)
    text = fmt(m)
    unit = text.split()[-1]
    scale = {"µs": 1e6, "ms": 1e3, "s": 1.0}[unit]
    digits = 1 if unit != "s" else 2
    return f"{text} ({min(xs) * scale:.{digits}f}–{max(xs) * scale:.{digits}f})"


def load_average() -> str:
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


# ---- 1. call overhead ------------------------------------------------------------------------


def block_rounds(
    fns: dict[str, Callable[[], object]], rounds: int, calls: int
) -> dict[str, list[float]]:
    """Seconds per call of each function: one block of ``calls`` calls per round, in an order
    that rotates from round to round (drift and order effects hit every function alike)."""
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            fn = fns[name]
            fn()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            out[name].append((time.perf_counter() - t0) / calls)
    return out


def overhead(
    work: pathlib.Path, label: str, width: int, layers: int, args: argparse.Namespace
) -> list[list[str]]:
    """Rows of target 1 for one MLP."""
    path = tiny.mlp(work / f"{label}.onnx", seed=1, width=width, layers=layers)
    home = work / f"home-{label}"
    rows: list[list[str]] = []
    with phi_engine.Engine(home) as eng:
        model = eng.register(label, "onnx", "1.0.0", str(path))
        dep = eng.deploy(model.model_id, resource_allocation={"cpu": 1, "nodes": 1})
        threads = dep.spec.placement.threads_per_replica
        dep_id = dep.deployment_id
        compiled = phi_engine.compile(str(path))
        x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
        feeds = {"x": x}
        want = compiled.run(feeds, threads)["y"]
        got = eng.infer(dep_id, feeds).outputs["y"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # the same model, answered
        fns: dict[str, Callable[[], object]] = {
            "infer": lambda: eng.infer(dep_id, feeds),
            "submit": lambda: eng.submit(dep_id, feeds).result(),
            "run": lambda: compiled.run(feeds, threads),
            "run_nocheck": lambda: compiled.run(feeds, threads, check=False),
        }
        if args.explain:
            fns.update(explain_fns(eng, dep_id, feeds))
        t = block_rounds(fns, args.rounds, args.calls)
    what = f"{label} MLP (width {width}, {layers} layers), batch 1, {threads} thread"
    base = med(t["run"])
    for name, desc in (
        ("infer", "`engine.infer`"),
        ("submit", "`engine.submit(...).result()`"),
    ):
        ours = med(t[name])
        paired = med([a - b for a, b in zip(t[name], t["run"], strict=True)])
        rows.append(
            [
                f"{desc}, {what}",
                spread(t[name], us),
                f"`compiled.run`: {spread(t['run'], us)}",
                f"{us(ours - base)} (per-round pairs: {us(paired)})",
                f"{ours / base:.2f}",
            ]
        )
    nocheck = med(t["run_nocheck"])
    rows.append(
        [
            f"`engine.infer` vs the model without input checks, {what}",
            us(med(t["infer"])),
            f"`compiled.run(check=False)`: {spread(t['run_nocheck'], us)}",
            us(med(t["infer"]) - nocheck),
            f"{med(t['infer']) / nocheck:.2f}",
        ]
    )
    if args.explain:
        print(f"\n`engine.infer` split, {what} (median per call, each part timed alone):\n")
        print(explain_table(t))
    return rows


def explain_fns(eng: Any, dep_id: str, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    """Each layer of ``Engine.infer`` called on its own (private APIs: for this benchmark only)."""
    from phi_engine.serving._inputs import parse_inputs

    dep = eng.deployment(dep_id)
    slot = dep.primary
    runner = slot.runner
    model = runner.model
    arrays = parse_inputs(feeds, slot.inputs, dep.spec.limits)
    program = model.program({k: v.shape for k, v in arrays.items()})
    sched = slot.scheduler()

    def admit_release() -> None:
        admitted = slot.submit(
            arrays, 1, priority="normal", deadline_ms=None, policy=None, tenant="default", here=True
        )
        sched._core.release(admitted.token, True)

    return {
        "x_deployment_infer": lambda: dep.infer(feeds),
        "x_parse_inputs": lambda: parse_inputs(feeds, slot.inputs, dep.spec.limits),
        "x_admit_release": admit_release,
        "x_slot_run_batch": lambda: slot._run_batch([arrays]),
        "x_runner": lambda: runner([arrays]),
        "x_program_run": lambda: program.run(arrays, runner.threads),
    }


def explain_table(t: dict[str, list[float]]) -> str:
    m = {k: med(v) for k, v in t.items()}
    rows = [
        ["`Engine.infer`", us(m["infer"]), "—"],
        [
            "`Deployment.infer` (no engine wrapper)",
            us(m["x_deployment_infer"]),
            f"engine wrapper ≈ {us(m['infer'] - m['x_deployment_infer'])}",
        ],
        ["`parse_inputs` (request checks)", us(m["x_parse_inputs"]), "part of Deployment.infer"],
        [
            "scheduler admit (`submit_inline`) + `release`",
            us(m["x_admit_release"]),
            "part of Deployment.infer",
        ],
        [
            "`Slot._run_batch` (runner + busy meter)",
            us(m["x_slot_run_batch"]),
            f"meter ≈ {us(m['x_slot_run_batch'] - m['x_runner'])}",
        ],
        [
            "`ModelRunner.__call__`",
            us(m["x_runner"]),
            f"runner ≈ {us(m['x_runner'] - m['run_nocheck'])} over run(check=False)",
        ],
        [
            "`CompiledModel.run(check=False)`",
            us(m["run_nocheck"]),
            f"program cache lookup ≈ {us(m['run_nocheck'] - m['x_program_run'])}",
        ],
        ["`Program.run` (the kernels and their wrapper)", us(m["x_program_run"]), "—"],
        [
            "rest of `Deployment.infer` (ids, routing lock, run_admitted, result)",
            us(
                m["x_deployment_infer"]
                - m["x_parse_inputs"]
                - m["x_admit_release"]
                - m["x_slot_run_batch"]
            ),
            "by difference",
        ],
    ]
    return markdown_table(("layer", "median per call", "note"), rows)


# ---- 2. registration -------------------------------------------------------------------------


@contextlib.contextmanager
def timed_steps(acc: dict[str, float], patches: list[tuple[Any, str, str]]) -> Iterator[None]:
    """Wrap ``owner.name`` with timers adding into ``acc[label]`` (restored on exit).

    Thread-safe: restore builds deployments on several threads at once, so the sums are thread
    time, which can exceed the wall time.
    """
    lock = threading.Lock()
    saved = []
    for owner, name, label in patches:
        original = getattr(owner, name)
        saved.append((owner, name, original))

        def wrapper(*a: Any, _f: Any = original, _l: str = label, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _f(*a, **kw)
            finally:
                elapsed = time.perf_counter() - t0
                with lock:
                    acc[_l] += elapsed

        setattr(owner, name, functools.wraps(original)(wrapper))
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def register_steps() -> list[tuple[Any, str, str]]:
    """The steps of ``Registry.register``, in order."""
    from phi_engine.registry import _registry, _store

    return [
        (_registry, "fetch", "fetch + hash (copy into staging)"),
        (_registry, "_load", "parse ONNX"),
        (_registry, "_signature", "compile (support check, signature)"),
        (_store.ArtifactStore, "stage_file", "store (re-read, hash, stage)"),
        (_registry.Registry, "_commit", "commit (publish + SQLite)"),
    ]


def restore_steps() -> list[tuple[Any, str, str]]:
    """The steps of building a deployment's slot (``Engine._build_slot``)."""
    from phi_engine.registry import _registry
    from phi_engine.serving import _slot

    return [
        (_registry.Registry, "verified_path", "verify (re-hash the artifact)"),
        (_slot.Slot, "_build_runner", "compile (load + compile)"),
        (_slot.Slot, "warm_up", "warm-up (batches 1..max_batch, first-shape programs)"),
    ]


def registration(work: pathlib.Path, args: argparse.Namespace) -> tuple[list[list[str]], str]:
    """Rows of target 2, and a table of the split."""
    from phi_test_models import minilm

    t0 = time.perf_counter()
    onnx_path = minilm.export()  # cached after the first export; outside the timing
    print(
        f"MiniLM ONNX: {onnx_path} ({onnx_path.stat().st_size / 2**20:.1f} MiB), "
        f"ready in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    reg: list[float] = []
    comp: list[float] = []
    steps: dict[str, list[float]] = defaultdict(list)
    for r in range(args.homes):
        home = pathlib.Path(tempfile.mkdtemp(prefix="reg-home-", dir=work))
        eng = phi_engine.Engine(home)
        try:

            def do_register(eng: Any = eng) -> None:
                acc: dict[str, float] = defaultdict(float)
                with timed_steps(acc, register_steps()):
                    t = time.perf_counter()
                    eng.register("minilm", "onnx", "1.0.0", str(onnx_path))
                    reg.append(time.perf_counter() - t)
                for k, v in acc.items():
                    steps[k].append(v)
                steps["rest (checks, events, temp dirs)"].append(reg[-1] - sum(acc.values()))

            def do_compile() -> None:
                t = time.perf_counter()
                phi_engine.compile(str(onnx_path))
                comp.append(time.perf_counter() - t)

            for fn in (do_register, do_compile) if r % 2 == 0 else (do_compile, do_register):
                fn()
        finally:
            eng.close()
            shutil.rmtree(home, ignore_errors=True)
        print(
            f"  registration round {r + 1}: register {reg[-1]:.2f} s, compile {comp[-1]:.2f} s",
            flush=True,
        )
    rows = [
        [
            f"`engine.register` MiniLM-L6 from a local file ({onnx_path.stat().st_size >> 20} MiB),"
            f" fresh home, median of {args.homes}",
            spread(reg, secs),
            f"`phi_engine.compile(path)`: {spread(comp, secs)}",
            secs(med(reg) - med(comp)),
            f"{med(reg) / med(comp):.2f}",
        ]
    ]
    split = markdown_table(
        ("step of `register`", "median", "share of the median register"),
        [[k, secs(med(v)), f"{100 * med(v) / med(reg):.0f} %"] for k, v in steps.items()],
    )
    return rows, split


# ---- 3. restart ------------------------------------------------------------------------------


Home = tuple[pathlib.Path, list[str], dict[str, np.ndarray], list[float], dict[str, float]]


def build_home(home: pathlib.Path, sources: list[pathlib.Path], deploys: int) -> Home:
    """Register ``sources``, deploy ``deploys`` deployments round-robin over them, close.

    Returns the home, the deployment ids, a one-row request, the seconds of each deploy and the
    seconds of each step of those deploys, summed.
    """
    with phi_engine.Engine(home) as eng:
        models = [
            eng.register(f"m{i}", "onnx", "1.0.0", str(p)).model_id for i, p in enumerate(sources)
        ]
        ids, took = [], []
        acc: dict[str, float] = defaultdict(float)
        with timed_steps(acc, restore_steps()):
            for i in range(deploys):
                t0 = time.perf_counter()
                ids.append(eng.deploy(models[i % len(models)]).deployment_id)
                took.append(time.perf_counter() - t0)
        sample = eng.deployment(ids[0]).primary.sample_inputs(1)
    return home, ids, sample, took, acc


def restart_rounds(
    homes: dict[str, Home], empty: pathlib.Path, rounds: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, list[float]]]]:
    """Per home: seconds until ``Engine(home)`` returns and until every deployment answered;
    and the thread time of each step of rebuilding the deployments, per round."""
    out: dict[str, dict[str, list[float]]] = {
        k: {"ctor": [], "answered": []} for k in [*homes, "empty"]
    }
    steps: dict[str, dict[str, list[float]]] = {k: defaultdict(list) for k in homes}
    for r in range(rounds):
        for label, (home, ids, sample, _, _) in homes.items():
            acc: dict[str, float] = defaultdict(float)
            with timed_steps(acc, restore_steps()):
                t0 = time.perf_counter()
                eng = phi_engine.Engine(home)
                t1 = time.perf_counter()
                try:
                    for dep_id in ids:
                        eng.infer(dep_id, sample)
                    t2 = time.perf_counter()
                finally:
                    eng.close()
            out[label]["ctor"].append(t1 - t0)
            out[label]["answered"].append(t2 - t0)
            for k, v in acc.items():
                steps[label][k].append(v)
            print(
                f"  restart round {r + 1}, {label}: constructor {t1 - t0:.2f} s, "
                f"all answered {t2 - t0:.2f} s",
                flush=True,
            )
        t0 = time.perf_counter()
        eng = phi_engine.Engine(empty)
        t1 = time.perf_counter()
        eng.close()
        out["empty"]["ctor"].append(t1 - t0)
        out["empty"]["answered"].append(t1 - t0)
    return out, steps


def restart(work: pathlib.Path, args: argparse.Namespace) -> tuple[list[list[str]], str]:
    """Rows of target 3, and a table of where the restore time goes."""
    srcs = [tiny.mlp(work / f"restart-{i}.onnx", seed=100 + i) for i in range(10)]
    homes = {"10 MLP deployments": build_home(work / "restart-mlp", srcs, 10)}
    if args.minilm_restart:
        from phi_test_models import minilm

        t0 = time.perf_counter()
        homes["10 MiniLM-L6 deployments"] = build_home(
            work / "restart-minilm", [minilm.export()], 10
        )
        print(f"MiniLM restart home built in {time.perf_counter() - t0:.1f} s", flush=True)
    empty = work / "restart-empty"
    phi_engine.Engine(empty).close()
    t, steps = restart_rounds(homes, empty, args.restarts)
    rows = []
    base = t["empty"]["ctor"]
    split_rows = []
    for label, (_, ids, _, took, deploy_steps) in homes.items():
        for key, desc in (("ctor", "constructor returned"), ("answered", "all answered once")):
            ours = t[label][key]
            rows.append(
                [
                    f"restart `Engine(home)` with {label}: {desc}, median of {args.restarts}",
                    spread(ours, secs),
                    f"`Engine(empty home)`: {spread(base, secs)}",
                    secs(med(ours) - med(base)),
                    f"{med(ours) / med(base):.1f}",
                ]
            )
        wall = med(t[label]["ctor"])
        split_rows.append(
            [
                f"{label}: `deploy` one at a time, before the restarts (median)",
                secs(med(took)),
                f"× {len(ids)} = {secs(med(took) * len(ids))}",
            ]
        )
        for k, v in deploy_steps.items():
            split_rows.append(
                [f"{label}: `deploy` one at a time: {k}", secs(v / len(ids)), secs(v)]
            )
        split_rows.append(
            [f"{label}: restore, wall time of the constructor (median)", "—", secs(wall)]
        )
        for k, v in steps[label].items():
            split_rows.append(
                [
                    f"{label}: restore: {k}",
                    secs(med(v) / len(ids)),
                    f"{secs(med(v))} thread time ({med(v) / wall:.1f}× the wall time)",
                ]
            )
    split = markdown_table(
        (
            "step (timers around `Engine._build_slot`'s steps)",
            "per deployment",
            "all deployments",
        ),
        split_rows,
    )
    return rows, split


# ---- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of target 1 (7)")
    parser.add_argument("--calls", type=int, default=None, help="calls per block (2000)")
    parser.add_argument("--homes", type=int, default=None, help="fresh homes, target 2 (5)")
    parser.add_argument("--restarts", type=int, default=None, help="restarts, target 3 (5)")
    parser.add_argument("--medium", type=int, nargs=2, default=(256, 4), metavar=("W", "L"))
    parser.add_argument("--no-minilm-restart", dest="minilm_restart", action="store_false")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=("overhead", "register", "restart"),
        default=("overhead", "register", "restart"),
    )
    parser.add_argument("--explain", action="store_true", help="split engine.infer into layers")
    args = parser.parse_args()
    quick = {"rounds": 3, "calls": 300, "homes": 2, "restarts": 2}
    full = {"rounds": 7, "calls": 2000, "homes": 5, "restarts": 5}
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)

    date = datetime.date.today().isoformat()
    print(f"{date}: python benchmarks/bench_engine.py {' '.join(sys.argv[1:])}")
    print(f"machine: {machine()}; load average at start {load_average()}", flush=True)
    rows: list[list[str]] = []
    extra: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        work = pathlib.Path(tmp)
        if "overhead" in args.only:
            rows += overhead(work, "tiny", 16, 2, args)
            rows += overhead(work, "medium", *args.medium, args)
            print(markdown_table(HEADER, rows), flush=True)
        if "register" in args.only:
            reg_rows, split = registration(work, args)
            rows += reg_rows
            extra.append("Split of `register` (timers around the registry's steps):\n\n" + split)
        if "restart" in args.only:
            restart_rows, split = restart(work, args)
            rows += restart_rows
            extra.append(
                "Where restore time goes (thread time summed over the restore pool):\n\n" + split
            )
    print(f"\nload average at end {load_average()}\n")
    print(markdown_table(HEADER, rows))
    for e in extra:
        print("\n" + e)


if __name__ == "__main__":
    main()
