"""Fused CPU attention (``ops.attention``) against PyTorch's ``scaled_dot_product_attention``.

Run:  python benchmarks/bench_attention.py [--threads 1 2] [--write]

MiniLM-L6's shape at the benchmark batch: 32 sequences × 128 tokens × 12 heads × 32 dims, an
additive float mask of shape (batch, 1, 1, keys) as the exported model builds it. Three masks:
none dropped (all zeros), every row keeping its first 100 keys, and the model benchmark's padding
(random lengths 1…128, the first row full; `tests/phi_test_models/minilm.random_inputs`), with
dropped keys at float32's lowest value as the exporter writes them. PyTorch gets its own layout
(batch, heads, seq, dim), contiguous, and the same mask; both run at the same thread count, timed
in alternating blocks (medians). The answers are compared each run.
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys

import numpy as np

from _harness import alternating_block_medians, machine, markdown_table
from phi_engine import ops

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

B, S, H, D = 32, 128, 12, 32


def masks(rng: np.random.Generator) -> dict[str, np.ndarray]:
    from phi_test_models import minilm

    lowest = np.finfo(np.float32).min
    keep = minilm.random_inputs(rng, B, S)["attention_mask"].astype(bool)
    padded = np.where(keep, 0.0, lowest).astype(np.float32).reshape(B, 1, 1, S)
    first100 = np.zeros((B, 1, 1, S), np.float32)
    first100[..., 100:] = lowest
    return {
        "no key dropped": np.zeros((B, 1, 1, S), np.float32),
        "keys 100-127 dropped": first100,
        "MiniLM benchmark padding": padded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((B, S, H, D), dtype=np.float32) for _ in range(3))
    tq, tk, tv = (torch.from_numpy(np.ascontiguousarray(np.swapaxes(t, 1, 2))) for t in (q, k, v))
    alpha = 1.0 / np.sqrt(D)
    out = [f"### bench_attention — {datetime.date.today()} — {machine()}", ""]
    command = f"python benchmarks/bench_attention.py --threads {' '.join(map(str, args.threads))}"
    out.append(
        f"`{command}`: batch {B} × {S} tokens × {H} heads × {D} dims, medians of alternating "
        "blocks; PyTorch's scaled_dot_product_attention on its own (batch, heads, seq, dim) layout."
    )
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows = []
        for name, mask in masks(rng).items():
            tm = torch.from_numpy(mask)

            def ours(mask: np.ndarray = mask, threads: int = threads) -> np.ndarray:
                return ops.attention(q, k, v, mask, alpha, threads=threads)

            def theirs(tm: torch.Tensor = tm) -> torch.Tensor:
                return F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm, scale=alpha)

            got = ours()
            want = theirs().numpy().transpose(0, 2, 1, 3)
            err = float(np.linalg.norm(got - want) / np.linalg.norm(want))
            t_ours, t_torch = alternating_block_medians([ours, theirs], block=5, min_time=3.0)
            kept = float((mask == 0).mean())
            rows.append(
                [
                    name,
                    f"{kept:.2f}",
                    f"{t_ours * 1e3:.2f}",
                    f"{t_torch * 1e3:.2f}",
                    f"{t_torch / t_ours:.2f}",
                    f"{err:.1e}",
                ]
            )
        out += ["", f"**{threads} thread(s)**", ""]
        header = ["mask", "keys kept", "phi ms", "torch sdpa ms", "torch / phi", "rel L2 vs torch"]
        out.append(markdown_table(header, rows))
    text = "\n".join(out)
    print(text)
    if args.write:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
