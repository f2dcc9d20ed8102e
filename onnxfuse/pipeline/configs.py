"""The pipeline's stage configs (parity, bench, demo) and how a config field becomes a
command-line option.

Each option is declared once, on its field: the default and, for a ``Literal`` type, the
choices are the field's own; :class:`Option` (the field's ``metadata["cli"]``) adds the help
text, the flag and how to parse it. The CLI builds its arguments from these fields and the
config from the parsed values, and the Python API takes the same fields as keywords.

Light on purpose (no numpy, onnx or torch): ``onnxfuse parity --help`` reads this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, TypeGuard, get_args

from onnxfuse.errors import UserError

__all__ = [
    "BACKENDS",
    "DEVICES",
    "Backend",
    "BenchConfig",
    "DemoConfig",
    "Device",
    "GenerateConfig",
    "Option",
    "ParityConfig",
    "cli",
    "parse_backends",
    "parse_ceiling",
    "parse_ids",
    "positive_int",
]

Device = Literal["cpu", "cuda"]
DEVICES: tuple[Device, ...] = get_args(Device)
# How a fused graph's nodes run: plain ORT (function bodies), the plugin's default kernel,
# the plugin's triton bridge.
Backend = Literal["none", "default", "triton"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)

_BACKEND_HELP = ("default (the plugin's default kernel; on CPU, ORT's own kernels through the "
                 "function body, see docs/kernels.md), triton (the plugin's Triton kernels; on "
                 "CPU, the Triton interpreter: small shapes only, slow) or none (plain ORT, no "
                 "plugin)")
# Parity runs a kernel, never the function body under the default (which IS the original
# nodes: comparing it with the original proves nothing): see onnxfuse.pipeline.parity.
_PARITY_BACKEND_HELP = ("default (the plugin's kernel: on CPU its exact native kernel, ORT's MatMul "
                        "invoked by the plugin, not bench's default of function bodies; on CUDA the "
                        "Triton kernel), triton (the plugin's Triton kernels; on CPU, the Triton "
                        "interpreter: small shapes only, slow) or none (plain ORT, no plugin: the "
                        "function bodies, i.e. the original nodes; checks the rewritten graph, not a "
                        "kernel). The report names what ran the fused nodes, with the plugin's "
                        "count of kernel runs")
_DEVICE_HELP = "ORT execution provider (cuda needs onnxruntime-gpu and a GPU)"


@dataclasses.dataclass(frozen=True)
class Option:
    """How one config field appears on the command line.

    The flag is ``--field-name`` (``--no-field-name`` for a bool that defaults to true)
    unless ``flags`` names it; the default and the choices of a ``Literal`` are the field's.

    Attributes:
        help: the help text; ``--help`` appends the default unless the text states it.
        flags: the option strings, e.g. ``("-o", "--output")``; ``()``: derived.
        positional: a positional argument (named after the field) instead of a flag.
        metavar: the value's name in ``--help``.
        parse: text → value, raising ``ValueError`` whose message names the fix; default:
            the field's type (``int``, ``float``, ``str``, ``Path``).
        repeat: the flag may repeat; ``parse`` gives ``(key, value)`` pairs, gathered into a
            dict.
    """

    help: str
    flags: tuple[str, ...] = ()
    positional: bool = False
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    repeat: bool = False


def cli(**option: Any) -> dict[str, Option]:
    """A field's metadata declaring its command line: ``dataclasses.field(default=...,
    metadata=cli(help=...))``; the arguments are :class:`Option`'s."""
    return {"cli": Option(**option)}


def positive_int(text: str) -> int:
    """``text`` as an int of at least 1."""
    value = int(text)
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def _is_backend(name: str) -> TypeGuard[Backend]:
    return name in BACKENDS


def parse_backends(text: str) -> tuple[Backend, ...]:
    """A comma-separated list of :data:`BACKENDS`, or ``all``."""
    if text == "all":
        return BACKENDS
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",")))
    backends = tuple(n for n in names if _is_backend(n))
    unknown = [n for n in names if not _is_backend(n)]
    if unknown or not names:
        raise ValueError(f"unknown backend {', '.join(map(repr, unknown)) or repr(text)}: choose from "
                         f"{', '.join(BACKENDS)} or all")
    return backends


def parse_ceiling(text: str) -> tuple[str, float]:
    """``OUTPUT=CEILING`` (e.g. ``logits=1e-4``) as a pair."""
    name, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise ValueError(f"expected OUTPUT=CEILING, e.g. logits=1e-4, got {text!r}") from None


