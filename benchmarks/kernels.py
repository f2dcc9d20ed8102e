"""Benchmark the fused gated-MLP Triton kernels against torch eager (cuBLAS + elementwise)
and torch.compile, on the notebook's shape and Llama-7B's, prefill and decode.

    python benchmarks/kernels.py [--json benchmarks/results/kernels-<gpu>.json] [--quick]

Rows are tidy: one per (shape, dtype, implementation) with the median and p20/p80 in ms over
warm runs with the L2 flushed (triton.testing.do_bench), TFLOP/s, GB/s, the percent of the
roofline and the speedup over eager. Implementations: ``triton`` (autotuned, the default on a
GPU; the tuning runs before timing), ``triton-fixed`` (each class's first candidate config),
``eager`` and ``compile``; for decode shapes also ``triton-graph`` and ``eager-graph``, timed
replaying a CUDA graph (no launch overhead; no L2 flush, which the 270 MB of Llama-7B weights
make moot). The roofline's ceilings are measured in the same run (an
8192³ GEMM per dtype, a 1 GiB device-to-device copy); the datasheet's, where the GPU is
known, give a second percentage. The last lines check the issue's acceptance points.
Without a GPU it says so and runs one small interpreter smoke case.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

SHAPES = [  # (label, n tokens, d, d_ff)
    ("notebook", 2048, 1024, 11008),
    ("llama7b-n1", 1, 4096, 11008),
    ("llama7b-n16", 16, 4096, 11008),
    ("llama7b-n2048", 2048, 4096, 11008),
]
DRY_RUN_SHAPES = [("dry-prefill", 80, 32, 48), ("dry-n1", 1, 32, 48)]
DTYPES = ("bfloat16", "float16", "tf32")
IMPLS = ("triton", "triton-fixed", "eager", "compile")
# Decode shapes (n <= 64) are also timed replaying a CUDA graph (launch overhead removed, as
# serving engines run decode): impls "triton-graph" and "eager-graph".
GRAPH_MAX_TOKENS = 64
# Dense tensor-core TFLOP/s (bf16/fp16, tf32) and memory GB/s from NVIDIA's datasheets, by a
# substring of torch.cuda.get_device_name().
DATASHEETS = {
    "H100 80GB HBM3": (989.4, 494.7, 3350.0),   # H100 SXM
    "H100 PCIe": (756.0, 378.0, 2000.0),
    "H100 NVL": (835.0, 417.5, 3900.0),
    "H200": (989.4, 494.7, 4800.0),
    "A100-SXM4-80GB": (312.0, 156.0, 2039.0),
    "A100-SXM4-40GB": (312.0, 156.0, 1555.0),
    "A100 80GB PCIe": (312.0, 156.0, 1935.0),
}
# The acceptance points: (shape, dtype, metric, threshold).
ACCEPTANCE = [
    ("notebook", "bfloat16", "speedup_vs_eager", 1.3),
    ("notebook", "bfloat16", "pct_roofline", 65.0),
    ("notebook", "tf32", "speedup_vs_eager", 1.3),
    ("llama7b-n1", "bfloat16", "pct_bandwidth", 75.0),  # on the CUDA-graph timing
]
_ACCEPTANCE_IMPL = {"pct_bandwidth": "triton-graph"}


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


def datasheet(gpu: str) -> dict[str, float] | None:
    """Datasheet ceilings of a GPU by name: TFLOP/s per dtype and GB/s; None if unknown."""
    for name, (half, tf32, gbps) in DATASHEETS.items():
        if name in gpu:
            return {"bfloat16": half, "float16": half, "tf32": tf32, "gbps": gbps}
    return None


def metrics(n: int, d: int, d_ff: int, dtype: str, ms: float, peak_tflops: float, peak_gbps: float,
            sheet: dict[str, float] | None = None) -> dict[str, float | None]:
    """Throughput and roofline figures of one timing. FLOPs: 3 GEMMs of 2·n·d·d_ff. Bytes:
    the three weights, X and Y once, the intermediate written and read once (what the fused
    op must move). ``pct_roofline`` is the roofline time (max of compute and memory time at
    the ceilings) over the measured time; ``pct_bandwidth`` is the achieved fraction of the
    memory ceiling (the decode point)."""
    elt = 4 if dtype == "tf32" else 2
    flops = 6 * n * d * d_ff
    nbytes = elt * (3 * d * d_ff + 2 * n * d + 2 * n * d_ff)
    floor_ms = max(flops / (peak_tflops * 1e9), nbytes / (peak_gbps * 1e6))
    row: dict[str, float | None] = dict(
        tflops=flops / ms / 1e9, gbps=nbytes / ms / 1e6, pct_roofline=100 * floor_ms / ms,
        pct_bandwidth=100 * nbytes / ms / 1e6 / peak_gbps, pct_roofline_datasheet=None,
        pct_bandwidth_datasheet=None)
    if sheet is not None:
        floor = max(flops / (sheet[dtype] * 1e9), nbytes / (sheet["gbps"] * 1e6))
        row["pct_roofline_datasheet"] = 100 * floor / ms
        row["pct_bandwidth_datasheet"] = 100 * nbytes / ms / 1e6 / sheet["gbps"]
    return row


def acceptance(rows: list[dict[str, Any]]) -> list[tuple[str, float | None, float, bool]]:
    """(point, measured, threshold, passed) for each acceptance point, from the ``triton`` rows
    (for the decode bandwidth, ``triton-graph``: the kernels' time without launch overhead)."""
    out = []
    for shape, dtype, metric, threshold in ACCEPTANCE:
        impl = _ACCEPTANCE_IMPL.get(metric, "triton")
        found = [r[metric] for r in rows if (r["shape"], r["dtype"], r["impl"]) == (shape, dtype, impl)]
        value = found[0] if found else None
        out.append((f"{shape} {dtype} {metric} ({impl})", value, threshold,
                    value is not None and value >= threshold))
    return out


def _ceilings(torch: Any) -> tuple[dict[str, float], float]:
    import triton.testing as tt

    tflops = {}
    for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16), ("tf32", torch.float32)):
        torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
        a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
        tflops[name] = 2 * 8192**3 / tt.do_bench(lambda a=a: a @ a, return_mode="median") / 1e9
        del a
    buf = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(buf)
    gbps = 2 * buf.numel() / tt.do_bench(lambda: dst.copy_(buf), return_mode="median") / 1e6
    return tflops, gbps


