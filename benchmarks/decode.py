"""Greedy generation with a KV cache, end to end, and decode speed side by side.

    python benchmarks/decode.py [--model smollm2] [--tokens 32] [--repeat 8] [--out DIR]
                                [--json benchmarks/results/decode-smollm2-cpu.json]

Exports MODEL with ``--with-past`` (cached in DIR), fuses it, then: (1) ``onnxfuse generate``
of the fused and the unfused model and transformers' greedy ``generate`` (same prompt, exactly
TOKENS new tokens) must give the same tokens; (2) ``onnxfuse bench --decode TOKENS`` times
original, fused and torch eager (each with its cache) in paired rounds. One JSON row: the
tokens of each, the decode tokens/s of each case, and the fused/unfused speedup with its 95%
interval. Exit 1 if the tokens differ.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

PROMPT = "The capital of France is"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("out/decode"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    import onnxfuse
    from onnxfuse import models
    from onnxfuse.pipeline import sessions
    from onnxfuse.pipeline.generate import find_tokenizer

    args.out.mkdir(parents=True, exist_ok=True)
    src = args.out / f"{args.model}-past.onnx"
    fused = args.out / f"{args.model}-past-fused.onnx"
    if not src.exists():
        onnxfuse.export(args.model, src, with_past=True)
    rewrite = onnxfuse.fuse(src, fused, force=True)
    tok = find_tokenizer(src, sessions.model_info(src))
    if tok is None:
        print(f"{args.model} has no tokenizer", file=sys.stderr)
        return 2
    ids = tuple(tok.encode(PROMPT))
    runs = {name: onnxfuse.generate(path, ids=ids, max_new_tokens=args.tokens, stop_at_eos=False)
            for name, path in (("unfused", src), ("fused", fused))}
    ex = models.build(args.model, with_past=True)
    with torch.no_grad():
        out = ex.module.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                                       max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)
    torch_tokens = [int(t) for t in out[0, len(ids):]]
    bench = onnxfuse.bench(src, fused, decode=args.tokens, seq=len(ids), batch=1, repeat=args.repeat,
                           warmup=2, force=True)
    interval = bench.intervals["default"]
    row = {
        "model": args.model, "prompt": PROMPT, "tokens": args.tokens, "fused_nodes": len(rewrite.fused),
        "onnx_fused_tokens": list(runs["fused"].tokens), "onnx_unfused_tokens": list(runs["unfused"].tokens),
        "torch_tokens": torch_tokens, "text": runs["fused"].text,
        "identical": list(runs["fused"].tokens) == list(runs["unfused"].tokens) == torch_tokens,
        "decode_tokens_per_s": {c["name"]: c["decode_tokens_per_s"] for c in bench.cases},
        "speedup_fused_vs_unfused": interval.value, "speedup_ci95": [interval.low, interval.high],
        "noisy": interval.noisy, "rounds": interval.rounds,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "onnxfuse_version": onnxfuse.__version__,
    }
    text = json.dumps(row, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0 if row["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
