"""ProcessRunner with real worker processes: results, batching, concurrency, crashes, cleanup."""

from __future__ import annotations

import glob
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import phi_engine as phi
from phi_engine.errors import InvalidRequestError, UnsupportedError, WorkerError
from phi_engine.serving._process import ProcessRunner

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc and /dev/shm")

RTOL, ATOL = 1e-5, 1e-5  # float32 GEMMs; parent and worker may use different thread counts
WAIT_S = 30.0  # the longest any wait in these tests may take


# ---- models ------------------------------------------------------------------------------------


def _save(path: Path, nodes: list, inputs: list, outputs: list, inits: list) -> str:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


def _tensor(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def linear_model(path: Path, seed: int = 0) -> str:
    """y = x @ W + b, x float32 [N, 4], y [N, 3]."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"]),
        helper.make_node("Add", ["m", "B"], ["y"]),
    ]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    return _save(path, nodes, [_tensor("x", ["N", 4])], [_tensor("y", ["N", 3])], inits)


def pair_model(path: Path) -> str:
    """y = x * z + x with x, z float32 [N, S]: any trailing length."""
    nodes = [helper.make_node("Mul", ["x", "z"], ["m"]), helper.make_node("Add", ["m", "x"], ["y"])]
    ins = [_tensor("x", ["N", "S"]), _tensor("z", ["N", "S"])]
    return _save(path, nodes, ins, [_tensor("y", ["N", "S"])], [])


def slow_model(path: Path, width: int = 512, layers: int = 16) -> str:
    """A chain of GEMMs taking about half a second at 8192 rows on one thread."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array((rng.standard_normal((4, width)) / 2).astype(np.float32), "W0")
    ]
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["h0"])]
    for i in range(1, layers + 1):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"W{i}"))
        out = "y" if i == layers else f"h{i}"
        nodes.append(helper.make_node("MatMul", [f"h{i - 1}", f"W{i}"], [out]))
    return _save(path, nodes, [_tensor("x", ["N", 4])], [_tensor("y", ["N", width])], inits)


