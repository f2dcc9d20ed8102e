"""Benchmark the fused gated-MLP Triton kernels against torch eager (cuBLAS + elementwise)
and torch.compile, on the notebook's shape and Llama-7B's, prefill and decode.

    python benchmarks/kernels.py [--json benchmarks/results/kernels-<gpu>.json] [--quick]

Rows are tidy: one per (shape, dtype, implementation) with the median and p20/p80 in ms over
warm runs with the L2 flushed (triton.testing.do_bench), TFLOP/s, GB/s, the percent of the
measured roofline (a large cuBLAS GEMM and a device-to-device copy give the two ceilings), and
the speedup over eager. Without a GPU it says so and runs one small interpreter smoke case.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

SHAPES = [  # (label, n tokens, d, d_ff)
    ("notebook", 2048, 1024, 11008),
    ("llama7b-n1", 1, 4096, 11008),
    ("llama7b-n16", 16, 4096, 11008),
    ("llama7b-n2048", 2048, 4096, 11008),
]
DTYPES = ("bfloat16", "float16", "tf32")


def _smoke() -> int:
    os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from onnxfuse.kernels import fused_gated_mlp, fused_gated_mlp_reference
    from onnxfuse.numerics import compare

    x, wg, wu, wd = torch.randn(2, 5, 24), torch.randn(24, 40), torch.randn(24, 40), torch.randn(40, 24)
    y = fused_gated_mlp(x, wg, wu, wd, precision="ieee")
    c = compare("y", y.numpy(), fused_gated_mlp_reference(x, wg, wu, wd, compute_dtype=torch.float64).numpy(), limit=1e-5)
    print(f"no CUDA GPU: no timings. Interpreter smoke case [2, 5, 24] x d_ff 40: rel L2 {c.rel_l2:.2e} "
          f"({'ok' if c.passed else 'FAIL'})")
    return 0 if c.passed else 1


def _ceilings(torch) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    import triton.testing as tt

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = tt.do_bench(lambda: a @ a, return_mode="median")
    tflops = 2 * 8192**3 / ms / 1e9
    buf = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(buf)
    ms = tt.do_bench(lambda: dst.copy_(buf), return_mode="median")
    gbps = 2 * buf.numel() / ms / 1e6
    return tflops, gbps


def _bench(quick: bool) -> list[dict[str, object]]:
    import torch
    import triton
    import triton.testing as tt

    from onnxfuse.kernels import fused_gated_mlp
    from onnxfuse.kernels.reference import fused_gated_mlp_reference

    peak_tflops, peak_gbps = _ceilings(torch)
    rows = []
    for label, n, d, d_ff in SHAPES[:2] if quick else SHAPES:
        for dtype_name in DTYPES:
            dtype = torch.float32 if dtype_name == "tf32" else getattr(torch, dtype_name)
            torch.backends.cuda.matmul.allow_tf32 = dtype_name == "tf32"
            x = torch.randn(n, d, device="cuda", dtype=dtype)
            ws = [torch.randn(s, device="cuda", dtype=dtype) * s[0] ** -0.5 for s in ((d, d_ff), (d, d_ff), (d_ff, d))]

            def eager(x: torch.Tensor = x, ws: list[torch.Tensor] = ws) -> torch.Tensor:
                return (torch.nn.functional.silu(x @ ws[0]) * (x @ ws[1])) @ ws[2]

            def fused(x: torch.Tensor = x, ws: list[torch.Tensor] = ws) -> torch.Tensor:
                return fused_gated_mlp(x, *ws)

            impls = {"triton": fused, "eager": eager, "compile": torch.compile(eager)}
            ref = fused_gated_mlp_reference(x, *ws, compute_dtype=torch.float64)
            err = ((impls["triton"]().double() - ref).norm() / ref.norm()).item()
            elt = x.element_size()
            flops = 6 * n * d * d_ff
            nbytes = elt * (3 * d * d_ff + 2 * n * d + 2 * n * d_ff)
            floor_ms = max(flops / (peak_tflops * 1e9), nbytes / (peak_gbps * 1e6))
            medians = {}
            for impl, fn in impls.items():
                p20, p50, p80 = tt.do_bench(fn, quantiles=[0.2, 0.5, 0.8])
                medians[impl] = p50
                rows.append(dict(shape=label, n=n, d=d, d_ff=d_ff, dtype=dtype_name, impl=impl,
                                 median_ms=p50, p20_ms=p20, p80_ms=p80,
                                 tflops=flops / p50 / 1e9, gbps=nbytes / p50 / 1e6,
                                 pct_roofline=100 * floor_ms / p50, rel_l2_triton=err))
            for row in rows[-3:]:
                row["speedup_vs_eager"] = medians["eager"] / row["median_ms"]  # type: ignore[operator]
    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                peak_tflops_bf16=peak_tflops, peak_gbps=peak_gbps, python=platform.python_version())
    return [dict(row, **meta) for row in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="the first two shapes only")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        return _smoke()
    rows = _bench(args.quick)
    print(f"{'shape':<15}{'dtype':<10}{'impl':<9}{'ms':>9}{'TFLOP/s':>9}{'GB/s':>8}{'%roof':>7}{'x eager':>8}")
    for r in rows:
        print(f"{r['shape']:<15}{r['dtype']:<10}{r['impl']:<9}{r['median_ms']:>9.3f}{r['tflops']:>9.1f}"
              f"{r['gbps']:>8.0f}{r['pct_roofline']:>7.1f}{r['speedup_vs_eager']:>8.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
