"""``onnxfuse demo``: the main job end to end on one model, with a report.

build → export (full model and isolated MLP) → rewrite → parity (original vs fused vs torch,
the fused nodes on the plugin's native CPU kernel, counted) → the Triton kernel on the fused
MLP's own weights (interpreter on CPU) → bench (the plugin's CPU default) → report
(``report.json``, ``report.html``, PNGs) in ``OUT``. With a real checkpoint (``smollm2``),
also greedy generation from the fused ONNX model in ORT against torch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from onnxfuse import ops
from onnxfuse.errors import OnnxfuseError, UnsupportedError
from onnxfuse.exporters import ExportConfig, export
from onnxfuse.fileio import staged_file, write_report
from onnxfuse.graph_rewrites import RewriteConfig, rewrite
from onnxfuse.numerics import compare, tolerance
from onnxfuse.pipeline import report as report_mod
from onnxfuse.pipeline import sessions
from onnxfuse.pipeline.bench import bench
from onnxfuse.pipeline.configs import Backend, BenchConfig, DemoConfig, ParityConfig
from onnxfuse.pipeline.parity import CPU_KERNEL, ParityResult, parity

__all__ = ["DemoConfig", "DemoResult", "greedy_generation", "run_demo"]

log = logging.getLogger(__name__)
_TRITON_TOKENS = 4  # the interpreter runs ~20 ms per program: keep the Triton check small


@dataclasses.dataclass(frozen=True)
class DemoResult:
    out: Path
    passed: bool
    summary: tuple[dict[str, Any], ...]


def _step(summary: list[dict[str, Any]], step: str, result: str, ok: bool) -> None:
    summary.append({"step": step, "result": result, "ok": bool(ok)})
    log.info("%s: %s%s", step, result, "" if ok else "  [FAIL]")


def _triton_check(mlp: Path, fused: Path) -> dict[str, Any]:
    """Run the fused MLP in ORT with the plugin's triton backend (ORT → plugin → Python bridge →
    Triton kernel on ORT's own buffers) against the original graph, at a small token count."""
    from onnxfuse.kernels import interpreting
    from onnxfuse.kernels.ort import bridge

    factory = sessions.plugin_options("triton", "cpu")
    impl = sessions.implementation("triton", "cpu")
    info = sessions.model_info(mlp)
    feeds, _ = sessions.make_inputs(info, 1, _TRITON_TOKENS)
    (want,) = sessions.session(mlp).run(None, feeds)
    sess = sessions.session(fused, options=factory() if factory else None)
    before = bridge.calls()
    start = time.perf_counter()
    (got,) = sess.run(None, feeds)
    seconds = time.perf_counter() - start
    c = compare("ORT + triton backend vs original", got, want, limit=tolerance("float32"))
    launches = bridge.calls() - before
    return {"tokens": _TRITON_TOKENS, "rel_l2": c.rel_l2, "passed": c.passed and launches == len(sessions.model_info(fused).fused_nodes),
            "seconds": seconds, "kernel_calls": launches, "implementation": impl.name,
            "mode": "interpreter" if interpreting() else "compiled"}