def unsupported_model(path: Path) -> str:
    nodes = [helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example")]
    graph = helper.make_graph(nodes, "g", [_tensor("x", ["N", 4])], [_tensor("y", ["N", 4])])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {
        "linear": linear_model(root / "linear.onnx"),
        "pair": pair_model(root / "pair.onnx"),
        "slow": slow_model(root / "slow.onnx"),
        "unsupported": unsupported_model(root / "unsupported.onnx"),
    }


@pytest.fixture(scope="module")
def shared(models: dict[str, str]) -> Iterator[ProcessRunner]:
    """Two workers on the linear model, for the tests that leave them healthy."""
    with ProcessRunner(models["linear"], processes=2, max_batch=8192) as runner:
        yield runner


# ---- helpers -----------------------------------------------------------------------------------


def segments() -> set[str]:
    """This process's shared memory segments under /dev/shm."""
    return set(glob.glob(f"/dev/shm/phiw{os.getpid()}_*"))


def children_now() -> set[int]:
    """Pids of this process's live multiprocessing children (other tests' runners included)."""
    return {p.pid for p in multiprocessing.active_children() if p.pid is not None}


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for a non-reaping init counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_until(check: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def maps_segment(pid: int) -> bool:
    """The worker has mapped a segment, which it does on receiving its first batch."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "/dev/shm/phiw" in f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False


def kill_when_busy(runner: ProcessRunner, count: int) -> threading.Thread:
    """Kill ``count`` successive workers of a one-worker runner, each once it holds a batch."""

    def run() -> None:
        killed: set[int] = set()
        deadline = time.monotonic() + WAIT_S
        while len(killed) < count and time.monotonic() < deadline:
            pid = runner.pids[0]
            if pid > 0 and pid not in killed and maps_segment(pid):
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.002)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def rows(rng: np.random.Generator, n: int, width: int = 4) -> np.ndarray:
    return rng.standard_normal((n, width)).astype(np.float32)


# ---- results -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [[1], [3, 1, 7], [64, 64], [6000]])
def test_outputs_match_in_process(
    shared: ProcessRunner, models: dict[str, str], rng: np.random.Generator, sizes: list[int]
) -> None:
    reference = phi.compile(models["linear"], max_batch=8192)
    payloads = [{"x": rows(rng, n)} for n in sizes]
    results = shared(payloads)
    assert len(results) == len(payloads)
    for payload, result in zip(payloads, results, strict=True):
        assert set(result) == {"y"}
        np.testing.assert_allclose(result["y"], reference.run(payload)["y"], rtol=RTOL, atol=ATOL)
    assert shared.restarts == 0


def test_a_big_batch_grows_shared_memory(shared: ProcessRunner, rng: np.random.Generator) -> None:
    x = rows(rng, 6000)  # 96 kB in, 72 kB out: both past the first 64 KiB regions
    [result] = shared([{"x": x}])
    assert result["y"].shape == (6000, 3)
    sizes = [os.path.getsize(s) for s in segments()]
    assert max(sizes) >= x.nbytes
    [small] = shared([{"x": x[:2]}])  # and the grown regions serve small batches again
    np.testing.assert_allclose(small["y"], result["y"][:2], rtol=RTOL, atol=ATOL)


def test_mixed_trailing_shapes_in_one_call(
    models: dict[str, str], rng: np.random.Generator
) -> None:
    shapes = [(2, 3), (1, 5), (4, 3), (3, 7), (1, 5)]
    payloads = [{"x": rows(rng, n, s), "z": rows(rng, n, s)} for n, s in shapes]
    with ProcessRunner(models["pair"]) as runner:
        assert runner.input_names == ["x", "z"]
        results = runner(payloads)
    for p, r in zip(payloads, results, strict=True):
        np.testing.assert_allclose(r["y"], p["x"] * p["z"] + p["x"], rtol=RTOL, atol=ATOL)


def test_concurrent_callers_get_their_own_results(
    shared: ProcessRunner, models: dict[str, str]
) -> None:
    reference = phi.compile(models["linear"])
    errors: list[BaseException] = []

    def caller(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            for _ in range(25):
                payloads = [{"x": rows(local, int(n))} for n in local.integers(1, 9, size=3)]
                for p, r in zip(payloads, shared(payloads), strict=True):
                    np.testing.assert_allclose(r["y"], reference.run(p)["y"], rtol=RTOL, atol=ATOL)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert shared.restarts == 0


def test_rows_and_bad_payloads(shared: ProcessRunner, rng: np.random.Generator) -> None:
    assert shared.input_names == ["x"]
    assert shared.rows({"x": rows(rng, 5)}) == 5
    with pytest.raises(InvalidRequestError, match="missing"):
        shared.rows({"z": rows(rng, 5)})
    with pytest.raises(InvalidRequestError, match="batch axis"):
        shared([{"x": np.float32(1.0)}])
    assert shared([]) == []


def test_a_model_error_comes_back_and_the_worker_lives(
    shared: ProcessRunner, models: dict[str, str], rng: np.random.Generator
) -> None:
    pids = shared.pids
    bad = {"x": rows(rng, 2, width=5)}
    with pytest.raises(InvalidRequestError) as in_process:
        phi.compile(models["linear"]).run(bad)
    with pytest.raises(InvalidRequestError) as from_worker:
        shared([bad])
    assert from_worker.value.message == in_process.value.message
    assert from_worker.value.field == in_process.value.field == "x"
    assert shared.pids == pids
    assert shared.restarts == 0
    assert shared([{"x": rows(rng, 2)}])[0]["y"].shape == (2, 3)


# ---- crashes -----------------------------------------------------------------------------------


def test_a_worker_killed_while_idle_is_replaced(
    models: dict[str, str], rng: np.random.Generator
) -> None:
    x = rows(rng, 3)
    expected = phi.compile(models["linear"]).run({"x": x})["y"]
    with ProcessRunner(models["linear"]) as runner:
        [pid] = runner.pids
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: gone(pid))
        [result] = runner([{"x": x}])
        np.testing.assert_allclose(result["y"], expected, rtol=RTOL, atol=ATOL)
        assert runner.restarts == 1
        assert runner.pids != [pid]


def test_a_worker_killed_mid_batch_is_retried_on_a_replacement(
    models: dict[str, str], rng: np.random.Generator
) -> None:
    x = rows(rng, 8192)
    expected = phi.compile(models["slow"], max_batch=8192).run({"x": x})["y"]
    with ProcessRunner(models["slow"], max_batch=8192) as runner:
        [pid] = runner.pids
        killer = kill_when_busy(runner, count=1)
        [result] = runner([{"x": x}])
        killer.join(WAIT_S)
        assert gone(pid)
        assert runner.restarts == 1
        np.testing.assert_allclose(result["y"], expected, rtol=1e-4, atol=1e-4)


def test_a_batch_whose_retry_dies_too_fails_with_worker_error(
    models: dict[str, str], rng: np.random.Generator
) -> None:
    x = rows(rng, 8192)
    with ProcessRunner(models["slow"], max_batch=8192) as runner:
        killer = kill_when_busy(runner, count=2)
        start = time.monotonic()
        with pytest.raises(WorkerError, match="SIGKILL") as info:
            runner([{"x": x}])
        assert time.monotonic() - start < 15.0  # two partial runs and one restart, no hang
        assert "retry" in info.value.message
        killer.join(WAIT_S)
        assert runner.restarts == 1
        # The dead worker is replaced on the next call, which succeeds.
        assert runner([{"x": x[:4]}])[0]["y"].shape == (4, 512)
        assert runner.restarts == 2


def test_close_ends_a_running_call_with_worker_error(
    models: dict[str, str], rng: np.random.Generator
) -> None:
    runner = ProcessRunner(models["slow"], max_batch=8192)
    failures: list[BaseException] = []

    def call() -> None:
        try:
            runner([{"x": rows(rng, 8192)}])
        except BaseException as exc:
            failures.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    assert wait_until(lambda: maps_segment(runner.pids[0]))
    runner.close()
    caller.join(WAIT_S)
    assert not caller.is_alive()
    assert len(failures) == 1 and isinstance(failures[0], WorkerError)
    assert runner.restarts == 0


# ---- starting and stopping ---------------------------------------------------------------------


def test_a_model_that_fails_to_compile_fails_the_constructor(models: dict[str, str]) -> None:
    before, children = segments(), children_now()
    with pytest.raises(UnsupportedError, match="NoSuchOp"):
        ProcessRunner(models["unsupported"], processes=2)
    with pytest.raises(InvalidRequestError, match="no model file"):
        ProcessRunner(models["linear"] + ".missing")
    assert children_now() == children
    assert segments() == before


def test_bad_arguments_are_refused_before_starting_anything(models: dict[str, str]) -> None:
    children = children_now()
    for kwargs in ({"processes": 0}, {"threads": -1}, {"max_batch": 1.5}, {"start_timeout_s": 0}):
        with pytest.raises(InvalidRequestError):
            ProcessRunner(models["linear"], **kwargs)  # type: ignore[arg-type]
    assert children_now() == children


def test_close_leaves_no_processes_and_no_shared_memory(
    models: dict[str, str], rng: np.random.Generator
) -> None:
    before, children = segments(), children_now()
    runner = ProcessRunner(models["linear"], processes=2, threads=1)
    pids = runner.pids
    runner([{"x": rows(rng, 4)}])
    assert len(segments() - before) == 4  # an input and an output region per worker
    runner.close()
    runner.close()  # idempotent
    assert all(gone(pid) for pid in pids)
    assert children_now() == children
    assert segments() == before
    with pytest.raises(WorkerError, match="closed"):
        runner([{"x": rows(rng, 4)}])


_SCRIPT = """
import os, sys, numpy as np
from phi_engine.serving._process import ProcessRunner
if __name__ == "__main__":
    runner = ProcessRunner(sys.argv[1], processes=2)
    runner([{"x": np.ones((2, 4), np.float32)}])
    print(os.getpid(), *runner.pids, flush=True)
    if sys.argv[2] == "crash":
        os._exit(0)  # no close(), no atexit: as if the engine were killed
"""


@pytest.mark.parametrize("how", ["exit", "crash"])
def test_a_parent_that_exits_without_close_leaves_no_orphans(
    models: dict[str, str], tmp_path: Path, how: str
) -> None:
    script = tmp_path / "engine.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    done = subprocess.run(
        [sys.executable, str(script), models["linear"], how],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=True,
    )
    parent, *workers = (int(p) for p in done.stdout.split())
    assert len(workers) == 2
    assert wait_until(lambda: all(gone(pid) for pid in workers), timeout=10.0)
    # close() at exit unlinks the segments; after a crash the resource tracker does.
    assert wait_until(lambda: not glob.glob(f"/dev/shm/phiw{parent}_*"), timeout=10.0)
    if how == "exit":
        assert "leaked" not in done.stderr, done.stderr