def parse_ids(text: str) -> tuple[int, ...]:
    """Comma-separated token ids, e.g. ``1,2,3``."""
    try:
        ids = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise ValueError(f"expected token ids like 1,2,3, got {text!r}") from None
    if any(i < 0 for i in ids):
        raise ValueError(f"token ids are >= 0, got {text!r}")
    return ids


def _check_choices(what: str, values: tuple[str, ...], choices: tuple[str, ...]) -> None:
    unknown = [v for v in values if v not in choices]
    if unknown or not values:
        raise UserError(f"unknown {what} {', '.join(map(repr, unknown)) or 'list ()'}: choose from "
                        f"{', '.join(choices)}")


def _check_at_least(low: int, **values: int) -> None:
    for name, value in values.items():
        if value < low:
            raise UserError(f"{name} must be >= {low}, got {value}")


@dataclasses.dataclass(frozen=True)
class ParityConfig:
    """Compare ``original`` and ``fused`` on two input shapes: ``batch`` × ``seq``, then
    always 1 × 37 (the exporters' second shape).

    Attributes:
        device: ORT's execution provider, ``cpu`` or ``cuda``.
        backend: how the fused graph's nodes run (:data:`BACKENDS`); ``default`` runs the
            plugin's kernel (on CPU its native ``matmul`` kernel, see
            :data:`onnxfuse.pipeline.parity.CPU_KERNEL`), ``none`` the function bodies.
        batch, seq: the first shape.
        seed: seeds the inputs of models that do not record their source.
        rel_l2: per-output ceilings overriding the tolerance table.
        report: where to write the JSON report.
        per_node: compare every fused node's output even when the outputs pass (on the
            first shape); on a failure this always happens.
        force: replace an existing report.
    """

    original: Path = field(metadata=cli(positional=True, metavar="ORIGINAL.onnx", help="the unfused model"))
    fused: Path = field(metadata=cli(positional=True, metavar="FUSED.onnx", help="the fused model"))
    device: Device = field(default="cpu", metadata=cli(help=_DEVICE_HELP))
    backend: Backend = field(default="default", metadata=cli(help=f"how the fused nodes run: {_PARITY_BACKEND_HELP}"))
    batch: int = field(default=2, metadata=cli(parse=positive_int, help="first shape's batch"))
    seq: int = field(default=16, metadata=cli(parse=positive_int, help="first shape's sequence length"))
    seed: int = field(default=0, metadata=cli(help="seeds the inputs"))
    rel_l2: Mapping[str, float] = field(default_factory=dict, metadata=cli(
        repeat=True, parse=parse_ceiling, metavar="OUTPUT=X",
        help="override one output's ceiling (repeatable; default: the tolerance table)"))
    report: Path | None = field(default=None, metadata=cli(flags=("--json",), metavar="REPORT.json",
                                                           help="write the JSON report"))
    per_node: bool = False
    force: bool = field(default=False, metadata=cli(help="replace an existing --json report"))

    def __post_init__(self) -> None:
        """Raises: UserError: an unknown device or backend, a shape below 1 (API callers
        skip the CLI's checks)."""
        _check_choices("device", (self.device,), DEVICES)
        _check_choices("backend", (self.backend,), BACKENDS)
        _check_at_least(1, batch=self.batch, seq=self.seq)

