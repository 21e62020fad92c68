"""Engine fault tolerance with real worker processes and real kills (no mocks).

What the issue asks: a worker process killed with SIGKILL under load is detected and replaced;
its in-flight requests are retried once or failed with an error, never left hanging. An engine
restarted after a kill -9 finds the registry, deployments and jobs intact.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from phi_engine import Engine
from phi_engine.errors import NotFoundError, WorkerError
from phi_engine.serving._jobs import JobStore
from phi_test_models.tiny import mlp, mlp_reference

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc and /dev/shm")

# float32 GEMMs against a float64 reference through up to 16 layers of width 512.
RTOL, ATOL = 1e-4, 1e-4
WAIT_S = 60.0  # the longest any single wait in these tests may take
TESTS = Path(__file__).resolve().parents[1]

# A model slow enough that a batch is still running when the worker is killed.
SLOW = {"seed": 7, "width": 512, "layers": 16}
FAST = {"seed": 3, "width": 16, "layers": 2}


# ---- helpers -----------------------------------------------------------------------------------


def write_model(folder: Path, name: str, params: dict[str, int]) -> str:
    return mlp(folder / f"{name}.onnx", **params).as_uri()


def reference(x: np.ndarray, params: dict[str, int]) -> np.ndarray:
    return mlp_reference(x, **params)


def rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, 4)).astype(np.float32)


def proc_state(pid: int) -> str | None:
    """The process's state letter (R, S, Z, ...), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a non-reaping init counts as exited)."""
    return proc_state(pid) in (None, "Z")