_HEADER = (f"{'shape':<15}{'dtype':<10}{'impl':<14}{'ms':>9}{'TFLOP/s':>9}{'GB/s':>8}{'%roof':>7}"
           f"{'%bw':>6}{'x eager':>8}")


def _limit(dtype: str) -> float:
    """rel L2 of the fused op vs float64 above which a row is flagged (DESIGN.md's table)."""
    from onnxfuse.numerics import tolerance

    return tolerance("float32", "tf32") if dtype == "tf32" else tolerance(dtype)  # type: ignore[arg-type]


def _line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['shape']:<15}{r['dtype']:<10}{r['impl']:<14} FAILED: {r['error']}"
    speedup = r.get("speedup_vs_eager")
    line = (f"{r['shape']:<15}{r['dtype']:<10}{r['impl']:<14}{r['median_ms']:>9.4f}{r['tflops']:>9.1f}"
            f"{r['gbps']:>8.0f}{r['pct_roofline']:>7.1f}{r['pct_bandwidth']:>6.1f}"
            f"{'-' if speedup is None else f'{speedup:.2f}':>8}")
    err = r.get("rel_l2_vs_float64")
    if err is not None and err > _limit(r["dtype"]):
        line += f"  FAIL: rel L2 {err:.2e} > {_limit(r['dtype']):.0e}"
    return line


