"""Side-by-side CPU benchmark helper for scripts/esmcpp-bench.sh.

Two sub-commands:
  write DIR     writes one random-weight ESM2-650M checkpoint in the Hugging Face layout that
                both engines read: config.json, vocab.txt, tokenizer_config.json and one f32
                model.safetensors with the `esm.` prefix, the rotary `inv_freq` buffers and the
                `lm_head.*` tensors that esm.cpp's loader requires (virnucpro ignores them).
  esmcpp DIR    times esm.cpp on that checkpoint at the given shapes, in FP32 and with its INT8
                weights, and prints one JSON line per (mode, shape) with real tokens per second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

LAYERS, HIDDEN, HEADS, FFN, VOCAB = 33, 1280, 20, 5120, 33

VOCAB_LIST = [
    "<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P",
    "K", "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>",
    "<mask>",
]


def write_checkpoint(out: Path, seed: int) -> None:
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * scale).astype(np.float32)

    ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731
    zeros = lambda n: np.zeros(n, dtype=np.float32)  # noqa: E731
    head_dim = HIDDEN // HEADS
    inv_freq = (1.0 / (10000.0 ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)))
    t = {"esm.embeddings.word_embeddings.weight": w(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"esm.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            t[p + f"attention.self.{name}.weight"] = w(HIDDEN, HIDDEN)
            t[p + f"attention.self.{name}.bias"] = w(HIDDEN)
        t[p + "attention.self.rotary_embeddings.inv_freq"] = inv_freq.astype(np.float32)
        t[p + "attention.output.dense.weight"] = w(HIDDEN, HIDDEN)
        t[p + "attention.output.dense.bias"] = w(HIDDEN)
        t[p + "attention.LayerNorm.weight"] = ones(HIDDEN)
        t[p + "attention.LayerNorm.bias"] = zeros(HIDDEN)
        t[p + "intermediate.dense.weight"] = w(FFN, HIDDEN)
        t[p + "intermediate.dense.bias"] = w(FFN)
        t[p + "output.dense.weight"] = w(HIDDEN, FFN)
        t[p + "output.dense.bias"] = w(HIDDEN)
        t[p + "LayerNorm.weight"] = ones(HIDDEN)
        t[p + "LayerNorm.bias"] = zeros(HIDDEN)
    t["esm.encoder.emb_layer_norm_after.weight"] = ones(HIDDEN)
    t["esm.encoder.emb_layer_norm_after.bias"] = zeros(HIDDEN)
    t["lm_head.dense.weight"] = w(HIDDEN, HIDDEN)
    t["lm_head.dense.bias"] = w(HIDDEN)
    t["lm_head.layer_norm.weight"] = ones(HIDDEN)
    t["lm_head.layer_norm.bias"] = zeros(HIDDEN)
    t["lm_head.decoder.weight"] = t["esm.embeddings.word_embeddings.weight"].copy()
    t["lm_head.bias"] = zeros(VOCAB)
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})

    config = {
        "architectures": ["EsmForMaskedLM"],
        "model_type": "esm",
        "vocab_size": VOCAB,
        "mask_token_id": 32,
        "pad_token_id": 1,
        "eos_token_id": 2,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": FFN,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": 1026,
        "layer_norm_eps": 1e-05,
        "position_embedding_type": "rotary",
        "emb_layer_norm_before": False,
        "token_dropout": True,
        "hidden_act": "gelu",
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "vocab.txt").write_text("\n".join(VOCAB_LIST) + "\n")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 1026, "tokenizer_class": "EsmTokenizer"}) + "\n"
    )


def shapes(spec: str) -> list[tuple[int, int]]:
    out = []
    for s in spec.split(","):
        b, n = s.lower().split("x")
        out.append((int(b), int(n)))
    return out


def lengths_for(batch: int, n: int, ragged: bool, seed: int) -> list[int]:
    if not ragged:
        return [n] * batch
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.integers(n // 2, n + 1, size=batch)]


def time_esmcpp(model, ids: list[np.ndarray], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        model.forward_scheduled(ids)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.forward_scheduled(ids)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_esmcpp(args: argparse.Namespace) -> None:
    import esm_cpp

    path = str(Path(args.dir) / "model.safetensors")
    model = esm_cpp.Model.load_from_safetensors(path)
    if args.mode == "int8":
        model.quantize_weights()
    rng = np.random.default_rng(args.seed)
    for batch, n in shapes(args.shapes):
        lens = lengths_for(batch, n, args.ragged, args.seed)
        # Residue tokens 4..23 (the 20 standard amino acids) between <cls> and <eos>; `n` is the
        # padded length with both specials, as in `virnucpro bench --shapes`.
        ids = [
            np.concatenate(([0], rng.integers(4, 24, size=max(l - 2, 1)), [2])).astype(np.int32)
            for l in lens
        ]
        real = sum(len(x) for x in ids)
        median = time_esmcpp(model, ids, args.warmup, args.repeats)
        print(json.dumps({
            "engine": f"esm.cpp {esm_cpp.__version__} {args.mode.upper()}",
            "isa": esm_cpp.current_isa(),
            "threads": esm_cpp.Model.num_threads,
            "batch": batch,
            "len": n,
            "ragged": args.ragged,
            "real_tokens": real,
            "median_ms": median * 1000.0,
            "tokens_per_s": real / median,
        }), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    wr = sub.add_parser("write")
    wr.add_argument("dir")
    wr.add_argument("--seed", type=int, default=7)
    ec = sub.add_parser("esmcpp")
    ec.add_argument("dir")
    ec.add_argument("--mode", choices=["fp32", "int8"], required=True)
    ec.add_argument("--shapes", default="8x168")
    ec.add_argument("--ragged", action="store_true")
    ec.add_argument("--warmup", type=int, default=1)
    ec.add_argument("--repeats", type=int, default=5)
    ec.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    if args.cmd == "write":
        write_checkpoint(Path(args.dir), args.seed)
    else:
        run_esmcpp(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