def greedy_generation(model: str, fused: Path, tokens: int = 32,
                      prompt: str = "The capital of France is") -> dict[str, Any]:
    """Greedy tokens from the fused ONNX model in ORT vs the torch model (no KV cache):
    ``{"prompt", "onnx_tokens", "torch_tokens", "identical", "text"}``."""
    import torch

    from onnxfuse import models
    from onnxfuse.pipeline.generate import checkpoint_tokenizer

    tok = checkpoint_tokenizer(model)
    if tok is None:
        raise UnsupportedError("generation needs a real checkpoint with a tokenizer")
    ex = models.build(model)
    ids = tok(prompt, return_tensors="pt").input_ids
    sess = sessions.session(fused)
    onnx_ids, torch_ids = ids.clone(), ids.clone()
    for _ in range(tokens):
        mask = np.ones(onnx_ids.shape, dtype=np.float32)
        (logits,) = sess.run(None, {"input_ids": onnx_ids.numpy(), "attention_mask": mask})
        onnx_ids = torch.cat([onnx_ids, torch.tensor([[int(logits[0, -1].argmax())]])], dim=1)
        with torch.no_grad():
            (t_logits,) = ex.module(torch_ids, torch.ones(torch_ids.shape))
        torch_ids = torch.cat([torch_ids, t_logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    new_onnx = onnx_ids[0, ids.shape[1]:].tolist()
    new_torch = torch_ids[0, ids.shape[1]:].tolist()
    return {"prompt": prompt, "onnx_tokens": new_onnx, "torch_tokens": new_torch,
            "identical": new_onnx == new_torch, "text": tok.decode(new_onnx)}


def run_demo(config: DemoConfig) -> DemoResult:
    """Run the demo; ``config.out`` gets the models and the report (earlier demo files in it
    are replaced)."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(config.model).stem if config.model.endswith(".gguf") else Path(config.model).name
    summary: list[dict[str, Any]] = []
    data: dict[str, Any] = {"model": config.model, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                            f"Python {platform.python_version()}"}
    start = time.perf_counter()
    from onnxfuse.kernels import ort as plugin

    backend: Backend
    try:
        plugin.library_path()
        backend = "default"
    except UnsupportedError as e:
        backend = "none"
        _step(summary, "plugin", f"not available, fused graphs run their function bodies: {e}", True)
    data["backend"] = backend
    paths = {}
    for part in ("full", "mlp"):
        onnx_path = out / f"{stem}-{part}.onnx"
        r = export(ExportConfig(model=config.model, output=onnx_path, part=part, force=True))
        worst = max(o.rel_l2 for c in r.checks for o in c.outputs)
        _step(summary, f"export {part}", f"{onnx_path.name}: rel L2 vs torch {worst:.2e} on 2 shapes", r.verified)
        fused = out / f"{stem}-{part}-fused.onnx"
        rw = rewrite(RewriteConfig(onnx_path, fused, report=out / f"rewrite-{part}.json", force=True))
        _step(summary, f"rewrite {part}", f"{len(rw.fused)} {ops.FUSED_GATED_MLP.op_type} of {r.layers if part == 'full' else 1} "
              f"layer(s), {len(rw.skipped)} near miss(es), {rw.seconds:.2f}s", len(rw.fused) == (r.layers if part == "full" else 1))
        paths[part] = (onnx_path, fused)
        p = parity(ParityConfig(onnx_path, fused, backend=backend, report=out / f"parity-{part}.json",
                                per_node=True, force=True))
        _annotate_parity(fused, p)
        worst_p = max(c.rel_l2 for c in p.outputs)
        worst_t = max((c.rel_l2 for c in p.torch), default=float("nan"))
        _step(summary, f"parity {part}", f"fused [{_ran(p)}] vs original rel L2 {worst_p:.2e}; vs torch "
              f"{worst_t:.2e}", p.passed)
        data[f"export_{part}"] = r.as_dict()
        data[f"rewrite_{part}"] = rw.as_dict()
        data[f"parity_{part}"] = p.as_dict()
    if backend == "default":
        tri = _triton_check(*paths["mlp"])
        _step(summary, "triton backend", f"ORT → plugin → {tri['implementation']}, {tri['tokens']} tokens, "
              f"{tri['kernel_calls']} kernel call(s), rel L2 vs original {tri['rel_l2']:.2e}", tri["passed"])
        data["triton"] = tri
    b = bench(BenchConfig(*paths["mlp"], batch=2, seq=1024 if config.model == "seed" else 64,
                          repeat=config.bench_repeat, warmup=2, backends=(backend,), force=True))
    _step(summary, "bench mlp", f"fused [{backend}] / unfused speedup {b.speedup:.3f}", True)
    data["bench_mlp"] = b.as_dict()
    if config.model == "smollm2" or Path(config.model).suffix == ".gguf":
        g = greedy_generation(config.model, paths["full"][1], config.generate_tokens)
        _step(summary, "generation", f"{len(g['onnx_tokens'])} greedy tokens, identical to torch: {g['identical']}: "
              f"{g['text']!r}", g["identical"])
        data["generation"] = g
    images = _images(out, paths, b, summary, backend)
    data["summary"] = summary
    data["seconds"] = time.perf_counter() - start
    write_report(out / "report.json", data)
    report_mod.write_html(data, images, out / "report.html")
    _print_summary(summary, out, data["seconds"])
    return DemoResult(out, all(s["ok"] for s in summary), tuple(summary))


def _ran(result: ParityResult) -> str:
    """What ran the fused nodes, with the plugin's count of kernel runs."""
    runs = result.kernel_runs
    return result.implementation + (f", {runs.counted} kernel runs counted" if runs else "")


def _annotate_parity(fused: Path, result: Any) -> None:
    """Write each fused node's parity figures into its metadata_props, so Netron shows them
    beside the rule and the replaced nodes. Only the graph file changes (atomically); the
    weights file is untouched."""
    import onnx

    figures = {c.name: c for c in result.nodes}
    model = onnx.load(os.fspath(fused), load_external_data=False)
    for node in model.graph.node:
        c = figures.get(node.name)
        if c is None:
            continue
        for key, value in (("onnxfuse.parity.rel_l2", f"{c.rel_l2:.3e}"),
                           ("onnxfuse.parity.max_abs", f"{c.max_abs:.3e}"),
                           ("onnxfuse.parity.passed", str(c.passed).lower())):
            existing = next((p for p in node.metadata_props if p.key == key), None)
            if existing is None:
                existing = node.metadata_props.add()
                existing.key = key
            existing.value = value
    with staged_file(fused) as tmp:
        onnx.save(model, os.fspath(tmp))


def _images(out: Path, paths: dict[str, tuple[Path, Path]], b: Any, summary: list[dict[str, Any]],
            backend: str) -> dict[str, str]:
    images: dict[str, str] = {}
    diffs = {}
    # The fused graph as parity ran it: its function bodies would give a histogram of zeros.
    factory = sessions.plugin_options(backend, "cpu", cpu_kernel=CPU_KERNEL)
    impl = sessions.implementation(backend, "cpu", CPU_KERNEL)
    for part, (original, fused) in paths.items():
        info = sessions.model_info(original)
        feeds, _ = sessions.make_inputs(info, 1, 37)
        (a,) = sessions.session(original).run(None, feeds)[:1]
        (f,) = sessions.session(fused, options=factory() if factory else None).run(None, feeds)[:1]
        diffs[f"{part} ({info.outputs[0]})"] = f.astype(np.float64) - a.astype(np.float64)
    report_mod.error_histogram(diffs, out / "errors.png")
    images[f"Error histogram: fused ({impl.name}) vs original graph (batch 1 × seq 37)"] = "errors.png"
    report_mod.timing_bars(b.cases, out / "timing.png", "Isolated MLP: unfused vs fused vs torch eager")
    images["Timing of the isolated MLP (median with p20–p80)"] = "timing.png"
    from onnxfuse.pipeline.view import snapshot

    for label, path, name in (("before", paths["mlp"][0], "graph-before.png"), ("after", paths["mlp"][1], "graph-after.png")):
        try:
            snapshot(path, out / name, width=1100, height=900,
                     expect=ops.FUSED_GATED_MLP.op_type if label == "after" else "MatMul")
            images[f"Netron: the isolated MLP {label} the rewrite"] = name
        except OnnxfuseError as e:
            _step(summary, f"snapshot {label}", f"skipped: {e}", True)
    return images


def _print_summary(summary: list[dict[str, Any]], out: Path, seconds: float) -> None:
    width = min(shutil.get_terminal_size((110, 20)).columns, 140)
    step_w = max(len(s["step"]) for s in summary)
    lines = [f"{s['step']:<{step_w}}  {'ok  ' if s['ok'] else 'FAIL'}  {s['result']}"[:width] for s in summary]
    rule = "-" * min(width, max(len(line) for line in lines))
    print(rule, *lines, rule, f"report: {out / 'report.html'} ({seconds:.0f}s)", sep="\n")  # noqa: T201