def maps_segment(pid: int) -> bool:
    """The worker has mapped a shared memory segment (it does so on its first batch)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "/dev/shm/phiw" in f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False


def busy(pid: int) -> bool:
    """A worker that holds a batch: it has mapped its regions and is on a CPU (an idle worker
    sleeps in ``poll``)."""
    return pid > 0 and proc_state(pid) == "R" and maps_segment(pid)


def wait_until(check: Callable[[], bool], timeout: float = WAIT_S, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


def tagged_processes(token: str) -> list[int]:
    """Live (non-zombie) processes whose environment carries ``PHI_FAULT_TOKEN=token``."""
    needle = f"PHI_FAULT_TOKEN={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if needle in environ.split(b"\0") and not gone(pid):
            found.append(pid)
    return found


def events_of(eng: Engine, name: str) -> list[Any]:
    return [e for e in eng.logs() if e.event == name]


# ---- 1. SIGKILL under load (process mode) ------------------------------------------------------


def test_workers_killed_under_load_are_replaced_and_no_request_hangs(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    url = write_model(tmp_path, "slow", SLOW)
    with Engine(tmp_path / "home") as eng:
        model = eng.register("slow", "onnx", "1.0.0", url)
        dep = eng.deploy(
            model.model_id,
            execution_mode="process",
            resource_allocation={"cpu": 1, "nodes": 2},
            max_batch=256,
        )
        runner = dep.primary.runner
        pids_before = list(runner.pids)
        assert len(pids_before) == 2 and all(p > 0 for p in pids_before)

        stop = threading.Event()
        # Every request as (inputs, future); infer() calls are recorded as already-done futures.
        sent: list[tuple[np.ndarray, Future[Any]]] = []
        sent_lock = threading.Lock()
        seeds = rng.integers(0, 2**32, size=4)

        def client(seed: int) -> None:
            local = np.random.default_rng(seed)
            while not stop.is_set():
                xs = [rows(local, int(n)) for n in local.integers(1, 65, size=3)]
                futures = [eng.submit(dep.deployment_id, {"x": x}) for x in xs[:2]]
                done: Future[Any] = Future()
                try:
                    done.set_result(eng.infer(dep.deployment_id, {"x": xs[2]}))
                except Exception as exc:
                    done.set_exception(exc)
                with sent_lock:
                    sent.extend(zip(xs, [*futures, done], strict=True))
                for f in futures:
                    f.exception(timeout=WAIT_S)  # bounded: a hang fails the test below

        clients = [threading.Thread(target=client, args=(int(s),), daemon=True) for s in seeds]
        for t in clients:
            t.start()
        killed: list[int] = []
        try:
            time.sleep(0.5)  # load is flowing
            # Kill each original worker once, while it runs a batch. The second victim is the
            # other slot's worker, so no batch's retry is killed: every request must succeed.
            for victim in pids_before:
                assert wait_until(lambda v=victim: busy(v), timeout=10.0, step=0.001), (
                    f"worker {victim} never seen running a batch"
                )
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
                assert wait_until(lambda: runner.restarts >= len(killed), timeout=WAIT_S)
                time.sleep(0.5)  # serve on the replacement for a while
        finally:
            stop.set()
            for t in clients:
                t.join(WAIT_S)
        assert not any(t.is_alive() for t in clients), "a client is stuck in infer()/submit()"

        # Every request ended; each succeeded with the right answer or failed with WorkerError.
        failures: list[BaseException] = []
        got, want = [], []
        for x, future in sent:
            assert future.done(), "a request was left hanging"
            exc = future.exception(timeout=0)
            if exc is not None:
                failures.append(exc)
                assert isinstance(exc, WorkerError), repr(exc)
                continue
            got.append(future.result(timeout=0).outputs["y"])
            want.append(x)
        # One reference call for all rows (it rebuilds the weights on every call).
        np.testing.assert_allclose(
            np.concatenate(got), reference(np.concatenate(want), SLOW), rtol=RTOL, atol=ATOL
        )
        assert len(sent) > 20, f"too little load: {len(sent)} requests"
        # No batch died twice, so the single retry saved every request.
        assert failures == [], failures

        # The kills were detected and the dead workers replaced.
        assert all(gone(pid) for pid in killed)
        assert runner.restarts == len(killed) == 2
        pids_after = runner.pids
        assert all(p > 0 for p in pids_after)
        assert not set(pids_after) & set(killed)

        # Requests after the kills succeed, on both replacements (idle workers are used in turn).
        for _ in range(4):
            x = rows(rng, 8)
            out = eng.infer(dep.deployment_id, {"x": x}).outputs["y"]
            np.testing.assert_allclose(out, reference(x, SLOW), rtol=RTOL, atol=ATOL)
        assert runner.restarts == 2

        # The event log records what happened but never a payload.
        log = list(eng.logs())
        assert not [e for e in log if e.event == "request_failed"]
        dumped = json.dumps([e.fields for e in log])
        some_x = sent[0][0]
        assert f"{float(some_x[0, 0])!r}" not in dumped
        assert len(dumped) < 20_000, "the log looks like it holds tensors"
        assert eng.verify_logs().ok


def test_a_batch_whose_retry_is_killed_too_fails_with_worker_error(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """The other branch of "retried once or failed": the caller gets WorkerError, never a hang,
    the failure is logged (without the payload) and the deployment serves again afterwards."""
    params = {"seed": 11, "width": 1024, "layers": 8}
    url = write_model(tmp_path, "wide", params)
    with Engine(tmp_path / "home") as eng:
        model = eng.register("wide", "onnx", "1.0.0", url)
        dep = eng.deploy(
            model.model_id,
            execution_mode="process",
            resource_allocation={"cpu": 1, "nodes": 1},
            max_batch=512,
        )
        runner = dep.primary.runner
        killed: list[int] = []

        def killer() -> None:
            deadline = time.monotonic() + WAIT_S
            while len(killed) < 2 and time.monotonic() < deadline:
                pid = runner.pids[0]
                if pid not in killed and busy(pid):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                time.sleep(0.001)

        x = rows(rng, 512)
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        start = time.monotonic()
        future = eng.submit(dep.deployment_id, {"x": x})
        with pytest.raises(WorkerError, match="retry"):
            future.result(timeout=WAIT_S)
        assert time.monotonic() - start < 30.0
        thread.join(WAIT_S)
        assert len(killed) == 2 and all(gone(p) for p in killed)

        # Logged once, as an error naming the class, without the inputs.
        assert wait_until(lambda: len(events_of(eng, "request_failed")) == 1, timeout=10.0)
        [event] = events_of(eng, "request_failed")
        assert event.level == "error" and event.deployment_id == dep.deployment_id
        assert event.fields["error"] == "WorkerError"
        assert f"{float(x[0, 0])!r}" not in json.dumps(event.fields)

        # The dead worker is replaced on the next request, which succeeds.
        y = rows(rng, 3)
        out = eng.infer(dep.deployment_id, {"x": y}).outputs["y"]
        np.testing.assert_allclose(out, reference(y, params), rtol=RTOL, atol=ATOL)
        assert runner.pids[0] not in killed
        assert runner.restarts == 2


# ---- 2. kill -9 of a whole engine, then restart on the same home -------------------------------

_ENGINE_SCRIPT = """
import json, os, sys, time
from pathlib import Path

