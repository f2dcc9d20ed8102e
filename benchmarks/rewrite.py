"""Time the rewrite of an exported model and report its peak RSS (tidy JSON row).

    python benchmarks/rewrite.py MODEL.onnx [--repeat 5] [--json benchmarks/results/rewrite.json]

Each repeat runs in a fresh process (peak RSS is per process); the row carries the median
wall time of load + fuse + save as measured inside the process, and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, resource, sys, time
from pathlib import Path
from onnxfuse.graph_rewrites import RewriteConfig, rewrite
start = time.perf_counter()
result = rewrite(RewriteConfig(Path(sys.argv[1]), Path(sys.argv[2]), force=True))
print(json.dumps({"seconds": time.perf_counter() - start, "fused": len(result.fused),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            out = subprocess.run([sys.executable, "-c", _CHILD, str(args.model), str(Path(tmp) / "f.onnx")],
                                 check=True, capture_output=True, text=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    data = Path(f"{args.model}.data")
    row = {
        "case": "rewrite", "model": args.model.name, "fused": runs[0]["fused"],
        "median_s": statistics.median(r["seconds"] for r in runs),
        "min_s": min(r["seconds"] for r in runs), "max_s": max(r["seconds"] for r in runs),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "weights_mib": data.stat().st_size / 2**20 if data.exists() else None,
        "repeat": args.repeat, "machine": platform.machine(), "cpus": __import__("os").cpu_count(),
        "python": platform.python_version(),
    }
    print(json.dumps(row, indent=2))
    if args.json:
        args.json.write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
