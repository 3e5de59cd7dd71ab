#!/usr/bin/env python3
"""PyTorch baselines for the GPU targets of issue #5, on the same shapes as `virnucpro doctor`
and `virnucpro bench`.

1. Attention op alone (20 heads of 64 = FastESM2_650, fp16): torch SDPA without a mask, SDPA with a
   boolean key-padding mask, and the materialized softmax(QK^T*s + mask)V, at batch x length
   1x502, 64x168, 8x1026, 4x2048.
2. transformers.EsmModel with FastESM2_650's shape (33 layers, hidden 1280, 20 heads, FFN 5120,
   vocab 33, rotary), random weights, fp16, attn_implementation="sdpa": tokens/s on 512x168 (all
   rows full, and rows of random length 84..168 padded to 168), 2x1024 and 1x2048.
3. DNABERT-S-sized encoder, fp32, two ways:
   a. transformers.BertModel (12 layers, hidden 768, 12 heads, FFN 3072, vocab 4096) as an
      APPROXIMATION: DNABERT-S is MosaicBERT (ALiBi, gated GELU MLP, no position embeddings),
      which transformers does not ship; BertModel has the same matmul sizes except the gated MLP
      (DNABERT-S: 768 -> 6144 -> 768 instead of 768 -> 3072 -> 768), so it does about 3/4 of the
      real model's arithmetic.
   b. `MosaicBert` below: the DNABERT-S architecture as its own `bert_layers.py` runs it in
      PyTorch (the path taken in fp32 and wherever its old Triton kernel is unavailable):
      unpadded tokens, fused Wqkv, ALiBi bias added to materialized scores, softmax, gated-GELU
      MLP without bias on the gate projection, post-LayerNorms. Random weights, same shapes.
   Batch 256 x 128 and 256 x 110 tokens (a 500 bp chunk is about 100-130 BPE tokens).

Timing (see .library METHOD.md): CUDA events around back-to-back calls, warm-up first, the median
of many repeats. TF32 stays off (PyTorch's default for matmuls), so "fp32" is true fp32.

Usage: python3 scripts/bench_torch.py [--out results.json] [--quick] [--skip-models]
"""

import argparse
import json
import math
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def timed(fn, warmup=3, repeats=30, target_ms=5.0):
    """Median/min/max ms per call: `repeats` batches of `inner` back-to-back calls, with `inner`
    chosen so a batch lasts about target_ms; CUDA events."""
    for _ in range(max(1, warmup)):
        fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    fn()
    e.record()
    e.synchronize()
    one = s.elapsed_time(e)
    inner = max(1, min(1000, round(target_ms / one))) if one > 0 else 1000
    times = []
    for _ in range(max(1, repeats)):
        s.record()
        for _ in range(inner):
            fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / inner)
    times.sort()
    return {"median_ms": times[len(times) // 2], "min_ms": times[0], "max_ms": times[-1],
            "repeats": len(times), "inner": inner}


def attention_bench(shapes, heads, repeats):
    rows = []
    d = 64
    scale = 1.0 / math.sqrt(d)
    for b, t in shapes:
        q, k, v = (torch.randn(b, heads, t, d, device="cuda", dtype=torch.float16) for _ in range(3))
        keep = torch.ones(b, 1, 1, t, device="cuda", dtype=torch.bool)  # all keys real
        add = torch.zeros(b, 1, 1, t, device="cuda", dtype=torch.float16)

        def sdpa():
            return F.scaled_dot_product_attention(q, k, v, scale=scale)

        def sdpa_mask():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale)

        def materialized():
            s_ = torch.matmul(q * scale, k.transpose(-1, -2)) + add
            return torch.matmul(torch.softmax(s_, dim=-1), v)

        with torch.inference_mode():
            # Sanity: the variants agree.
            ref = materialized().float()
            for f in (sdpa, sdpa_mask):
                err = (f().float() - ref).norm() / ref.norm()
                if not err < 1e-2:
                    print(f"WARNING: {f.__name__} differs from materialized: {err}", flush=True)
            r = {"batch": b, "len": t, "heads": heads}
            for name, f in (("sdpa", sdpa), ("sdpa_mask", sdpa_mask), ("materialized", materialized)):
                r[name] = timed(f, repeats=repeats)
        flops = 4.0 * b * heads * t * t * d
        r["sdpa_tflops"] = flops / (r["sdpa"]["median_ms"] * 1e-3) / 1e12
        rows.append(r)
        print(f"attn {b}x{t}: sdpa {r['sdpa']['median_ms']:.4f} ms ({r['sdpa_tflops']:.0f} TFLOP/s), "
              f"sdpa+mask {r['sdpa_mask']['median_ms']:.4f} ms, "
              f"materialized {r['materialized']['median_ms']:.4f} ms", flush=True)
        del q, k, v
    return rows


