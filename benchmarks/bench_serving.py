"""Serving benchmark (issue 6): phi_engine's HTTP server against peer model servers.

The model is an MLP 256 -> 512 -> 512 -> 10 (float32, the same seeded weights everywhere:
``serving/model.py``), one row per request, closed-loop load at each concurrency. Each server
runs alone, pinned to the same CPUs (``--server-cpus``); the load generator
(``serving/loadgen.py``) is a separate process on other CPUs (``--client-cpus``). Every answer
is checked against the numpy reference. Rounds (``--rounds``) interleave the servers; the table
gives medians over rounds, and ratios to the constant-endpoint floor measured in the same run.

    python benchmarks/bench_serving.py                       # setup peers, every server, c=64,1
    python benchmarks/bench_serving.py --skip-setup --only phi-v1,constant --concurrency 64
    python benchmarks/bench_serving.py --skip-setup --profile build/serving-profile

Servers (``--only``):
    constant          FastAPI endpoint returning a constant, uvicorn[standard] (httptools, uvloop)
    constant-phivenv  the same app on phi_engine's venv (its uvicorn: whatever http/loop it has)
    fastapi-numpy     FastAPI computing each request with numpy, no batching
    litserve          LitServe, max batch 32, 5 ms window
    ray-serve         Ray Serve, @serve.batch(32, 5 ms), one replica
    bentoml           BentoML, batchable API, max batch 32
    phi-v1 / phi-v2   phi_engine create_app(engine, auth=True): POST /v1/inference/run, and
                      POST /v2/models/mlp/infer with JSON tensors (phi_engine's venv)
    phi-v1-asgi / phi-v2-asgi  the same under uvicorn's own httptools protocol (the app's ASGI
                      fast path answers, not phi_engine's protocol)
    phi-v1-std / phi-v2-std   the same on phi_engine's venv plus uvloop + httptools
    phi-v1-queued / phi-v2-queued  phi-v1/-v2 with the deployment's inline budget at 0: a lone
                      request is queued for the worker thread instead of run on the event
                      loop's thread (not in the default set)
    bound-constant    a bare ASGI app answering a constant (uvicorn, httptools, uvloop;
                      phi_engine's venv): the least a Python server does per request
    bound-model       the same, running the compiled model on a fixed row per request: a floor
                      under any server of this model (``serving/app_bound.py``; not checked)

No speed asserts: this prints a markdown table for RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVING = HERE / "serving"
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _harness import machine  # noqa: E402

PHI_PY = os.environ.get("PHI_PYTHON", sys.executable)  # the Python that has phi_engine
ALL = [
    "constant",
    "constant-phivenv",
    "fastapi-numpy",
    "litserve",
    "ray-serve",
    "bentoml",
    "phi-v1",
    "phi-v2",
    "phi-v1-queued",
    "phi-v2-queued",
    "phi-v1-asgi",
    "phi-v2-asgi",
    "phi-v1-std",
    "phi-v2-std",
    "bound-constant",
    "bound-model",
]
DEFAULT = [n for n in ALL if not n.startswith("bound-") and not n.endswith("-queued")]
FLOOR = "constant"


@dataclass
class Spec:
    name: str
    python: str
    argv: list[str]
    kind: str
    path: str = "/predict"
    cwd: Path = SERVING
    env: dict[str, str] = field(default_factory=dict)
    startup_s: float = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spec(name: str, venvs: Path, port: int, info: Path, a: argparse.Namespace) -> Spec:
    v = lambda peer: str(venvs / peer / "bin" / "python")  # noqa: E731
    phi_args = [
        "app_phi.py",
        "--port",
        str(port),
        "--info",
        str(info),
        "--cpu",
        str(a.phi_cpu),
        "--nodes",
        str(a.phi_nodes),
        "--max-batch",
        str(a.phi_max_batch),
    ]
    if name == "constant":
        return Spec(
            name,
            v("fastapi"),
            ["app_fastapi.py", "--mode", "constant", "--port", str(port)],
            "constant",
        )
    if name == "constant-phivenv":
        return Spec(
            name, PHI_PY, ["app_fastapi.py", "--mode", "constant", "--port", str(port)], "constant"
        )
    if name == "fastapi-numpy":
        return Spec(
            name, v("fastapi"), ["app_fastapi.py", "--mode", "numpy", "--port", str(port)], "peer"
        )
    if name == "litserve":
        return Spec(name, v("litserve"), ["app_litserve.py", "--port", str(port)], "peer")
    if name == "ray-serve":
        return Spec(name, v("ray"), ["app_ray.py", "--port", str(port)], "peer", startup_s=180)
    if name == "bentoml":
        return Spec(
            name,
            str(venvs / "bentoml" / "bin" / "bentoml"),
            ["serve", "app_bentoml:MLPService", "--port", str(port), "--host", "127.0.0.1"],
            "bentoml",
            startup_s=120,
        )
    if name in ("phi-v1", "phi-v2"):
        return Spec(name, PHI_PY, phi_args, name, _phi_path(name))
    if name in ("phi-v1-queued", "phi-v2-queued"):
        env = {"PHI_BENCH_INLINE_MS": "0"}
        return Spec(name, PHI_PY, phi_args, name[:6], _phi_path(name), env=env)
    if name in ("phi-v1-asgi", "phi-v2-asgi"):
        return Spec(name, PHI_PY, [*phi_args, "--http", "httptools"], name[:6], _phi_path(name))
    if name in ("phi-v1-std", "phi-v2-std"):
        return Spec(name, v("phi-std"), phi_args, name[:6], _phi_path(name))
    if name in ("bound-constant", "bound-model"):
        model = ["--model"] if name == "bound-model" else []
        return Spec(name, PHI_PY, ["app_bound.py", "--port", str(port), *model], "constant")
    raise SystemExit(f"unknown server {name!r}; choose from {', '.join(ALL)}")


def _phi_path(name: str) -> str:
    return "/v1/inference/run" if name.startswith("phi-v1") else "/v2/models/mlp/infer"


def taskset(cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus] if cpus else []


def wait_quiet(max_load: float, max_wait_s: float) -> float:
    """Waits (bounded) for the 1-minute load average to drop under ``max_load``; returns it."""
    deadline = time.monotonic() + max_wait_s
    while True:
        load = os.getloadavg()[0]
        if load < max_load or time.monotonic() > deadline:
            return load
        time.sleep(5)


class Server:
    def __init__(self, s: Spec, port: int, info: Path, a: argparse.Namespace, log: Path) -> None:
        self.spec, self.port, self.info, self.log_path = s, port, info, log
        env = dict(os.environ)
        env.update(
            OMP_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
            BENTOML_DO_NOT_TRACK="True",
            RAY_USAGE_STATS_ENABLED="0",
            LITSERVE_DISABLE_TELEMETRY="1",
            **s.env,
        )
        env.pop("VIRTUAL_ENV", None)
        self.log = open(log, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*taskset(a.server_cpus), s.python, *s.argv],
            cwd=s.cwd,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.token = self.deployment_id = None

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.spec.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.spec.name} exited ({self.proc.returncode}); see {self.log_path}"
                )
            if self.spec.kind.startswith("phi") and not self.token:
                if self.info.exists() and self.info.stat().st_size:
                    d = json.loads(self.info.read_text())
                    self.token, self.deployment_id = d["token"], d["deployment_id"]
                    self.placement = d["placement"]
                    self.threads = d.get("threads")
                time.sleep(0.2)
                continue
            if self._probe():
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"{self.spec.name} not ready after {self.spec.startup_s} s; see {self.log_path}"
        )

    def _probe(self) -> bool:
        from model_probe import probe_body  # type: ignore[import-not-found]

        body = probe_body(self.spec.kind, self.deployment_id)
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{self.spec.path}",
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                **({"Authorization": f"Bearer {self.token}"} if self.token else {}),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)  # our own session: only what we started
                self.proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


_TICK = os.sysconf("SC_CLK_TCK")


def session_cpu(root: int) -> float:
    """CPU seconds (user + system) of the server: every live process in ``root``'s session,
    or descended from ``root`` (BentoML's circus workers start sessions of their own)."""
    procs: dict[int, tuple[int, int, float]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields after ')': state ppid pgrp session ... utime(11) stime(12)
        procs[int(d)] = (
            int(fields[1]),
            int(fields[3]),
            (int(fields[11]) + int(fields[12])) / _TICK,
        )
    total = 0.0
    for pid, (ppid, sid, cpu) in procs.items():
        mine, seen = sid == root or pid == root, 0
        while not mine and ppid > 1 and seen < 64:
            mine, ppid, seen = ppid == root, procs.get(ppid, (0, 0, 0.0))[0], seen + 1
        if mine:
            total += cpu
    return total


def thread_cpu(pid: int) -> dict[int, float]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / _TICK
        except OSError:
            pass
    return out


def load(server: Server, conc: int, a: argparse.Namespace, out: Path) -> dict[str, object]:
    s = server.spec
    cmd = [
        *taskset(a.client_cpus),
        a.client_python,
        str(SERVING / "loadgen.py"),
        "--port",
        str(server.port),
        "--kind",
        s.kind,
        "--path",
        s.path,
        "--concurrency",
        str(conc),
        "--duration",
        str(a.duration),
        "--warmup",
        str(a.warmup),
        "--out",
        str(out),
    ]
    if server.token:
        cmd += ["--token", server.token, "--deployment-id", server.deployment_id]
    profiling = a.profile and s.name == a.profile_server and conc == a.profile_concurrency
    gen = subprocess.Popen(cmd, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    # The measured window only: CPU counters (and the profiler's signals) after the warm-up.
    time.sleep(a.warmup)
    cpu0, thr0 = session_cpu(server.proc.pid), thread_cpu(server.proc.pid)
    if profiling:
        os.kill(server.proc.pid, signal.SIGUSR1)
    time.sleep(a.duration)
    if profiling:
        os.kill(server.proc.pid, signal.SIGUSR2)
    cpu1, thr1 = session_cpu(server.proc.pid), thread_cpu(server.proc.pid)
    if gen.wait() != 0:
        raise RuntimeError(f"load generator failed on {s.name} at concurrency {conc}")
    r = json.loads(out.read_text())
    n = max(int(r["requests"]), 1)
    r["server_cpu_us_per_req"] = (cpu1 - cpu0) / n * 1e6
    r["server_cpu_util"] = (cpu1 - cpu0) / a.duration
    names = getattr(server, "threads", None)
    if names:
        split: dict[str, float] = {}
        for tid, t in thr1.items():
            name = names.get(str(tid), "other (thread pool, ...)")
            name = name.rstrip("0123456789-_ ") or name
            split[name] = split.get(name, 0.0) + (t - thr0.get(tid, 0.0)) / n * 1e6
        r["server_cpu_us_per_req_by_thread"] = {k: round(v, 1) for k, v in split.items() if v > 0}
    return r


def fmt(x: float, digits: int = 1) -> str:
    return "—" if x != x else f"{x:,.{digits}f}"


def table(results: dict[tuple[str, int], list[dict]], names: list[str], concs: list[int]) -> str:
    lines = [
        "| server | concurrency | req/s | p50 ms | p99 ms | errors | checked "
        "| server CPU µs/req | req/s ÷ floor (paired) | p50 ÷ floor p50 (paired) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    med = {
        k: {
            m: statistics.median(r[m] for r in v)
            for m in ("rps", "p50_ms", "p99_ms", "server_cpu_us_per_req")
        }
        for k, v in results.items()
    }
    for c in concs:
        floor = med.get((FLOOR, c))
        for n in names:
            if (n, c) not in med:
                continue
            m = med[(n, c)]
            errs = sum(r["errors"] for r in results[(n, c)])
            checked = sum(r["checked"] for r in results[(n, c)])
            r_rps = r_p50 = "—"
            if floor:
                # The median of the rounds' own ratios: each round runs the floor and this server
                # back to back, so a machine that slows down between rounds cancels out.
                rounds = list(zip(results[(FLOOR, c)], results[(n, c)], strict=False))
                r_rps = fmt(statistics.median(b["rps"] / a["rps"] for a, b in rounds), 2)
                r_p50 = fmt(statistics.median(b["p50_ms"] / a["p50_ms"] for a, b in rounds), 2)
            shown = "n/a" if n.startswith("constant") else checked
            lines.append(
                f"| {n} | {c} | {fmt(m['rps'], 0)} | {fmt(m['p50_ms'], 2)} | "
                f"{fmt(m['p99_ms'], 1)} | {errs} | {shown} | "
                f"{fmt(m['server_cpu_us_per_req'], 0)} | {r_rps} | {r_p50} |"
            )
    return "\n".join(lines)


def profile_report(d: Path, limit: int = 45) -> None:
    import pstats

    prof = d / "loop.prof"
    if not prof.exists():
        print(f"(no profile in {d})")
        return
    print(f"\n### Profile of {d}: event-loop thread (cProfile), sorted by own time\n")
    st = pstats.Stats(str(prof))
    groups: dict[str, float] = {}
    total = 0.0
    for (fname, _line, func), (_cc, _nc, tt, _ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        g = _bucket(fname, func)
        groups[g] = groups.get(g, 0.0) + tt
        total += tt
    window = (
        json.loads((d / "window.json").read_text())["seconds"]
        if (d / "window.json").exists()
        else None
    )
    print("Own time of the event-loop thread by layer (cProfile inflates pure-Python layers):\n")
    print("| layer | share of loop-thread time |\n|---|---|")
    for g, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"| {g} | {100 * t / total:.1f}% |")
    if window:
        print(f"\n(profiled window {window:.1f} s, loop-thread profiled time {total:.1f} s)\n")
    st.sort_stats("tottime").print_stats(limit)
    st.sort_stats("cumulative").print_stats(limit)
    print((d / "threads.txt").read_text())


_BUCKETS = [
    ("h11", "HTTP parsing/writing: uvicorn + h11"),
    ("httptools", "HTTP parsing/writing: uvicorn + httptools"),
    ("uvicorn", "HTTP parsing/writing: uvicorn + h11"),
    ("pydantic", "request validation: pydantic"),
    ("fastapi/dependencies", "FastAPI dependency solving (auth Depends, body)"),
    ("fastapi/routing", "FastAPI/Starlette routing + request/response plumbing"),
    ("fastapi/", "FastAPI/Starlette middleware + app plumbing"),
    ("starlette", "FastAPI/Starlette middleware + app plumbing"),
    ("json/", "json encode/decode (stdlib)"),
    ("phi_engine/server", "phi_engine.server (routes, auth, body limit)"),
    ("phi_engine/serving", "phi_engine scheduler/deployment (submit path)"),
    ("phi_engine/", "phi_engine engine (submit path)"),
    ("asyncio", "asyncio event loop + futures"),
    ("concurrent/futures", "asyncio event loop + futures"),
    ("threading", "threading (locks, conditions)"),
]


def _bucket(fname: str, func: str) -> str:
    if fname == "~":
        if "socket" in func or "send" in func or "recv" in func:
            return "socket send/recv syscalls"
        if "numpy" in func:
            return "numpy (asarray, tolist)"
        if "select" in func or "poll" in func:
            return "event loop idle (select/epoll)"
        return "builtins (isinstance, dict, ...)"
    for key, name in _BUCKETS:
        if key in fname:
            return name
    return f"other ({Path(fname).name})"


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=3.0, help="excluded seconds before each run")
    p.add_argument("--concurrency", default="64,1", help="comma-separated connection counts")
    p.add_argument(
        "--only", default=None, help=f"comma-separated servers (default: {','.join(DEFAULT)})"
    )
    p.add_argument("--skip-setup", action="store_true", help="do not run serving/setup_peers.sh")
    p.add_argument(
        "--rounds", type=int, default=1, help="interleaved rounds; the table gives medians"
    )
    p.add_argument("--venvs", default=str(REPO / "build" / "bench-venvs"))
    p.add_argument(
        "--server-cpus", default="0", help="taskset CPU list for every server ('' = none)"
    )
    p.add_argument("--client-cpus", default="1", help="taskset CPU list for the load generator")
    p.add_argument("--client-python", default=None, help="default: the fastapi venv's (has uvloop)")
    p.add_argument("--max-load", type=float, default=1.5, help="wait for loadavg below this")
    p.add_argument("--phi-cpu", type=int, default=1)
    p.add_argument("--phi-nodes", type=int, default=1)
    p.add_argument("--phi-max-batch", type=int, default=32)
    p.add_argument(
        "--profile", default=None, help="dir: profile one phi server run (see app_phi.py)"
    )
    p.add_argument("--profile-server", default="phi-v1")
    p.add_argument("--profile-concurrency", type=int, default=64)
    p.add_argument("--json", default=None, help="write every run's raw result here")
    p.add_argument(
        "--dims",
        default=None,
        help="another MLP for every server and the client, e.g. 256,10 (default 256,512,512,10)",
    )
    a = p.parse_args()
    if a.dims:
        os.environ["PHI_BENCH_DIMS"] = a.dims  # inherited by every server and the load generator
    venvs = Path(a.venvs)
    names = a.only.split(",") if a.only else list(DEFAULT)
    concs = [int(c) for c in a.concurrency.split(",")]
    a.server_cpus = a.server_cpus or None
    a.client_cpus = a.client_cpus or None
    if not a.skip_setup:
        subprocess.run(["bash", str(SERVING / "setup_peers.sh"), str(venvs)], check=False)
    if a.client_python is None:
        cand = venvs / "fastapi" / "bin" / "python"
        a.client_python = str(cand) if cand.exists() else sys.executable
    sys.path.insert(0, str(SERVING))
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    print(
        f"machine: {machine()}; servers on CPUs {a.server_cpus}, client on {a.client_cpus}; "
        f"{a.duration:g} s measured after {a.warmup:g} s warm-up; logs in {work}",
        flush=True,
    )
    results: dict[tuple[str, int], list[dict]] = {}
    skipped: dict[str, str] = {}
    raw = []
    for rnd in range(a.rounds):
        for name in names:
            if name in skipped:
                continue
            port = free_port()
            info = work / f"{name}-{rnd}.json"
            env_extra = {}
            s = spec(name, venvs, port, info, a)
            if not Path(s.python).exists():
                skipped[name] = f"{s.python} missing (run serving/setup_peers.sh)"
                continue
            if a.profile and name == a.profile_server:
                env_extra["PHI_BENCH_PROFILE"] = str(Path(a.profile).resolve())
            s.env.update(env_extra)
            server = Server(s, port, info, a, work / f"{name}-{rnd}.log")
            try:
                server.wait_ready()
                for c in concs:
                    ld = wait_quiet(a.max_load, 120)
                    r = load(server, c, a, work / f"{name}-{c}-{rnd}.result.json")
                    r.update(server=name, round=rnd, loadavg_before=ld)
                    if hasattr(server, "placement"):
                        r["placement"] = server.placement
                    raw.append(r)
                    results.setdefault((name, c), []).append(r)
                    extra = ""
                    if "server_exec_ms_median" in r:
                        extra = (
                            f" | server exec {r['server_exec_ms_median']:.2f} ms, queue p50 "
                            f"{r['server_queue_ms_median']:.2f} "
                            f"p99 {r['server_queue_ms_p99']:.2f} ms, "
                            f"batch mean {r['batch_size_mean']:.1f}"
                        )
                    print(
                        f"[round {rnd}] {name:16s} c={c:<3d} {r['rps']:8.0f} req/s"
                        f"  p50 {r['p50_ms']:7.2f} ms"
                        f"  p99 {r['p99_ms']:7.1f} ms"
                        f"  errors {r['errors']} {r['error_kinds'] or ''}"
                        f" (load {ld:.2f}) server CPU {r['server_cpu_us_per_req']:.0f} us/req,"
                        f" util {r['server_cpu_util']:.2f}{extra}",
                        flush=True,
                    )
                    if "server_cpu_us_per_req_by_thread" in r:
                        print(
                            f"    CPU us/req by thread: {r['server_cpu_us_per_req_by_thread']}",
                            flush=True,
                        )
            except RuntimeError as exc:
                skipped[name] = str(exc)
                print(f"[round {rnd}] {name}: FAILED: {exc}", flush=True)
            finally:
                server.stop()
    print()
    print(
        f"Machine: {machine()}. Medians over {a.rounds} round(s); floor = `{FLOOR}`; ratios are "
        "medians of each round's own ratio (floor and server measured back to back).\n"
    )
    print(table(results, names, concs))
    for n, why in skipped.items():
        print(f"\n- {n}: not measured: {why}")
    if a.json:
        Path(a.json).write_text(json.dumps(raw, indent=1))
    if a.profile:
        profile_report(Path(a.profile))


if __name__ == "__main__":
    main()