@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Time ``original`` and ``fused`` (and torch eager, where the source is known).

    Sessions use ORT's default graph optimizations (what a user runs), without thread
    spinning; ``repeat`` rounds each run every case once, the order reversed every other
    round, after ``warmup`` rounds that also calibrate the calls per sample. The speedup is
    paired per round, with a 95% interval (onnxfuse.pipeline.bench). ``backends`` are the fused
    graph's (:data:`BACKENDS`), each its own case ``fused[BACKEND]``; ``speedup`` is the
    first one's.
    """

    original: Path = field(metadata=cli(positional=True, metavar="ORIGINAL.onnx", help="the unfused model"))
    fused: Path = field(metadata=cli(positional=True, metavar="FUSED.onnx", help="the fused model"))
    device: Device = field(default="cpu", metadata=cli(help=_DEVICE_HELP))
    batch: int = field(default=2, metadata=cli(parse=positive_int, help="batch of the inputs"))
    seq: int = field(default=16, metadata=cli(parse=positive_int, help="sequence length of the inputs"))
    warmup: int = field(default=3, metadata=cli(help="untimed rounds first"))
    repeat: int = field(default=20, metadata=cli(parse=positive_int, help="timed rounds (each gives one "
                                                                          "paired ratio for the interval)"))
    threads: int = field(default=0, metadata=cli(help="intra-op threads (default: 0, ORT's choice)"))
    torch: bool = field(default=True, metadata=cli(help="skip torch eager"))
    force: bool = field(default=False, metadata=cli(help="replace an existing --json report"))
    report: Path | None = field(default=None, metadata=cli(flags=("--json",), metavar="REPORT.json",
                                                           help="write the JSON report"))
    backends: tuple[Backend, ...] = field(default=("default",), metadata=cli(
        flags=("--backend",), parse=parse_backends, metavar="LIST",
        help=f"the fused graph's backends to time: several, comma-separated, each its own case, "
             f"or all; {_BACKEND_HELP}"))
    decode: int = field(default=0, metadata=cli(metavar="N", help=(
        "time greedy generation of N tokens with the KV cache (decoders exported --with-past) after "
        "a --seq-token prompt: milliseconds per decode step and tokens/s per case (torch eager with "
        "its own cache); 0: one forward pass")))

    def __post_init__(self) -> None:
        """Raises: UserError: an unknown device, no or an unknown backend, a count out of
        range (API callers skip the CLI's checks)."""
        _check_choices("device", (self.device,), DEVICES)
        _check_choices("backend", self.backends, BACKENDS)
        _check_at_least(1, batch=self.batch, seq=self.seq, repeat=self.repeat)
        _check_at_least(0, warmup=self.warmup, threads=self.threads, decode=self.decode)
        if self.decode == 1:
            raise UserError("--decode 1 has no decode step to time (the first token comes from the prompt): "
                            "use 2 or more")


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """Greedy generation with a decoder's KV cache (onnxfuse.pipeline.generate): ``prompt``
    through the model's tokenizer, or ``ids``; ``max_new_tokens`` new tokens, fewer when the
    tokenizer's end-of-sequence token comes (unless ``stop_at_eos`` is false)."""

    model: Path = field(metadata=cli(positional=True, metavar="MODEL.onnx|GENAI_FOLDER", help=(
        "a decoder with a KV cache (`export --with-past`, genai's or optimum's names), or an "
        "onnxruntime-genai model folder")))
    prompt: str | None = field(default=None, metadata=cli(metavar="TEXT", help=(
        "the prompt, through the tokenizer beside the model (tokenizer.json) or of its recorded "
        "checkpoint")))
    ids: tuple[int, ...] | None = field(default=None, metadata=cli(
        parse=parse_ids, metavar="1,2,3", help="the prompt as token ids (no tokenizer needed)"))
    max_new_tokens: int = field(default=32, metadata=cli(parse=positive_int, metavar="N",
                                                         help="how many tokens to generate"))
    stop_at_eos: bool = field(default=True, metadata=cli(
        help="keep generating past the tokenizer's end-of-sequence token"))
    device: Device = field(default="cpu", metadata=cli(help=_DEVICE_HELP))
    backend: Backend = field(default="default", metadata=cli(help=f"how the fused nodes run: {_BACKEND_HELP}"))
    report: Path | None = field(default=None, metadata=cli(flags=("--json",), metavar="REPORT.json",
                                                           help="write the JSON report (tokens, tokens/s)"))
    force: bool = field(default=False, metadata=cli(help="replace an existing --json report"))

    def __post_init__(self) -> None:
        """Raises: UserError: an unknown device or backend, a count below 1, both a prompt
        and ids (API callers skip the CLI's checks)."""
        _check_choices("device", (self.device,), DEVICES)
        _check_choices("backend", (self.backend,), BACKENDS)
        _check_at_least(1, max_new_tokens=self.max_new_tokens)
        if self.prompt is not None and self.ids is not None:
            raise UserError("pass --prompt or --ids, not both")


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Demo settings: the model, the output folder, and the generation length."""

    model: str = field(default="seed", metadata=cli(help="model name, folder or .gguf file"))
    out: Path = field(default=Path("out/demo"), metadata=cli(
        metavar="DIR", help="output folder (its previous demo files are replaced)"))
    generate_tokens: int = 32
    bench_repeat: int = 5
