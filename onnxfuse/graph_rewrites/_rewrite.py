"""``rewrite(config)``: load a model file, run the fusion (or unfusion) pass, save the model,
write the JSON report. The passes themselves (:mod:`._pass`) neither read nor write files."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import onnx
import onnx_ir as ir

from onnxfuse.errors import InvalidModelError, RewriteError, first_line
from onnxfuse.fileio import check_output, staged_outputs, write_report
from onnxfuse.graph_rewrites._config import RewriteConfig
from onnxfuse.graph_rewrites._family import FusedNode, NearMiss
from onnxfuse.graph_rewrites._pass import FusePass, FuseResult, UnfusePass, UnfuseResult
from onnxfuse.modelfile import read_model_notes

__all__ = ["RewriteConfig", "RewriteResult", "rewrite"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RewriteResult:
    input: Path
    output: Path
    fused: tuple[FusedNode, ...]
    skipped: tuple[NearMiss, ...]
    unfused: int
    seconds: float
    # Input checks skipped, and why: ONNX Runtime's own ops, which onnx.checker has no schema for.
    checks_skipped: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "input": str(self.input), "output": str(self.output), "fused": len(self.fused),
            "nodes": [n.as_dict() for n in self.fused],
            "skipped": [s.as_dict() for s in self.skipped], "unfused": self.unfused,
            "seconds": round(self.seconds, 3), "checks_skipped": list(self.checks_skipped),
        }


def _typed_data_tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    """The tensors stored in a typed field rather than raw data (small, from hand-written or
    old models: exporters write raw data), initializers and attributes, functions included."""
    tensors = [v.const_value for v in model.graph.initializers.values()]
    owners: tuple[ir.Graph | ir.Function, ...] = (model.graph, *model.functions.values())
    for owner in owners:
        for node in ir.traversal.RecursiveGraphIterator(owner):
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR:
                    tensors.append(attr.value)
                elif attr.type == ir.AttributeType.TENSORS:
                    tensors += attr.value
    for t in tensors:
        if isinstance(t, ir.serde.TensorProtoTensor) and not t.raw.HasField("raw_data") \
                and t.raw.data_location != onnx.TensorProto.EXTERNAL:
            yield t


def _load(path: Path) -> tuple[ir.Model, list[str]]:
    """The model at ``path`` and the input checks skipped (see :func:`read_model_notes`)."""
    # The checked proto itself is deserialized (not the file read again, as ir.load would):
    # what was checked is what is rewritten.
    proto, notes = read_model_notes(path)
    try:
        model = ir.serde.deserialize_model(proto)
        for tensor in _typed_data_tensors(model):
            # onnx_ir reshapes typed data (float_data, int32_data, ...) only when it converts
            # it, in the matcher or at save; onnx.checker finds it too short, not too long.
            tensor.numpy()
    except Exception as e:
        reason: BaseException = e
        while reason.__cause__ is not None:  # onnx_ir wraps the reason in "Error calling ..."
            reason = reason.__cause__
        first = first_line(reason)
        raise InvalidModelError(f"cannot read {path} as an ONNX model: {first}") from None
    ir.external_data.set_base_dir(model.graph, path.parent)
    return model, notes


def rewrite(config: RewriteConfig) -> RewriteResult:
    """Fuse (or, with ``unfuse``, inline back) the gated MLPs of a model file.

    Raises:
        UserError: missing or unreadable input, or an output that cannot be written.
        RewriteError: the rewritten model could not be saved.
    """
    start = time.perf_counter()
    src = Path(config.input).expanduser().absolute()
    out = check_output(config.output, force=config.force, inputs=[src])
    report = check_output(config.report, force=config.force, inputs=[src, out]) if config.report else None
    model, notes = _load(src)
    fused: tuple[FusedNode, ...] = ()
    skipped: tuple[NearMiss, ...] = ()
    unfused = 0
    if config.unfuse:
        unfused = cast(UnfuseResult, UnfusePass()(model)).unfused
        log.info("inlined %d fused node(s)", unfused)
    else:
        fuse = cast(FuseResult, FusePass()(model))
        fused, skipped = fuse.fused, fuse.skipped
        log.info("fused %d gated MLP(s); %d near miss(es) left unfused", len(fused), len(skipped))
    with staged_outputs(out) as stage:
        try:
            ir.save(model, stage / out.name, external_data=out.name + ".data")
        except Exception as e:
            raise RewriteError(f"cannot save the rewritten model: {e}") from e
    result = RewriteResult(src, out, fused, skipped, unfused, time.perf_counter() - start, tuple(notes))
    if report is not None:
        write_report(report, result.as_dict())
    return result
