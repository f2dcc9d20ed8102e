"""A model over 2 GiB through `onnxfuse export`, `rewrite` and `parity`, with external data.

    python benchmarks/large_model.py [--model wide-2g] [--dir DIR]
                                     [--json benchmarks/results/large-model-cpu.json]

Each step is the CLI in a fresh process, as a user runs it; its wall time and peak RSS
(``wait4``'s ``ru_maxrss`` of that process) are measured from outside. Linux carries the
parent's high-water mark (its ``VmHWM``) into a child spawned with vfork (a ``/bin/true``
child of a parent that had freed 768 MiB reported 794 MiB), so this process stays small: the
Gemm model is built in a process of its own, and each row records this process's ``VmHWM``
beside the step's peak. Every rewrite must
stay under 1.5 × the model's largest tensor + 512 MiB (issue 7: weights are never copied).
Two models: the ``wide-2g`` export, whose projections are MatMuls, and a Gemm-form gated MLP
of the same width built here (2-D input, ``Gemm(transB=1)`` projections, the form whose
fusion stores transposed weights). Writes one tidy row per step; exits 1 if a step fails or
a rewrite breaks its bound. Needs about 6 GB of disk in DIR (a temporary folder unless
given) and, for export and parity, about 3× the weights in RAM (benchmarks/NOTES.md).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

MIB = 2**20
# Issue 7's bound on the rewrite's peak RSS: 1.5 × the largest tensor + 512 MiB.
BOUND_FACTOR, BOUND_SLACK_MIB = 1.5, 512
# The Gemm-form MLP: Llama-3-8B's MLP width, three 224 MiB weights.
GEMM_D, GEMM_D_FF = 4096, 14336


def _run_step(args: list[str]) -> tuple[int, float, float, str, str]:
    """Run ``onnxfuse ARGS`` in a fresh process: exit code, seconds, peak RSS (MiB), output."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "onnxfuse.pipeline.cli", *args],
                                stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return proc.returncode, seconds, usage.ru_maxrss / 1024, out.read(), err.read()