def build_model(cls, cfg, impl, dtype):
    with torch.device("cuda"):
        try:
            m = cls._from_config(cfg, attn_implementation=impl)
        except (TypeError, ValueError) as err:
            print(f"  {cls.__name__}: attn_implementation={impl} refused ({err}); using default",
                  flush=True)
            m = cls._from_config(cfg)
    m = m.to(dtype=dtype).eval()
    actual = getattr(m.config, "_attn_implementation", "?")
    return m, actual


def model_bench(model, vocab, batches, repeats, special=(0, 1, 2)):
    """batches: list of (name, batch, len, lengths or None). Returns rows with tokens/s over real
    tokens."""
    rows = []
    cls_id, pad_id, eos_id = special
    for name, b, t, lens in batches:
        if lens is None:
            lens = [t] * b
        ids = torch.randint(4, vocab, (b, t), device="cuda")
        mask = torch.zeros(b, t, dtype=torch.long, device="cuda")
        for i, l in enumerate(lens):
            ids[i, 0] = cls_id
            ids[i, l - 1] = eos_id
            ids[i, l:] = pad_id
            mask[i, :l] = 1
        real = int(sum(lens))
        with torch.inference_mode():
            tm = timed(lambda: model(input_ids=ids, attention_mask=mask), warmup=2,
                       repeats=repeats, target_ms=1.0)
        sec = tm["median_ms"] * 1e-3
        r = {"name": name, "batch": b, "len": t, "real_tokens": real, "time": tm,
             "tokens_per_s": real / sec, "seqs_per_s": b / sec}
        rows.append(r)
        print(f"  {name}: {tm['median_ms']:.1f} ms/batch, {r['tokens_per_s']:.0f} tokens/s, "
              f"{r['seqs_per_s']:.1f} seqs/s", flush=True)
        torch.cuda.empty_cache()
    return rows