sys.path.insert(0, {tests!r})

from phi_engine import Engine


def main() -> None:
    cfg = json.loads(sys.argv[1])
    eng = Engine(cfg["home"])
    fast = eng.register("fast", "onnx", "1.0.0", cfg["fast_url"])
    slow = eng.register("slow", "onnx", "1.0.0", cfg["slow_url"])
    local = eng.deploy(fast.model_id, "local", {{"cpu": 1, "nodes": 2}}, max_batch=64)
    proc = eng.deploy(slow.model_id, "process", {{"cpu": 1, "nodes": 2}}, max_batch=256)
    job = eng.run_job(proc.deployment_id, cfg["rows"], batch_size=512, wait=False)
    marker = {{
        "pid": os.getpid(),
        "models": {{m.model_id: m.sha256 for m in (fast, slow)}},
        "local": local.deployment_id,
        "process": proc.deployment_id,
        "workers": proc.primary.runner.pids,
        "job": job.job_id,
    }}
    tmp = Path(cfg["marker"] + ".tmp")
    tmp.write_text(json.dumps(marker))
    tmp.rename(cfg["marker"])
    time.sleep(600)  # keep serving until killed


if __name__ == "__main__":
    main()
"""


def test_an_engine_killed_with_sigkill_restarts_with_its_state_intact(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    home = tmp_path / "home"
    x_job = rows(rng, 16_000)  # 32 chunks of 512 rows
    np.save(tmp_path / "rows.npy", x_job)
    cfg = {
        "home": str(home),
        "fast_url": write_model(tmp_path, "fast", FAST),
        "slow_url": write_model(tmp_path, "slow", SLOW),
        "rows": str(tmp_path / "rows.npy"),
        "marker": str(tmp_path / "ready.json"),
    }
    script = tmp_path / "engine_main.py"
    script.write_text(_ENGINE_SCRIPT.format(tests=str(TESTS)))
    token = uuid.uuid4().hex
    env = {**os.environ, "PHI_FAULT_TOKEN": token}
    log = (tmp_path / "engine.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(cfg)], stdout=log, stderr=log, env=env
    )
    try:
        marker_path = Path(cfg["marker"])
        ready = wait_until(lambda: marker_path.exists() or proc.poll() is not None, timeout=90.0)
        assert ready and marker_path.exists(), (tmp_path / "engine.log").read_text()
        marker = json.loads(marker_path.read_text())
        store = JobStore(home / "jobs")
        assert wait_until(lambda: store.get(marker["job"]).rows_done > 0, step=0.005), (
            tmp_path / "engine.log"
        ).read_text()
        # The scan below sees the engine and its workers while they run (so it is not vacuous).
        assert {proc.pid, *marker["workers"]} <= set(tagged_processes(token))
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=WAIT_S) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT_S)
        log.close()

    # Killed mid-job: some chunks are on disk, not all.
    at_kill = store.get(marker["job"])
    assert at_kill.status == "running"
    assert 0 < at_kill.rows_done < at_kill.rows_total == len(x_job)

    # Its worker processes (and any other child) notice and exit by themselves.
    workers = marker["workers"]
    assert len(workers) == 2
    assert wait_until(lambda: all(gone(p) for p in workers), timeout=15.0, step=0.05)
    assert wait_until(lambda: not tagged_processes(token), timeout=15.0, step=0.05), (
        tagged_processes(token)
    )
    # Its shared memory is unlinked once they are gone (by multiprocessing's resource tracker).
    segments = f"/dev/shm/phiw{marker['pid']}_*"
    assert wait_until(lambda: not glob.glob(segments), timeout=15.0, step=0.05), glob.glob(segments)

    with Engine(home) as eng:
        # The registry: the same models, ids and hashes.
        assert {m.model_id: m.sha256 for m in eng.models()} == marker["models"]

        # Both deployments are back, with their mode and replicas, and answer correctly.
        restored = {d.deployment_id: d for d in eng.deployments()}
        assert set(restored) == {marker["local"], marker["process"]}
        local, process = restored[marker["local"]], restored[marker["process"]]
        assert (local.spec.execution_mode, local.replicas) == ("local", 2)
        assert (process.spec.execution_mode, process.replicas) == ("process", 2)
        assert not set(process.primary.runner.pids) & set(workers)
        x = rows(rng, 5)
        for dep, params in ((local, FAST), (process, SLOW)):
            out = eng.infer(dep.deployment_id, {"x": x}).outputs["y"]
            np.testing.assert_allclose(out, reference(x, params), rtol=RTOL, atol=ATOL)
        restored_events = {e.deployment_id for e in events_of(eng, "restored")}
        assert restored_events == set(restored)
        assert not events_of(eng, "restore_failed")

        # The job resumes by itself and completes: every row exactly once, in order.
        assert wait_until(
            lambda: eng.job(marker["job"]).status not in ("queued", "running"), timeout=90.0
        ), eng.job(marker["job"])
        job = eng.job(marker["job"])
        assert job.status == "completed", job
        assert job.rows_done == job.rows_total == len(x_job)
        out = np.load(job.output_url, allow_pickle=False)
        assert out.shape == (len(x_job), 3)
        np.testing.assert_allclose(out, reference(x_job, SLOW), rtol=RTOL, atol=ATOL)
        finished = [e for e in events_of(eng, "job_finished") if e.fields["job_id"] == job.job_id]
        assert len(finished) == 1 and finished[0].fields["status"] == "completed"

        # The hash-chained event log survived the kill: the first engine's events are there.
        assert len(events_of(eng, "model_registered")) == 2
        assert len(events_of(eng, "deployed")) == 2
        assert eng.verify_logs().ok


# ---- 3. close and reopen -----------------------------------------------------------------------


def test_close_and_reopen_keeps_deployments_and_drops_undeployed_ones(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    home = tmp_path / "home"
    url = write_model(tmp_path, "fast", FAST)
    with Engine(home) as eng:
        model = eng.register("fast", "onnx", "1.0.0", url)
        two = eng.deploy(model.model_id, "local", {"cpu": 1, "nodes": 2}, max_batch=16)
        proc = eng.deploy(model.model_id, "process", {"cpu": 1, "nodes": 1}, max_batch=16)
        gone_dep = eng.deploy(model.model_id, "local", {"cpu": 1, "nodes": 1})
        scaled = eng.deploy(model.model_id, "local", {"cpu": 1, "nodes": 2}, max_batch=8)
        eng.scale(scaled.deployment_id, 1)
        eng.undeploy(gone_dep.deployment_id)
        old_workers = proc.primary.runner.pids
        expected = {
            d.deployment_id: (d.model_id, d.spec.execution_mode, d.replicas, d.spec.max_batch)
            for d in (two, proc, scaled)
        }
    assert wait_until(lambda: all(gone(p) for p in old_workers), timeout=10.0)

    with Engine(home) as eng:
        got = {
            d.deployment_id: (d.model_id, d.spec.execution_mode, d.replicas, d.spec.max_batch)
            for d in eng.deployments()
        }
        assert got == expected
        assert got[scaled.deployment_id][2] == 1  # the scale survived the restart
        with pytest.raises(NotFoundError):
            eng.deployment(gone_dep.deployment_id)
        for dep_id in expected:
            x = rows(rng, 3)
            out = eng.infer(dep_id, {"x": x}).outputs["y"]
            np.testing.assert_allclose(out, reference(x, FAST), rtol=RTOL, atol=ATOL)
        assert not events_of(eng, "restore_failed")
        assert eng.verify_logs().ok


def test_a_job_running_at_close_resumes_after_reopen(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    home = tmp_path / "home"
    url = write_model(tmp_path, "slow", SLOW)
    x_job = rows(rng, 20_000)
    np.save(tmp_path / "rows.npy", x_job)
    with Engine(home) as eng:
        model = eng.register("slow", "onnx", "1.0.0", url)
        dep = eng.deploy(model.model_id, "local", {"cpu": 1, "nodes": 2}, max_batch=256)
        job = eng.run_job(
            dep.deployment_id, str(tmp_path / "rows.npy"), batch_size=1024, wait=False
        )
        assert wait_until(lambda: eng.job(job.job_id).rows_done > 0, step=0.005)
    assert JobStore(home / "jobs").get(job.job_id).status != "completed"

    with Engine(home) as eng:
        assert wait_until(
            lambda: eng.job(job.job_id).status not in ("queued", "running"), timeout=90.0
        )
        done = eng.job(job.job_id)
        assert done.status == "completed", done
        out = np.load(done.output_url, allow_pickle=False)
        np.testing.assert_allclose(out, reference(x_job, SLOW), rtol=RTOL, atol=ATOL)
