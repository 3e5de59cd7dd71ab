#!/usr/bin/env python3
"""A DNABERT-style tokenizer.json whose tokens are DNA 4-mers, for benchmarks only.

The real DNABERT-S tokenizer (a 4096-token BPE trained on genomes) cannot be downloaded here, and
the oracle's tiny tokenizer cuts a 500-bp frame into ~178 tokens (the real one: ~110), which
overstates DNABERT's share of an end-to-end benchmark. This one cuts a sequence into 4-base
pieces (a regex pre-tokenizer, a word-level vocabulary of all 1- to 4-mers), so a frame of n bases
becomes ceil(n / 4) tokens + [CLS] + [SEP] (127 for a 499-bp frame), with ids below DNABERT-S's
vocabulary size (4096).

Usage: python3 scripts/kmer_tokenizer.py TEMPLATE_DIR OUT_DIR
  TEMPLATE_DIR: a DNABERT directory whose tokenizer.json gives the special tokens and
  post-processor (e.g. tests/data/oracle/dnabert); its other files are copied as they are.
"""
import itertools
import json
import os
import shutil
import sys


def main():
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name != "tokenizer.json" and os.path.isfile(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), os.path.join(dst, name))
    tok = json.load(open(os.path.join(src, "tokenizer.json")))
    vocab = {t["content"]: t["id"] for t in tok["added_tokens"]}
    for k in range(1, 5):
        for kmer in itertools.product("ACGT", repeat=k):
            vocab.setdefault("".join(kmer), len(vocab))
    assert len(vocab) <= 4096, len(vocab)
    tok["normalizer"] = None
    tok["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": ".{1,4}"},
                            "behavior": "Isolated", "invert": False}
    tok["model"] = {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    json.dump(tok, open(os.path.join(dst, "tokenizer.json"), "w"))
    print(f"{dst}/tokenizer.json: {len(vocab)} tokens (1- to 4-mers and the special tokens)")


if __name__ == "__main__":
    main()