class MosaicBert(torch.nn.Module):
    """DNABERT-S (MosaicBERT / DNABERT-2 `bert_layers.py`), eager PyTorch path: embeddings (word +
    token type, LayerNorm), then per layer on the unpadded tokens: Wqkv, re-padded for attention
    with the ALiBi bias and the key-padding mask, softmax, P V, unpadded again; dense + residual +
    LayerNorm; gated_layers (no bias) -> gelu(gate) * value -> wo + residual + LayerNorm."""

    def __init__(self, vocab=4096, hidden=768, layers=12, heads=12, inter=3072):
        super().__init__()
        nn = torch.nn
        self.heads, self.hidden, self.inter = heads, hidden, inter
        self.word = nn.Embedding(vocab, hidden)
        self.token_type = nn.Embedding(2, hidden)
        self.emb_ln = nn.LayerNorm(hidden, eps=1e-12)
        self.layers = nn.ModuleList()
        for _ in range(layers):
            m = nn.Module()
            m.Wqkv = nn.Linear(hidden, 3 * hidden)
            m.dense = nn.Linear(hidden, hidden)
            m.ln1 = nn.LayerNorm(hidden, eps=1e-12)
            m.gated = nn.Linear(hidden, 2 * inter, bias=False)
            m.wo = nn.Linear(inter, hidden)
            m.ln2 = nn.LayerNorm(hidden, eps=1e-12)
            self.layers.append(m)
        # ALiBi slopes of bert_layers.py (heads a power of two or not).
        def slopes(n):
            def pow2(n):
                start = 2 ** (-(2 ** -(math.log2(n) - 3)))
                return [start * start ** i for i in range(n)]
            if math.log2(n).is_integer():
                return pow2(n)
            c = 2 ** math.floor(math.log2(n))
            return pow2(c) + pow2(2 * c)[0::2][: n - c]
        self.register_buffer("slopes", torch.tensor(slopes(heads)))

    def forward(self, input_ids, attention_mask):
        b, s = input_ids.shape
        h, d = self.heads, self.hidden // self.heads
        x = self.emb_ln(self.word(input_ids) + self.token_type(torch.zeros_like(input_ids)))
        keep = attention_mask.bool()
        idx = torch.nonzero(keep.flatten(), as_tuple=False).flatten()
        x = x.reshape(b * s, -1)[idx]  # unpad
        pos = torch.arange(s, device=x.device)
        rel = (pos[None, :] - pos[:, None]).abs()
        bias = -(self.slopes[:, None, None] * rel[None]).unsqueeze(0)  # [1, h, s, s]
        ext = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        bias = bias + ext
        for m in self.layers:
            qkv = m.Wqkv(x)
            full = torch.zeros(b * s, 3 * self.hidden, device=x.device, dtype=x.dtype)
            full[idx] = qkv  # pad
            qkv = full.view(b, s, 3, h, d)
            q = qkv[:, :, 0].permute(0, 2, 1, 3)
            k = qkv[:, :, 1].permute(0, 2, 3, 1)
            v = qkv[:, :, 2].permute(0, 2, 1, 3)
            scores = torch.matmul(q, k) / math.sqrt(d) + bias
            probs = torch.softmax(scores, dim=-1)
            att = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(b * s, self.hidden)[idx]
            x = m.ln1(m.dense(att) + x)
            g = m.gated(x)
            y = F.gelu(g[:, : self.inter]) * g[:, self.inter:]
            x = m.ln2(m.wo(y) + x)
        out = torch.zeros(b * s, self.hidden, device=x.device, dtype=x.dtype)
        out[idx] = x
        return out.view(b, s, -1)


def esm_and_bert(out, args):
    from transformers import BertConfig, BertModel, EsmConfig, EsmModel

    mrep = 5 if args.quick else 10
    esm_cfg = EsmConfig(vocab_size=33, hidden_size=1280, num_hidden_layers=33,
                        num_attention_heads=20, intermediate_size=5120,
                        position_embedding_type="rotary", max_position_embeddings=4096,
                        pad_token_id=1, mask_token_id=32, token_dropout=False,
                        layer_norm_eps=1e-5, emb_layer_norm_before=False,
                        hidden_act="gelu")
    model, impl = build_model(EsmModel, esm_cfg, "sdpa", torch.float16)
    print(f"EsmModel FastESM2_650 shape, fp16, attn={impl}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f} M params", flush=True)
    g = torch.Generator().manual_seed(7)
    ragged = [int(x) for x in torch.randint(84, 169, (512,), generator=g)]
    out["esm"] = {"attn_implementation": impl, "dtype": "float16", "rows": model_bench(
        model, 33,
        [("512x168 full", 512, 168, None), ("512x168 ragged 84..168", 512, 168, ragged),
         ("2x1024", 2, 1024, None), ("1x2048", 1, 2048, None)], mrep)}
    del model
    torch.cuda.empty_cache()

    bert_cfg = BertConfig(vocab_size=4096, hidden_size=768, num_hidden_layers=12,
                          num_attention_heads=12, intermediate_size=3072,
                          max_position_embeddings=512, hidden_act="gelu")
    out["bert"] = {}
    for impl_req in ("sdpa", "eager"):
        model, impl = build_model(BertModel, bert_cfg, impl_req, torch.float32)
        print(f"BertModel (DNABERT-S-sized approximation), fp32, attn={impl}", flush=True)
        out["bert"][impl_req] = {"attn_implementation": impl, "dtype": "float32",
                                 "rows": model_bench(model, 4096, [("256x128", 256, 128, None),
                                                                     ("256x110", 256, 110, None)],
                                                     mrep, special=(1, 3, 2))}
        del model
        torch.cuda.empty_cache()

    model = MosaicBert().cuda().eval()
    print("MosaicBert (the DNABERT-S architecture, bert_layers.py's PyTorch path), fp32", flush=True)
    out["mosaic"] = {"dtype": "float32",
                     "rows": model_bench(model, 4096, [("256x128", 256, 128, None),
                                                       ("256x110", 256, 110, None)],
                                         mrep, special=(1, 3, 2))}
    del model
    torch.cuda.empty_cache()


