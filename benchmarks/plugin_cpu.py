"""CPU: the unfused graph vs the fused graph with the plugin's CPU default (function body)
and with its opt-in native kernel, interleaved in one process (tidy JSON rows).

    python benchmarks/plugin_cpu.py ORIGINAL.onnx FUSED.onnx [--batch 2 --seq 1024]
           [--threads 1] [--repeat 7] [--json benchmarks/results/plugin-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("original", type=Path)
    parser.add_argument("fused", type=Path)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import onnxruntime as ort

    from onnxfuse.kernels import ort as plugin
    from onnxfuse.pipeline import sessions

    def opts(**kw: object) -> ort.SessionOptions:
        so = plugin.session_options(**kw) if kw else ort.SessionOptions()  # type: ignore[arg-type]
        so.intra_op_num_threads = args.threads
        return so

    feeds, _ = sessions.make_inputs(sessions.model_info(args.original), args.batch, args.seq)
    cases = {
        "unfused": sessions.session(args.original, optimize=True, options=opts()),
        "plugin cpu default (function body)": sessions.session(args.fused, optimize=True, options=opts(cpu_kernel="off")),
        "plugin native kernel (opt-in)": sessions.session(args.fused, optimize=True, options=opts(cpu_kernel="matmul")),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(args.warmup + args.repeat):
        for name, sess in cases.items():
            t = time.perf_counter()
            sess.run(None, feeds)
            if r >= args.warmup:
                times[name].append((time.perf_counter() - t) * 1e3)
    base = statistics.median(times["unfused"])
    rows = [{"case": k, "model": args.original.name, "batch": args.batch, "seq": args.seq,
             "threads": args.threads, "median_ms": statistics.median(v), "min_ms": min(v), "max_ms": max(v),
             "ratio_vs_unfused": base / statistics.median(v),  # speed: > 1 is faster
             "time_vs_unfused": statistics.median(v) / base,  # the measure: <= 1.0 wanted
             "repeat": args.repeat,
             "machine": platform.machine(), "onnxruntime": ort.__version__} for k, v in times.items()]
    for row in rows:
        print(f"{row['case']:<38s} {row['median_ms']:9.1f} ms  time {row['time_vs_unfused']:.3f}x unfused's")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
