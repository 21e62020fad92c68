"""MiniLM-L6 and a ResNet-style CNN on the GPU: phi_engine's CUDA backend against PyTorch eager,
same card, same process.

Each row times one request end to end, host arrays in and host arrays out (for PyTorch: the
tensors moved to the GPU, the forward pass, the result moved back), with rounds alternating
between the contenders; the table gives medians and the ratio to PyTorch eager fp32 and fp16
and to PyTorch fp16 captured as a CUDA graph (its forward pass replayed, inputs copied into the
captured tensors: the launch overhead removed, as our CUDA backend does).
Before timing, every contender's output is checked against phi_engine's CPU backend.

Weights: the all-MiniLM-L6-v2 package when installed, else random weights of the same shapes
(tests/phi_test_models/minilm.py), which time the same.

Usage: python benchmarks/gpu/bench_minilm.py [--rounds 30] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import phi_engine as phi  # noqa: E402
from phi_engine.models.minilm import build_onnx, model_dir  # noqa: E402


def _model_folder(tmp: Path) -> tuple[Path, str]:
    try:
        return model_dir(), "all-MiniLM-L6-v2 weights"
    except phi.errors.NotFoundError:
        from phi_test_models.minilm import random_model_dir

        return random_model_dir(tmp / "minilm"), "random weights, MiniLM-L6 shapes"


def _inputs(batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 1000 + seq)
    ids = rng.integers(1000, 30000, size=(batch, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[batch // 2 :, seq * 3 // 4 :] = 0  # some padding
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    b64 = b.astype(np.float64)
    return float(np.linalg.norm(a.astype(np.float64) - b64) / np.linalg.norm(b64))


def _measure(
    lines: list[str],
    model: str,
    case: str,
    feeds: dict[str, np.ndarray],
    want: np.ndarray,
    contenders: dict[str, tuple[Callable[[dict[str, np.ndarray]], np.ndarray], float]],
    rounds: int,
) -> bool:
    """Check every contender against ``want``, time them in alternating rounds, add the rows;
    True when one missed its tolerance."""
    failed = False
    errors = {}
    for name, (fn, tol) in list(contenders.items()):
        try:
            for _ in range(3):  # warm-up: first run, graph capture, cuBLAS heuristics
                got = fn(feeds)
        except Exception as exc:
            if name.startswith("phi"):
                raise
            print(f"{model} {case} {name}: left out, it failed: {type(exc).__name__}: {exc}")
            contenders = {k: v for k, v in contenders.items() if k != name}
            continue
        errors[name] = _rel_l2(got, want)
        if not errors[name] < tol:
            failed = True
            print(f"{model} {case} {name}: rel. L2 {errors[name]:.2e} over {tol:.0e}")
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, (fn, _tol) in contenders.items():
            t0 = time.perf_counter()
            fn(feeds)
            times[name].append((time.perf_counter() - t0) * 1e3)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name in contenders:
        vs32 = med["torch eager fp32"] / med[name]
        vs16 = med["torch eager fp16"] / med[name]
        graph16 = med.get(TORCH_GRAPH_FP16)
        vsg = "—" if graph16 is None else f"{graph16 / med[name]:.2f}"
        lines.append(
            f"| {model} | {case} | {name} | {med[name]:.3f} | {errors[name]:.1e} | "
            f"{vs32:.2f} | {vs16:.2f} | {vsg} |"
        )
    return failed


TORCH_GRAPH_FP16 = "torch fp16 (CUDA graph)"


def torch_graphed(
    net: Any, feeds: dict[str, np.ndarray], names: tuple[str, ...]
) -> Callable[[dict[str, np.ndarray]], np.ndarray] | None:
    """PyTorch's forward pass captured as a CUDA graph for these shapes (what a PyTorch user does
    to remove launch overhead): each call copies the inputs into the captured ones, replays and
    copies the result back. None (and why, printed) where capture fails."""
    import torch

    try:
        static = [torch.from_numpy(feeds[k]).cuda() for k in names]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(side):
            for _ in range(3):
                net(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            out = net(*static)
    except Exception as exc:  # reported, not fatal: the other rows still stand
        print(f"torch CUDA graph capture failed: {type(exc).__name__}: {exc}")
        return None

    def run(new: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            for t, k in zip(static, names, strict=True):
                t.copy_(torch.from_numpy(new[k]))
            graph.replay()
            return out.float().cpu().numpy()

    return run


def with_graphs(
    contenders: dict[str, tuple[Callable[[dict[str, np.ndarray]], np.ndarray], float]],
    nets: dict[str, Any],
    feeds: dict[str, np.ndarray],
    names: tuple[str, ...],
) -> dict[str, tuple[Callable[[dict[str, np.ndarray]], np.ndarray], float]]:
    """``contenders`` plus PyTorch under CUDA graphs for each of ``nets`` (name: (net, tol))."""
    out = dict(contenders)
    for name, (net, tol) in nets.items():
        fn = torch_graphed(net, feeds, names)
        if fn is not None:
            out[name] = (fn, tol)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    from phi_test_models.minilm import build_torch

    tmp = Path(tempfile.mkdtemp())
    folder, weights = _model_folder(tmp)
    onnx_model = build_onnx(folder)
    cpu = phi.compile(onnx_model, device="cpu", max_batch=64)
    fp32 = phi.compile(onnx_model, device="cuda", max_batch=64)
    tf32 = phi.compile(onnx_model, device="cuda", max_batch=64, precision="tf32")
    fp16 = phi.compile(onnx_model, device="cuda", max_batch=64, precision="fp16")
    eager = phi.compile(onnx_model, device="cuda", max_batch=64, cuda_graphs=False)
    triton = phi.compile(
        onnx_model, device="cuda", max_batch=64, triton_ops=["softmax", "layer_norm", "matmul"]
    )
    net32 = build_torch(folder).cuda().eval()
    net16 = build_torch(folder).cuda().eval().half()
    card = torch.cuda.get_device_name(0)

    def phi_run(model: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        return lambda feeds: model.run(feeds)["sentence_embedding"]

    def torch_run(net: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
            with torch.inference_mode():
                t = {k: torch.from_numpy(v).cuda(non_blocking=False) for k, v in feeds.items()}
                out = net(t["input_ids"], t["attention_mask"], t["token_type_ids"])
                return out.float().cpu().numpy()

        return run

    contenders = {
        "phi cuda fp32 (graphs)": (phi_run(fp32), 1e-4),
        "phi cuda tf32 (graphs)": (phi_run(tf32), 1e-2),
        "phi cuda fp16 products (graphs)": (phi_run(fp16), 1e-2),
        "phi cuda fp32 (no graphs)": (phi_run(eager), 1e-4),
        "phi cuda fp32, Triton ops (graphs)": (phi_run(triton), 1e-4),
        "torch eager fp32": (torch_run(net32), 1e-4),
        "torch eager fp16": (torch_run(net16), 2e-2),
    }
    lines = [
        f"### MiniLM-L6 and a ResNet-style CNN on {card} — "
        f"`python benchmarks/gpu/bench_minilm.py --rounds {args.rounds}`",
        "",
        f"MiniLM: {weights}; CNN: tests/phi_test_models/cnn.py (random weights, 64×64 inputs). "
        f"One request end to end (host arrays in and out); medians of {args.rounds} alternating "
        "rounds; rel. L2 against phi_engine's CPU backend.",
        "",
        "| model | batch | contender | ms (median) | rel. L2 vs CPU | torch fp32 / this "
        "| torch fp16 / this | torch fp16 graph / this |",
        "|---|---|---|---|---|---|---|---|",
    ]
    failed = False
    for batch, seq in ((32, 128), (1, 128), (8, 128)):
        feeds = _inputs(batch, seq)
        want = cpu.run(feeds)["sentence_embedding"]
        graphed = with_graphs(
            contenders,
            {"torch fp32 (CUDA graph)": (net32, 1e-4), TORCH_GRAPH_FP16: (net16, 2e-2)},
            feeds,
            ("input_ids", "attention_mask", "token_type_ids"),
        )
        failed |= _measure(lines, "MiniLM-L6", f"{batch}×{seq}", feeds, want, graphed, args.rounds)

    from phi_test_models import cnn

    cnn_path = str(cnn.export(str(tmp)))
    cnn_cpu = phi.compile(cnn_path, device="cpu", max_batch=32)
    (out_name,) = cnn_cpu.outputs
    cnn32 = phi.compile(cnn_path, device="cuda", max_batch=32)
    cnn_tf32 = phi.compile(cnn_path, device="cuda", max_batch=32, precision="tf32")
    cnn_fp16 = phi.compile(cnn_path, device="cuda", max_batch=32, precision="fp16")
    tnet32 = cnn.build_torch().cuda().eval()
    tnet16 = cnn.build_torch().cuda().eval().half()

    def phi_cnn(model: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        return lambda feeds: model.run([feeds["x"]])[out_name]

    def torch_cnn(net: Any) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
            with torch.inference_mode():
                x = torch.from_numpy(feeds["x"]).cuda()
                return net(x.to(next(net.parameters()).dtype)).float().cpu().numpy()

        return run

    cnn_contenders = {
        "phi cuda fp32 (graphs)": (phi_cnn(cnn32), 1e-4),
        "phi cuda tf32 (graphs)": (phi_cnn(cnn_tf32), 1e-2),
        "phi cuda fp16 products (graphs)": (phi_cnn(cnn_fp16), 1e-2),
        "torch eager fp32": (torch_cnn(tnet32), 1e-4),
        "torch eager fp16": (torch_cnn(tnet16), 2e-2),
    }
    for batch in (32, 1):
        rng = np.random.default_rng(batch)
        feeds = {"x": rng.standard_normal((batch, 3, cnn.SIZE, cnn.SIZE)).astype(np.float32)}
        want = cnn_cpu.run([feeds["x"]])[out_name]
        graphed = with_graphs(
            cnn_contenders,
            {
                "torch fp32 (CUDA graph)": (tnet32, 1e-4),
                TORCH_GRAPH_FP16: (lambda x: tnet16(x.half()), 2e-2),
            },
            feeds,
            ("x",),
        )
        failed |= _measure(lines, "CNN", str(batch), feeds, want, graphed, args.rounds)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_minilm.md").write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
