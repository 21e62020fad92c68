"""phi_engine's server for the serving benchmark: Engine -> register the ONNX -> deploy ->
``create_app(engine, auth=True)`` under uvicorn (one worker), plus a bearer token.

    python app_phi.py --port 8100 --info /tmp/phi.json [--cpu 1 --nodes 1 --max-batch 32]

Writes ``{"deployment_id", "model_name", "token", "placement"}`` to ``--info`` once serving.

Profiling (benchmark-only, not part of the library): with ``PHI_BENCH_PROFILE=<dir>`` set,
SIGUSR1 starts and SIGUSR2 stops-and-dumps two profiles of the measured window:
``<dir>/loop.prof`` (cProfile of the event-loop thread: HTTP, FastAPI, auth, JSON, submit) and
``<dir>/threads.txt`` (a wall-clock stack sampler over every thread, at ``PHI_BENCH_SAMPLE_HZ``,
default 500, showing where the engine's worker threads spend their time).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from model import write_onnx  # noqa: E402


class Sampler:
    """Samples every thread's stack (sys._current_frames) at a fixed rate: a poor man's py-spy."""

    def __init__(self, hz: float) -> None:
        self.period = 1.0 / hz
        self.stop = threading.Event()
        self.samples = 0
        self.leaf: collections.Counter[tuple[str, str]] = collections.Counter()
        self.incl: collections.Counter[tuple[str, str]] = collections.Counter()
        self.stacks: collections.Counter[tuple[str, str]] = collections.Counter()
        self.thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        me = threading.get_ident()
        names: dict[int, str] = {}
        while not self.stop.wait(self.period):
            frames = sys._current_frames()
            if len(names) != len(frames):
                names = {t.ident: t.name for t in threading.enumerate() if t.ident}
            self.samples += 1
            for ident, frame in frames.items():
                if ident == me:
                    continue
                tname = names.get(ident, str(ident))
                chain = []
                f = frame
                while f is not None:
                    code = f.f_code
                    chain.append(f"{Path(code.co_filename).name}:{code.co_name}")
                    f = f.f_back
                if not chain:
                    continue
                self.leaf[(tname, f"{chain[0]}:{frame.f_lineno}")] += 1
                for fn in set(chain):
                    self.incl[(tname, fn)] += 1
                self.stacks[(tname, " <- ".join(chain[:8]))] += 1

    def dump(self, path: Path) -> None:
        self.stop.set()
        self.thread.join()
        per_thread = collections.Counter()
        for (t, _), n in self.leaf.items():
            per_thread[_group(t)] += n
        lines = [
            f"samples: {self.samples} at {1 / self.period:.0f} Hz (wall clock, all threads)",
            "",
        ]
        lines.append("== samples per thread group (a thread idle in a wait still counts) ==")
        lines += [f"{n:8d}  {t}" for t, n in per_thread.most_common()]
        for title, counter in (("leaf (self) frames", self.leaf), ("inclusive", self.incl)):
            grouped = collections.Counter()
            for (t, fn), n in counter.items():
                grouped[(_group(t), fn)] += n
            lines += ["", f"== {title}, top 60 =="]
            lines += [f"{n:8d}  [{t}] {fn}" for (t, fn), n in grouped.most_common(60)]
        grouped = collections.Counter()
        for (t, st), n in self.stacks.items():
            grouped[(_group(t), st)] += n
        lines += ["", "== stacks (innermost first, 8 deep), top 40 =="]
        lines += [f"{n:8d}  [{t}] {st}" for (t, st), n in grouped.most_common(40)]
        path.write_text("\n".join(lines) + "\n")


def _group(name: str) -> str:
    """Thread names without their numbers, so pools group together."""
    return name.rstrip("0123456789-_ ") or name


def install_profiler(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    hz = float(os.environ.get("PHI_BENCH_SAMPLE_HZ", "500"))
    state: dict[str, object] = {}

    def start(signum: int, frame: object) -> None:
        prof = cProfile.Profile()
        sampler = Sampler(hz)
        state.update(prof=prof, sampler=sampler, t0=time.perf_counter())
        sampler.start()
        prof.enable()  # signal handlers run on the main thread: the event loop's

    def stop(signum: int, frame: object) -> None:
        prof = state.pop("prof", None)
        if prof is None:
            return
        prof.disable()  # type: ignore[attr-defined]
        prof.dump_stats(str(out / "loop.prof"))  # type: ignore[attr-defined]
        state.pop("sampler").dump(out / "threads.txt")  # type: ignore[attr-defined]
        seconds = time.perf_counter() - state.pop("t0")  # type: ignore[operator]
        (out / "window.json").write_text(json.dumps({"seconds": seconds}))

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--info", required=True)
    p.add_argument("--home", default=None)
    p.add_argument("--cpu", type=int, default=1, help="resource_allocation cpu (threads/replica)")
    p.add_argument("--nodes", type=int, default=1, help="resource_allocation nodes (replicas)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument(
        "--http", default="phi", help="phi (phi_engine's protocol, as served), auto, httptools, h11"
    )
    p.add_argument("--loop", default="auto")
    a = p.parse_args()

    import uvicorn

    from phi_engine import Engine
    from phi_engine.server import create_app, http_protocol

    home = Path(a.home or tempfile.mkdtemp(prefix="phi-bench-home-"))
    onnx_path = write_onnx(home / "src" / "mlp.onnx")
    engine = Engine(home, progress=False)
    record = engine.register("mlp", "onnx", "1.0.0", onnx_path.as_uri())
    dep = engine.deploy(
        record.model_id,
        "local",
        {"cpu": a.cpu, "nodes": a.nodes},
        "fixed",
        max_batch=a.max_batch,
    )
    if os.environ.get("PHI_BENCH_INLINE_MS"):  # experiment: the inline budget (0: always queue)
        dep.inline_budget_ms = float(os.environ["PHI_BENCH_INLINE_MS"])
    new = engine.clients.create(["admin"], name="bench")
    client = engine.clients.authenticate(new.client_id, new.client_secret)
    token = engine.tokens.issue(client, ["infer"])["access_token"]
    app = create_app(engine, auth=True)
    http = http_protocol() if a.http == "phi" else a.http

    if os.environ.get("PHI_BENCH_PROFILE"):
        install_profiler(Path(os.environ["PHI_BENCH_PROFILE"]))

    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=a.port,
        log_level="warning",
        access_log=False,
        http=http,
        loop=a.loop,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    info = {
        "deployment_id": dep.deployment_id,
        "model_name": record.name,
        "token": token,
        "placement": dep.spec.placement.describe(),
        "python": sys.executable,
    }
    # Native thread ids -> names, so the benchmark can split the server's CPU time per thread.
    info["threads"] = {str(t.native_id): t.name for t in threading.enumerate() if t.native_id}
    info["pid"] = os.getpid()
    Path(a.info).write_text(json.dumps(info))
    try:
        server.run()
    finally:
        engine.close()


if __name__ == "__main__":
    main()