def gemm_bench(repeats):
    """F.linear (cuBLASLt with the bias in its epilogue, as nn.Linear runs it) on the matmul
    shapes of one FastESM2_650 layer at 512x168 tokens and one DNABERT-S layer at 256x128, fp16:
    the GEMM rate PyTorch gets on this GPU, to compare with `virnucpro bench --ops`."""
    rows = []
    for model, n, shapes in (
            ("esm2-650m", 512 * 168, [("qkv", 1280, 3840), ("out", 1280, 1280),
                                      ("ffn1", 1280, 5120), ("ffn2", 5120, 1280)]),
            ("dnabert-s", 256 * 128, [("qkv", 768, 2304), ("out", 768, 768),
                                      ("ffn1 gated", 768, 6144), ("ffn2", 3072, 768)])):
        for name, k, m in shapes:
            x = torch.randn(n, k, device="cuda", dtype=torch.float16)
            w = torch.randn(m, k, device="cuda", dtype=torch.float16) * 0.02
            b = torch.randn(m, device="cuda", dtype=torch.float16)
            t = timed(lambda: F.linear(x, w, b), repeats=repeats)
            tflops = 2 * n * k * m / (t["median_ms"] * 1e-3) / 1e12
            rows.append({"model": model, "op": name, "n": n, "k": k, "m": m, **t, "tflops": tflops})
            print(f"gemm {model} {name:<10} [{n},{k}]x[{k},{m}] +bias fp16: "
                  f"{t['median_ms']:.3f} ms {tflops:.0f} TFLOP/s", flush=True)
            del x, w, b
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write all results as JSON here")
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--skip-models", action="store_true", help="attention op only")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_torch.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    torch.manual_seed(int(time.time()))
    import transformers

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0),
        "python": platform.python_version(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }
    print(json.dumps(info), flush=True)
    rep = 10 if args.quick else 30
    out = {"info": info}
    out["attention"] = attention_bench([(1, 502), (64, 168), (8, 1026), (4, 2048)], 20, rep)
    out["gemm"] = gemm_bench(10 if args.quick else 20)

    if not args.skip_models:
        try:
            esm_and_bert(out, args)
        except Exception as err:  # keep the attention numbers even if a model part breaks
            import traceback
            traceback.print_exc()
            out["model_error"] = repr(err)

    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    # Short table last (the device tool returns the end of the output).
    print("\n== PyTorch baselines ==")
    for r in out["attention"]:
        print(f"attn {r['batch']:>3}x{r['len']:<5} sdpa {r['sdpa']['median_ms']:.4f} ms  "
              f"sdpa+mask {r['sdpa_mask']['median_ms']:.4f} ms  materialized "
              f"{r['materialized']['median_ms']:.4f} ms")
    for r in out.get("gemm", []):
        print(f"gemm {r['model']} {r['op']:<10} {r['median_ms']:.3f} ms {r['tflops']:.0f} TFLOP/s")
    for key in ("esm",):
        if key in out:
            for r in out[key]["rows"]:
                print(f"esm {r['name']:<24} {r['tokens_per_s']:>10.0f} tok/s {r['seqs_per_s']:>8.1f} seq/s")
    if "mosaic" in out:
        for r in out["mosaic"]["rows"]:
            print(f"mosaic-bert fp32 {r['name']:<10} {r['tokens_per_s']:>10.0f} tok/s "
                  f"{r['seqs_per_s']:>8.1f} seq/s")
    if "bert" in out:
        for impl_req, v in out["bert"].items():
            for r in v["rows"]:
                print(f"bert fp32 {impl_req:<6} {r['name']:<10} {r['tokens_per_s']:>10.0f} tok/s "
                      f"{r['seqs_per_s']:>8.1f} seq/s")


if __name__ == "__main__":
    main()
