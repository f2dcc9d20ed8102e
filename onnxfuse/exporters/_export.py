"""``torch.onnx.export`` with both exporters, external data, and verification."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import re
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_ir as ir
import torch

from onnxfuse import models
from onnxfuse.errors import ExportError, ParityError, UnsupportedError, UserError, first_line
from onnxfuse.exporters._config import EXPORTERS, ExportConfig, Exporter
from onnxfuse.fileio import check_output, staged_outputs
from onnxfuse.numerics import DTYPES, Comparison, DType, compare, tolerance

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

__all__ = [
    "EXPORTERS",
    "ExportConfig",
    "ExportResult",
    "Exporter",
    "VerifyShape",
    "export",
    "verify",
    "verify_shapes",
]

log = logging.getLogger(__name__)

# The second verification shape: batch 1 and an odd sequence length, to prove that the
# batch and sequence axes are really dynamic (a shape specialised at trace time fails here).
SECOND_SHAPE = (1, 37)
# A decoder with a KV cache is verified at a prefill (empty cache, the example shape), at the
# decode step after it (one token on that many cached positions) and on this
# (batch, seq, past): a chunk of several tokens on a cache of a length the trace never saw.
SECOND_PAST_SHAPE = (1, 3, 37)
# Opsets each exporter can emit (torch.onnx's own bounds).
_OPSETS: dict[Exporter, tuple[int, int]] = {"dynamo": (18, onnx.defs.onnx_opset_version()),
                                            "torchscript": (7, 20)}
# Initializers at least this large go to the external data file; the .onnx keeps the graph
# only, so Netron opens it at once and models over protobuf's 2 GB limit work.
_EXTERNAL_THRESHOLD = 1024


@dataclasses.dataclass(frozen=True)
class VerifyShape:
    """ONNX Runtime (CPU, graph optimizations disabled) vs torch eager on one input shape:
    ``seq`` new positions on a KV cache of ``past`` (0 for a model without a cache)."""

    batch: int
    seq: int
    outputs: tuple[Comparison, ...]
    past: int = 0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.outputs)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """A finished, verified export."""

    model: str
    part: models.Part
    exporter: Exporter
    dtype: DType
    onnx_path: Path
    data_path: Path | None
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    layers: int
    checks: tuple[VerifyShape, ...]
    seconds: float
    with_past: bool = False

    @property
    def verified(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def as_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["onnx_path"], d["data_path"] = str(self.onnx_path), self.data_path and str(self.data_path)
        d["verified"] = self.verified
        return d


def _validate(config: ExportConfig) -> None:
    if config.exporter not in EXPORTERS:
        raise UserError(f"unknown exporter {config.exporter!r}: choose one of {', '.join(EXPORTERS)}")
    if config.dtype not in DTYPES:
        raise UserError(f"unknown dtype {config.dtype!r}: choose one of {', '.join(DTYPES)}")
    models.check_part(config.part, config.with_past)
    if config.opset is not None:
        low, high = _OPSETS[config.exporter]
        if not low <= config.opset <= high:
            raise UserError(f"opset {config.opset} is out of range for the {config.exporter} "
                            f"exporter: choose {low}..{high}")
    for name in ("batch", "seq"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise UserError(f"--{name} must be >= 1, got {value}")
    if Path(config.output).suffix != ".onnx":
        raise UserError(f"output {config.output} must end in .onnx")


def _trace_inputs(ex: models.Exportable) -> tuple[torch.Tensor, ...]:
    # torch.export specialises a dimension of size 1 (or 0) to a constant: trace with >= 2,
    # and a past unlike batch and seq, so that no two dynamic dims are traced equal.
    batch, seq = max(ex.batch, 2), max(ex.seq, 2)
    return ex.make_inputs(batch, seq, max(batch, seq) + 1 if ex.with_past else 0)


def _dynamic_shapes(ex: models.Exportable) -> tuple[object, ...]:
    """torch.export's ``dynamic_shapes`` for ``ex.module``'s positional inputs: one ``Dim``
    per dim name of :meth:`~onnxfuse.models.Exportable.dynamic_axes`; inputs taken by a
    ``*args`` parameter (the KV cache's) nest in one tuple, as the signature does."""
    dims: dict[str, torch.export.Dim] = {}
    shapes = [{axis: dims.setdefault(dim, torch.export.Dim(dim)) for axis, dim in ex.dynamic_axes(name).items()}
              for name in ex.input_names]
    params = inspect.signature(ex.module.forward).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return tuple(shapes)
    fixed = sum(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
    return (*shapes[:fixed], tuple(shapes[fixed:]))


def _name_output_dims(model: ir.Model, ex: models.Exportable) -> None:
    """Give the outputs' dynamic dims their declared names: torch.export names them by the
    expression it derived (``past_seq + seq``, or ``seq + past_seq`` for the next output)."""
    for value in model.graph.outputs:
        if value.shape is None:
            continue
        dims = list(value.shape)
        for axis, name in ex.dynamic_axes(value.name or "").items():
            if not isinstance(dims[axis], int):
                dims[axis] = ir.SymbolicDim(name)
        value.shape = ir.Shape(dims)


def _export_dynamo(ex: models.Exportable, path: Path, opset: int | None, meta: dict[str, str]) -> None:
    program = torch.onnx.export(
        ex.module, _trace_inputs(ex), dynamo=True, input_names=list(ex.input_names),
        output_names=list(ex.output_names), dynamic_shapes=_dynamic_shapes(ex),
        opset_version=opset, verbose=False, optimize=True,
    )
    if program is None:
        raise ExportError("torch.onnx.export(dynamo=True) returned no program")
    _name_output_dims(program.model, ex)
    _save(program.model, path, meta)


def _save(model: ir.Model, path: Path, meta: dict[str, str]) -> None:
    # Where the model came from, so that parity can rebuild its inputs and its torch twin.
    model.metadata_props.update(meta)
    # onnx_ir, not onnx.save_model: onnx 1.23's save checks for an existing data file
    # relative to the current directory instead of the model's folder, and copies every
    # weight into one protobuf first.
    ir.save(model, path, external_data=path.name + ".data", size_threshold_bytes=_EXTERNAL_THRESHOLD)


def _export_torchscript(ex: models.Exportable, path: Path, opset: int | None,
                        meta: dict[str, str]) -> None:
    axes = {name: dict(ex.dynamic_axes(name)) for name in (*ex.input_names, *ex.output_names)}
    scratch = path.parent / "torchscript"
    scratch.mkdir()
    raw = scratch / path.name
    torch.onnx.export(
        ex.module, _trace_inputs(ex), os.fspath(raw), dynamo=False, input_names=list(ex.input_names),
        output_names=list(ex.output_names), dynamic_axes=axes,
        opset_version=opset or _OPSETS["torchscript"][1], do_constant_folding=True,
    )
    # The TorchScript exporter writes weights inline (or as one file per tensor past 2 GB):
    # rewrite them into the single data file every onnxfuse export has.
    _save(ir.load(raw), path, meta)
    for f in scratch.iterdir():
        f.unlink()
    scratch.rmdir()


_MISSING_KERNEL = re.compile(r"implementation for (\w+)\((\d+)\) node with name '([^']*)'")


def _session(path: Path) -> InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own pybind classes; classify by message
        text = str(e)
        missing = _MISSING_KERNEL.search(text)
        if missing:
            op, version, node = missing.groups()
            raise UnsupportedError(
                f"ONNX Runtime's CPU provider has no kernel for {op}({version}) with these types "
                f"(node {node!r}), so this export cannot be verified on CPU: export float32 or "
                "float16, or pass --no-verify to keep an export checked by onnx.checker only"
            ) from None
        raise ExportError(f"ONNX Runtime cannot load the export: {first_line(e)}") from e


def _to_ort_feed(name: str, tensor: torch.Tensor) -> object:
    import onnxruntime as ort

    if tensor.dtype == torch.bfloat16:
        bits = tensor.contiguous().view(torch.int16).numpy().view(np.uint16)
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, onnx.TensorProto.BFLOAT16)
    return ort.OrtValue.ortvalue_from_numpy(tensor.contiguous().numpy())


def _ort_outputs(session: InferenceSession, names: Sequence[str], inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    import ml_dtypes

    feed = {n: _to_ort_feed(n, t) for n, t in zip(names, inputs, strict=True)}
    outs = session.run_with_ort_values(None, feed)
    arrays = []
    for value in outs:
        if value.data_type() == "tensor(bfloat16)":
            arrays.append(value.numpy().view(np.uint16).view(ml_dtypes.bfloat16))
        else:
            arrays.append(value.numpy())
    return arrays


def _torch_outputs(ex: models.Exportable, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    with torch.no_grad():
        out = ex.module(*inputs)
    return [t.detach().to(torch.float64).numpy() for t in out]


def verify_shapes(ex: models.Exportable) -> tuple[tuple[int, int, int], ...]:
    """The ``(batch, seq, past)`` points :func:`verify` checks by default: the example shape
    and :data:`SECOND_SHAPE`; with a KV cache, the example shape as a prefill, the decode
    step after it, and :data:`SECOND_PAST_SHAPE`."""
    if ex.with_past:
        return (ex.batch, ex.seq, 0), (ex.batch, 1, ex.seq), SECOND_PAST_SHAPE
    return (ex.batch, ex.seq, 0), (*SECOND_SHAPE, 0)


def _point(batch: int, seq: int, past: int) -> str:
    return f"batch={batch} seq={seq}" + (f" past={past}" if past else "")


def verify(path: str | os.PathLike[str], ex: models.Exportable, *,
           shapes: Sequence[tuple[int, int] | tuple[int, int, int]] | None = None,
           rel_l2: float | None = None) -> tuple[VerifyShape, ...]:
    """Run the export in ONNX Runtime (CPU, graph optimizations disabled) and torch eager
    on the same inputs, at ``shapes`` (``(batch, seq)`` or ``(batch, seq, past)``; default
    :func:`verify_shapes`).

    Raises:
        UnsupportedError: ORT's CPU provider lacks a kernel the model needs.
        ExportError: ORT cannot load or run the model.
        UserError: a past length for a model without a KV cache.
    """
    limit = rel_l2 if rel_l2 is not None else tolerance(ex.dtype)
    session = _session(Path(path))
    results = []
    for batch, seq, past in ((*s, 0)[:3] for s in shapes or verify_shapes(ex)):
        log.info("verifying against torch eager on %s", _point(batch, seq, past))
        inputs = ex.make_inputs(batch, seq, past)
        try:
            got = _ort_outputs(session, ex.input_names, inputs)
        except Exception as e:
            raise ExportError(f"ONNX Runtime failed on {_point(batch, seq, past)}: "
                              f"{first_line(e)}") from e
        want = _torch_outputs(ex, inputs)
        results.append(VerifyShape(batch, seq, tuple(
            compare(name, g, w, limit=limit) for name, g, w in zip(ex.output_names, got, want, strict=True)
        ), past))
    return tuple(results)


def source_metadata(config: ExportConfig, source: models.ModelSource) -> dict[str, str]:
    """The model-level ``metadata_props`` an export carries: enough to rebuild its torch
    module and its inputs (``onnxfuse.model`` is the name or the absolute path)."""
    model = str(source.path.absolute()) if source.path is not None and source.kind != "packaged" else source.name
    return {
        "onnxfuse.model": model, "onnxfuse.part": config.part, "onnxfuse.dtype": config.dtype,
        "onnxfuse.seed": str(config.seed), "onnxfuse.mlp_layer": str(config.mlp_layer),
        "onnxfuse.exporter": config.exporter, "onnxfuse.with_past": str(config.with_past).lower(),
    }


def _opset_of(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def export(config: ExportConfig) -> ExportResult:
    """Export, check and verify a model; publish ``config.output`` only if every check passes.

    Raises:
        UserError: bad config, model or output path (a subclass names which).
        UnsupportedError: ORT's CPU provider cannot run this dtype for verification.
        ParityError: ORT and torch disagree beyond the tolerance.
        ExportError: the exporter or ORT failed.
    """
    start = time.perf_counter()
    _validate(config)
    out = check_output(config.output, force=config.force)
    source = models.resolve(config.model)
    log.info("building %s (%s, %s)", source.name, config.part, config.dtype)
    ex = models.build(source, part=config.part, dtype=config.dtype, seed=config.seed,
                      mlp_layer=config.mlp_layer, batch=config.batch, seq=config.seq,
                      with_past=config.with_past)
    with staged_outputs(out) as stage:
        staged = stage / out.name
        log.info("exporting %s with the %s exporter", ex.name, config.exporter)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                meta = source_metadata(config, source)
                if config.exporter == "dynamo":
                    _export_dynamo(ex, staged, config.opset, meta)
                else:
                    _export_torchscript(ex, staged, config.opset, meta)
        except (UserError, ExportError):
            raise
        except Exception as e:
            first = first_line(e)
            raise ExportError(f"the {config.exporter} exporter failed on {ex.name}: {first}") from e
        log.info("checking with onnx.checker (full check)")
        try:
            onnx.checker.check_model(os.fspath(staged), full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportError(f"the export of {ex.name} fails onnx.checker: {first_line(e)}") from e
        header = onnx.load(os.fspath(staged), load_external_data=False)
        checks: tuple[VerifyShape, ...] = ()
        if config.verify:
            checks = verify(staged, ex, rel_l2=config.rel_l2)
            failed = [f"{_point(c.batch, c.seq, c.past)} {o.name}: {o.detail}"
                      for c in checks for o in c.outputs if not o.passed]
            if failed:
                raise ParityError(f"{ex.name} export disagrees with torch: " + " | ".join(failed))
        data = out.with_name(out.name + ".data")
        has_data = (stage / data.name).exists()
    if not has_data and data.exists() and config.force:
        data.unlink()  # a replaced export's stale weights
    return ExportResult(
        model=ex.name, part=config.part, exporter=config.exporter, dtype=config.dtype,
        onnx_path=out, data_path=data if has_data else None, opset=_opset_of(header),
        input_names=tuple(i.name for i in header.graph.input),
        output_names=tuple(o.name for o in header.graph.output), layers=ex.layers,
        checks=checks, seconds=time.perf_counter() - start, with_past=config.with_past,
    )


