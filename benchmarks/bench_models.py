"""Whole-model inference: phi_engine vs ONNX Runtime vs PyTorch, same threads, same process.

Run:  python benchmarks/bench_models.py [--threads 1 2] [--quick] [--memory] [--write]

Models (exported once with torch==2.13.0, see tests/phi_test_models): all-MiniLM-L6-v2 at batch
1, 8 and 32 x sequence 128, and the ResNet-style CNN at batch 1 and 32 (64x64 images). Every
engine's output is first checked against PyTorch's (relative L2 <= 1e-4); then the engines are
timed in alternating blocks of calls (medians; benchmarks/_harness.py): every engine here keeps
its worker threads spinning for a while after a call, so call-by-call alternation makes each
multi-threaded run compete with the previous engine's spinning threads. That ratio is reported
too ("call by call"). Compile time (phi_engine) and session creation (ONNX Runtime) are
reported. ``--memory`` measures, for one MiniLM 32 x 128 run in a fresh process (Linux), the
peak resident memory from before loading the model through its first run (weights, compiled
form, arenas, everything) and the first run's own growth over the loaded model.
``--write`` appends the tables to RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

import phi_engine
from _harness import alternating_block_medians, interleaved_medians, machine, markdown_table
from phi_engine.graph import compile
from phi_test_models import cnn, minilm


def rel_l2(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - ref) / np.linalg.norm(ref))


def ort_session(path: pathlib.Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_case(
    label: str, path: pathlib.Path, torch_model: Any, inputs: dict[str, np.ndarray], threads: int
) -> list[object]:
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    cm = compile(path, max_batch=64)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sess = ort_session(path, threads)
    ort_s = time.perf_counter() - t0
    out_name = cm.graph.outputs[0]
    args = [torch.from_numpy(v) for v in inputs.values()]

    def ours() -> np.ndarray:
        return cm.run(inputs, threads=threads)[out_name]

    def onnxrt() -> np.ndarray:
        return sess.run(None, inputs)[0]

    def pytorch() -> np.ndarray:
        with torch.no_grad():
            return torch_model(*args).numpy()

    ref = pytorch().astype(np.float64)
    errors = [rel_l2(fn(), ref) for fn in (ours, onnxrt)]
    if errors[0] > 1e-4:
        raise SystemExit(f"{label}: phi_engine differs from PyTorch (rel L2 {errors[0]:.2e})")
    fns: list[Callable[[], object]] = [ours, onnxrt, pytorch]
    t_ours, t_ort, t_torch = alternating_block_medians(fns, block=5, min_time=2.0)
    c_ours, c_ort, _ = interleaved_medians(fns, min_time=1.0, min_runs=5)
    return [
        label,
        f"{t_ours * 1e3:.1f}",
        f"{t_ort * 1e3:.1f}",
        f"{t_torch * 1e3:.1f}",
        f"{t_ort / t_ours:.2f}",
        f"{t_torch / t_ours:.2f}",
        f"{c_ort / c_ours:.2f}",
        f"{compile_s:.2f} / {ort_s:.2f}",
        f"{errors[0]:.1e} / {errors[1]:.1e}",
    ]


_MEMORY_CHILD = """
import sys
import numpy as np
sys.path[:0] = {paths!r}
from phi_test_models import minilm
engine, path = sys.argv[1], sys.argv[2]
if engine == "phi":
    from phi_engine.graph import compile
else:
    import onnxruntime as ort
inputs = minilm.random_inputs(np.random.default_rng(0), 32, 128)

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) restarts from the current RSS

base = status("VmRSS:")
reset_peak()
if engine == "phi":
    cm = compile(path, max_batch=64)
    run = lambda: cm.run(inputs)
else:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    run = lambda: sess.run(None, inputs)
load_peak = status("VmHWM:")
reset_peak()
before = status("VmRSS:")
run()
run_peak = status("VmHWM:")
print((max(load_peak, run_peak) - base) / 1024, (run_peak - before) / 1024)
"""


def peak_memory_mib(engine: str, path: pathlib.Path) -> tuple[float, float]:
    """(peak RSS over the bare process from loading through the first MiniLM 32x128 run, the first
    run's own peak growth), in MiB, measured in a fresh process (Linux)."""
    import subprocess

    paths = [str(pathlib.Path(__file__).resolve().parents[1] / "tests")]
    code = _MEMORY_CHILD.format(paths=paths)
    out = subprocess.run(
        [sys.executable, "-c", code, engine, str(path)], capture_output=True, text=True, check=True
    )
    total, run = out.stdout.strip().splitlines()[-1].split()
    return float(total), float(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="MiniLM batch 1 and 8, CNN batch 1")
    parser.add_argument("--memory", action="store_true", help="peak memory of a MiniLM run")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    text_cases = [1, 8] if args.quick else [1, 8, 32]
    image_cases = [1] if args.quick else [1, 32]
    m_path, c_path = minilm.export(), cnn.export()
    m_torch, c_torch = minilm.build_torch(), cnn.build_torch()
    header = [
        "model",
        "phi_engine ms",
        "ONNX Runtime ms",
        "PyTorch ms",
        "ORT / phi",
        "torch / phi",
        "ORT / phi call by call",
        "compile s (phi / ORT)",
        "rel L2 vs torch (phi / ORT)",
    ]
    out = []
    for threads in args.threads:
        phi_engine.set_num_threads(threads)
        rows = []
        for batch in text_cases:
            inputs = minilm.random_inputs(rng, batch, 128)
            rows.append(run_case(f"MiniLM-L6 {batch}x128", m_path, m_torch, inputs, threads))
        for batch in image_cases:
            image = rng.standard_normal((batch, 3, cnn.SIZE, cnn.SIZE)).astype(np.float32)
            rows.append(
                run_case(f"CNN {batch}x3x{cnn.SIZE}²", c_path, c_torch, {"image": image}, threads)
            )
        table = markdown_table(header, rows)
        out.append(f"**{threads} thread(s)**\n\n{table}\n")
        print(out[-1], flush=True)
    if args.memory:
        (phi_total, phi_run), (ort_total, ort_run) = (
            peak_memory_mib(e, m_path) for e in ("phi", "ort")
        )
        out.append(
            "Peak memory, MiniLM-L6 32x128, fresh process: from loading the model through its "
            f"first run, phi_engine {phi_total:.0f} MiB, ONNX Runtime {ort_total:.0f} MiB; the "
            f"first run alone, phi_engine {phi_run:.0f} MiB, ONNX Runtime {ort_run:.0f} MiB.\n"
        )
        print(out[-1])
    if args.write:
        path = pathlib.Path(__file__).with_name("RESULTS.md")
        stamp = datetime.date.today().isoformat()
        cmd = "python benchmarks/bench_models.py " + " ".join(sys.argv[1:])
        with path.open("a") as f:
            f.write(f"\n### Models, {stamp} — `{cmd}`\n\nMachine: {machine()}\n\n" + "\n".join(out))


if __name__ == "__main__":
    main()