def _bench(shapes: list[tuple[str, int, int, int]], dtypes: tuple[str, ...] = DTYPES, *,
           dry_run: bool = False, report: Any = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Time every implementation on every shape and dtype, printing each row as it is
    measured and calling ``report(rows, meta)`` after each shape and dtype (so a run cut
    short keeps what it measured). A failing implementation becomes a row with ``error``.
    ``dry_run``: the same code on CPU under the interpreter with wall-clock timings and
    made-up ceilings, to test this script."""
    import torch
    import triton

    from onnxfuse.kernels.triton import tuning
    from onnxfuse.kernels.triton.gated_mlp import fused_gated_mlp
    from onnxfuse.kernels.triton.reference import fused_gated_mlp_reference

    if dry_run:
        device, gpu = "cpu", "cpu (dry run)"
        bench = graph_bench = tuning.wall_quantiles
        peak_tflops, peak_gbps = {name: 1.0 for name in DTYPES}, 10.0

        def compile_fn(f: Any) -> Any:
            return f
    else:
        import triton.testing as tt

        device, gpu = "cuda", torch.cuda.get_device_name()
        bench, graph_bench = tt.do_bench, functools.partial(tt.do_bench_cudagraph, rep=100)
        peak_tflops, peak_gbps = _ceilings(torch)

        def compile_fn(f: Any) -> Any:
            # A fresh dynamo per shape: every closure shares one code object, so its
            # recompile limit (8) would silently leave later shapes uncompiled.
            torch._dynamo.reset()
            return torch.compile(f, dynamic=False)
    sheet = datasheet(gpu)
    meta = dict(gpu=gpu, torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
                measured_peak_tflops=peak_tflops, measured_peak_gbps=peak_gbps, datasheet=sheet,
                dry_run=dry_run)
    print(f"{gpu}: measured ceilings {peak_tflops} TFLOP/s, {peak_gbps:.0f} GB/s\n{_HEADER}", flush=True)
    rows: list[dict[str, Any]] = []
    for label, n, d, d_ff in shapes:
        for dtype_name in dtypes:
            dtype = torch.float32 if dtype_name == "tf32" else getattr(torch, dtype_name)
            torch.backends.cuda.matmul.allow_tf32 = dtype_name == "tf32"
            precision = "tf32" if dtype_name == "tf32" and not dry_run else "ieee"
            x = torch.randn(n, d, device=device).to(dtype)
            ws = [(torch.randn(s, device=device) * s[0] ** -0.5).to(dtype) for s in ((d, d_ff), (d, d_ff), (d_ff, d))]

            def eager(x: torch.Tensor = x, ws: list[torch.Tensor] = ws) -> torch.Tensor:
                return (torch.nn.functional.silu(x @ ws[0]) * (x @ ws[1])) @ ws[2]

            impls = {
                "triton": lambda x=x, ws=ws, p=precision: fused_gated_mlp(x, *ws, precision=p, autotune=True),
                "triton-fixed": lambda x=x, ws=ws, p=precision: fused_gated_mlp(x, *ws, precision=p, autotune=False),
                "eager": eager, "compile": compile_fn(eager),
            }
            before = set(tuning.tuner().timings)
            ref = fused_gated_mlp_reference(x, *ws, compute_dtype=torch.float64)
            errors: dict[str, float | str] = {}
            for impl in ("triton", "triton-fixed"):  # the first call tunes
                try:
                    errors[impl] = ((impls[impl]().double() - ref).norm() / ref.norm()).item()
                except Exception as e:  # recorded in the row; the run goes on
                    errors[impl] = f"{type(e).__name__}: {e}"
            del ref
            tuned = {key: tuning.tuner().timings[key] for key in set(tuning.tuner().timings) - before}
            chosen = {key.stage: tuning.tuner().choice(key) for key in tuned}
            timings = {impl: (fn, bench) for impl, fn in impls.items()}
            if n <= GRAPH_MAX_TOKENS:  # tuned above: nothing is timed inside the capture
                timings["triton-graph"] = (impls["triton"], graph_bench)
                timings["eager-graph"] = (eager, graph_bench)
            medians: dict[str, float] = {}
            for impl, (fn, timer) in timings.items():
                row: dict[str, Any] = dict(shape=label, n=n, d=d, d_ff=d_ff, dtype=dtype_name, impl=impl)
                err = errors.get(impl.removesuffix("-graph"))
                if isinstance(err, str):
                    row["error"] = err
                else:
                    try:
                        p20, p50, p80 = timer(fn, quantiles=[0.2, 0.5, 0.8])
                    except Exception as e:  # recorded in the row; the run goes on
                        row["error"] = f"{type(e).__name__}: {e}"
                    else:
                        medians[impl] = p50
                        row.update(median_ms=p50, p20_ms=p20, p80_ms=p80,
                                   **metrics(n, d, d_ff, dtype_name, p50, peak_tflops[dtype_name], peak_gbps, sheet),
                                   rel_l2_vs_float64=err)
                if impl in ("triton", "triton-graph"):
                    row["configs"] = chosen
                    row["tuning_ms"] = {key.stage: timed for key, timed in tuned.items()}
                rows.append(row)
            for row in rows[-len(timings):]:
                base = medians.get("eager-graph" if row["impl"].endswith("-graph") else "eager")
                if "median_ms" in row:
                    row["speedup_vs_eager"] = base / row["median_ms"] if base else None
                print(_line(row), flush=True)
            if report is not None:
                report(rows, meta)
    return rows, meta


def _write(path: Path | None, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    if path is None:
        return
    from onnxfuse import fileio

    with fileio.staged_outputs(path) as stage:
        (stage / path.name).write_text(json.dumps(dict(meta, rows=rows, acceptance=acceptance(rows)), indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="write the rows here (rewritten after each shape)")
    parser.add_argument("--quick", action="store_true",
                        help="the acceptance points only: notebook n=2048 and Llama-7B n=1, bf16 and TF32")
    parser.add_argument("--dry-run", action="store_true",
                        help="test this script on CPU: tiny shapes, interpreter, wall clock, made-up ceilings")
    args = parser.parse_args()
    if args.dry_run:  # the interpreter is chosen before anything imports Triton
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
        _write(args.json, rows, meta)

    if args.dry_run:
        rows, meta = _bench(DRY_RUN_SHAPES, dry_run=True, report=report)
    elif not torch.cuda.is_available():
        return _smoke()
    elif args.quick:
        rows, meta = _bench(SHAPES[:2], ("bfloat16", "tf32"), report=report)
    else:
        rows, meta = _bench(SHAPES, report=report)
    for point, value, threshold, passed in acceptance(rows):
        shown = "not measured" if value is None else f"{value:.2f}"
        print(f"acceptance: {point} = {shown} (>= {threshold}): {'PASS' if passed else 'FAIL'}")
    _write(args.json, rows, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