def _own_peak_mib() -> float:
    """This process's own RSS high-water mark (``VmHWM``): what a child inherits. Not
    ``getrusage(RUSAGE_SELF)``, which also holds the mark this process inherited."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def largest_tensor(path: Path) -> tuple[str, int]:
    """The name and byte size of the largest initializer, read from the graph file only."""
    header = onnx.load(os.fspath(path), load_external_data=False)
    sizes = {t.name: onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize * int(np.prod(t.dims))
             for t in header.graph.initializer}
    name = max(sizes, key=sizes.__getitem__)
    return name, sizes[name]


def gemm_mlp(path: Path, d: int = GEMM_D, d_ff: int = GEMM_D_FF, seed: int = 0) -> None:
    """Write a Gemm-form SiLU-gated MLP, ``y = Gemm(silu(Gemm(x, Wg)) * Gemm(x, Wu), Wd)``
    with ``transB=1`` and seeded weights of scale 0.02, to ``path`` + ``.data``."""
    rng = np.random.default_rng(seed)
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["n", d]))
    nodes: list[ir.Node] = []
    weights: list[ir.Value] = []

    def weight(name: str, shape: tuple[int, int]) -> ir.Value:
        data = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        value = ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(shape),
                         const_value=ir.tensor(data, name=name))
        weights.append(value)
        return value

    def node(op: str, inputs: list[ir.Value], *attributes: ir.Attr) -> ir.Value:
        nodes.append(ir.Node("", op, inputs, attributes, num_outputs=1))
        return nodes[-1].outputs[0]

    trans_b = ir.AttrInt64("transB", 1)
    gate = node("Gemm", [x, weight("w_gate", (d_ff, d))], trans_b)
    up = node("Gemm", [x, weight("w_up", (d_ff, d))], trans_b)
    silu = node("Mul", [gate, node("Sigmoid", [gate])])
    y = node("Gemm", [node("Mul", [silu, up]), weight("w_down", (d, d_ff))], trans_b)
    y.name = "y"
    y.type, y.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape(["n", d])
    graph = ir.Graph([x], [y], nodes=nodes, initializers=weights, opset_imports={"": 18},
                     name="gemm_mlp")  # read_model refuses a graph without a name
    ir.save(ir.Model(graph, ir_version=10), path, external_data=path.name + ".data")


def _export_figures(stdout: str) -> list[dict[str, object]]:
    rows = re.findall(r"batch=(\d+)\s+seq=(\d+)\s+(\S+)\s+rel_l2=(\S+)\s+max_abs=(\S+)", stdout)
    return [{"name": f"{name}@{b}x{s} vs torch", "rel_l2": float(rel), "max_abs": float(mx)}
            for b, s, name, rel, mx in rows]


def _versions() -> dict[str, str]:
    return {d: importlib.metadata.version(d) for d in ("torch", "onnx", "onnxruntime", "onnx-ir")}


def _model_row(path: Path) -> dict[str, object]:
    name, size = largest_tensor(path)
    data = path.with_name(path.name + ".data")
    return {"weights_mib": round(data.stat().st_size / MIB, 1), "largest_tensor": name,
            "largest_tensor_mib": round(size / MIB, 1)}


def run(model: str, folder: Path) -> tuple[list[dict[str, object]], bool]:
    """Export, rewrite and check parity of ``model``, then rewrite and check the Gemm-form
    MLP, in ``folder``: the rows, and whether every step passed within its bound."""
    common = {"case": "large-model", "machine": platform.machine(), "cpus": os.cpu_count(),
              "python": platform.python_version(), **_versions()}
    gemm = folder / "gemm-mlp.onnx"
    cases = {model: folder / f"{model}.onnx", "gemm-mlp": gemm}
    rows: list[dict[str, object]] = []
    for name, original in cases.items():
        fused = original.with_name(f"{original.stem}-fused.onnx")
        steps = {
            "rewrite": ["rewrite", str(original), "-o", str(fused), "--json",
                        str(folder / f"{name}-rewrite.json"), "--force", "-q"],
            "parity": ["parity", str(original), str(fused), "--json",
                       str(folder / f"{name}-parity.json"), "--force", "-q"],
        }
        if name == model:
            steps = {"export": ["export", "--model", model, "-o", str(original), "--force", "-q"], **steps}
        else:
            start = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--gemm-mlp", str(gemm)], check=True)
            print(f"built {gemm.name} in {time.perf_counter() - start:.1f}s", file=sys.stderr)
        info: dict[str, object] = {}
        for step, args in steps.items():
            code, seconds, rss, stdout, stderr = _run_step(args)
            print(f"{name} {step}: exit {code} in {seconds:.1f}s, peak RSS {rss:.0f} MiB", file=sys.stderr)
            if not info and original.exists():  # after the export, if there is one
                info = _model_row(original)
            row: dict[str, object] = {
                **common, "model": name, "step": step, **info, "exit_code": code,
                "seconds": round(seconds, 2), "peak_rss_mib": round(rss, 1),
                "parent_peak_rss_mib": round(_own_peak_mib(), 1)}
            rows.append(row)
            if code != 0:
                row["stderr"] = stderr.strip().splitlines()[-1:]
                return rows, False
            if step == "export":
                row["figures"] = _export_figures(stdout)
            elif step == "rewrite":
                bound = BOUND_FACTOR * float(info["largest_tensor_mib"]) + BOUND_SLACK_MIB  # type: ignore[arg-type]
                report = json.loads((folder / f"{name}-rewrite.json").read_text())
                row.update(fused=report["fused"], bound_mib=bound, within_bound=rss < bound)
                if not (rss < bound and report["fused"] > 0):
                    return rows, False
            else:
                report = json.loads((folder / f"{name}-parity.json").read_text())
                row.update(passed=report["passed"], figures=[
                    {k: c[k] for k in ("name", "rel_l2", "max_abs", "cosine")}
                    for c in (*report["outputs"], *report["torch"])])
                if not report["passed"]:
                    return rows, False
    return rows, True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="wide-2g", help="model name (default: wide-2g)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the models go, kept (default: a temporary folder, removed)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    parser.add_argument("--gemm-mlp", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gemm_mlp is not None:  # the builder's own process (see the module docstring)
        gemm_mlp(args.gemm_mlp)
        return 0
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        rows, ok = run(args.model, args.dir)
    else:
        with tempfile.TemporaryDirectory(prefix="onnxfuse-large-") as tmp:
            rows, ok = run(args.model, Path(tmp))
    text = json.dumps(rows, indent=2) + "\n"
    print(text, end="")
    if args.json:
        args.json.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
