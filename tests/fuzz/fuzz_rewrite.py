"""Fuzz ``onnxfuse rewrite``: model bytes in, a rewritten model or a ``UserError`` out.

The target is the code path of the CLI: ``graph_rewrites.rewrite`` loads the file, fuses,
and saves the model, its weights and the JSON report into a fresh folder. The property: it
succeeds (and rewriting what it wrote succeeds and fuses nothing more), or it raises an
:class:`onnxfuse.errors.UserError` subclass. Any other exception, a hang past ``-timeout`` or memory past ``-rss_limit_mb`` is
a crash.

An input's first byte picks the mode:

- ``0``: the rest is the model file, as is. The seed corpus holds valid models (unfused,
  fused, near misses) in this mode, so libFuzzer's byte mutations start from real protobufs.
- ``1``: structure-aware. The rest drives :class:`atheris.FuzzedDataProvider`: it picks a
  seed model, applies one to six protobuf-level mutations (op types, domains, inputs and
  outputs, cycles, attributes, tensor dims, types and data, external-data entries, opsets,
  functions, subgraphs, graph inputs and outputs, value_info) and may write a companion
  ``weights.data`` for external data in the same folder.

Run it standalone, for as long as you like (libFuzzer flags; the corpus folder keeps what
it learnt between runs, crash inputs go to ``-artifact_prefix``)::

    python tests/fuzz/fuzz_rewrite.py -max_total_time=600 .fuzz/corpus

``tests/fuzz/test_fuzz.py`` runs it for 60 s in ``make test``.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import atheris

# One core is enough for tiny models, and the fuzzer must not take the other one (set before
# numpy is imported, below).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: the repository's tests package and onnxfuse
    sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["onnxfuse", "onnx_ir"]):
    import onnx
    import onnx_ir as ir
    from onnx import TensorProto, helper

    from onnxfuse.errors import UserError
    from onnxfuse.graph_rewrites import RewriteConfig, fuse_model, rewrite

DATA_FILE = "weights.data"

# ------------------------------------------------------------------------------ seeds


def seeds() -> list[tuple[bytes, bytes | None]]:
    """Small valid models (and, for external data, their weights file): unfused forms, a
    near miss, float16, Gemm, a fused model with its function, external data."""
    from tests.graph_rewrites.graphs import gated_mlp

    def neg_of_gate(b, v):  # type: ignore[no-untyped-def]
        return [helper.make_tensor_value_info(b.op("Neg", [v["gate"]]), TensorProto.FLOAT, None)]

    protos = [
        gated_mlp(),
        gated_mlp(form="gelu_tanh_dec", opset=18, biased=True, layers=2),
        gated_mlp(form="silu_rev", product_order="up_first", weights="transpose"),
        gated_mlp(form="gelu", weights="constant", dtype=TensorProto.FLOAT16),
        gated_mlp(form="silu", gemm_alpha=1.0, biased=True),
        gated_mlp(form="swish", opset=24, mutate=neg_of_gate),
    ]
    fused = ir.from_proto(gated_mlp(form="silu", biased=True, layers=2))
    fuse_model(fused)
    protos.append(ir.to_proto(fused))
    out: list[tuple[bytes, bytes | None]] = [(p.SerializeToString(), None) for p in protos]
    external = gated_mlp(layers=2)
    data = bytearray()
    for tensor in external.graph.initializer:
        raw = tensor.raw_data
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", DATA_FILE), ("offset", str(len(data))), ("length", str(len(raw)))):
            tensor.external_data.add(key=key, value=value)
        data += raw
    out.append((external.SerializeToString(), bytes(data)))
    return out


# ------------------------------------------------------------------------------ mutations

Fdp = atheris.FuzzedDataProvider
OP_TYPES = ["MatMul", "Gemm", "Mul", "Add", "Sigmoid", "Swish", "Gelu", "Erf", "Tanh", "Pow",
            "Div", "Transpose", "Constant", "Identity", "Reshape", "Cast", "Split", "If",
            "FusedGatedMLP", "QuickGelu", ""]
DOMAINS = ["", "ai.onnx", "onnxfuse", "com.microsoft", "custom"]
ATTRIBUTES = ["perm", "alpha", "beta", "transA", "transB", "approximate", "activation", "value",
              "axis", "to", "then_branch"]
INTS = [0, 1, 2, -1, 3, 8, 12, 2**31, -(2**31), 2**62]


def _pick(fdp: Fdp, items: list):  # type: ignore[no-untyped-def, type-arg]
    return items[fdp.ConsumeIntInRange(0, len(items) - 1)] if items else None


def _text(fdp: Fdp) -> str:
    return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12))


def _int(fdp: Fdp) -> int:
    return _pick(fdp, INTS) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(-4, 64)


def _graphs(model: onnx.ModelProto) -> list:  # type: ignore[type-arg]
    """The main graph, the functions, and every subgraph: whatever holds nodes."""
    found: list = [model.graph, *model.functions]  # type: ignore[type-arg]
    for holder in list(found):
        for node in holder.node:
            found += [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
    return found


def _values(model: onnx.ModelProto) -> list[str]:
    g = model.graph
    return ([v.name for v in g.input] + [t.name for t in g.initializer]
            + [o for n in g.node for o in n.output])


def _tensors(model: onnx.ModelProto) -> list[TensorProto]:
    found = list(model.graph.initializer)
    for holder in _graphs(model):
        found += [a.t for n in holder.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    return found


def m_node_op(model: onnx.ModelProto, fdp: Fdp) -> None:
    node = _pick(fdp, list(_pick(fdp, _graphs(model)).node))
    if node is not None:
        node.op_type = _pick(fdp, OP_TYPES) if fdp.ConsumeBool() else _text(fdp)
        if fdp.ConsumeBool():
            node.domain = _pick(fdp, DOMAINS)


def m_node_io(model: onnx.ModelProto, fdp: Fdp) -> None:
    """Rewire an input (a cycle, a missing name, an empty optional) or an output."""
    holder = _pick(fdp, _graphs(model))
    node = _pick(fdp, list(holder.node))
    if node is None:
        return
    names = [*_values(model), "", "missing", *(o for n in holder.node for o in n.output)]
    ports = node.input if fdp.ConsumeBool() or not node.output else node.output
    choice = fdp.ConsumeIntInRange(0, 3)
    if choice == 0 and ports:
        ports[fdp.ConsumeIntInRange(0, len(ports) - 1)] = _pick(fdp, names)
    elif choice == 1:
        ports.append(_pick(fdp, names))
    elif choice == 2 and ports:
        del ports[fdp.ConsumeIntInRange(0, len(ports) - 1)]
    else:
        ports[:] = list(reversed(ports))


def m_nodes(model: onnx.ModelProto, fdp: Fdp) -> None:
    """Delete, duplicate or swap nodes (order matters: swapping breaks topological order)."""
    holder = _pick(fdp, _graphs(model))
    n = len(holder.node)
    if n == 0:
        return
    i, j = fdp.ConsumeIntInRange(0, n - 1), fdp.ConsumeIntInRange(0, n - 1)
    choice = fdp.ConsumeIntInRange(0, 2)
    if choice == 0:
        del holder.node[i]
    elif choice == 1:
        holder.node.add().CopyFrom(holder.node[i])
    else:
        a, b = onnx.NodeProto(), onnx.NodeProto()
        a.CopyFrom(holder.node[i])
        b.CopyFrom(holder.node[j])
        holder.node[i].CopyFrom(b)
        holder.node[j].CopyFrom(a)


def m_attribute(model: onnx.ModelProto, fdp: Fdp) -> None:
    node = _pick(fdp, list(_pick(fdp, _graphs(model)).node))
    if node is None:
        return
    if node.attribute and fdp.ConsumeBool():
        del node.attribute[fdp.ConsumeIntInRange(0, len(node.attribute) - 1)]
        return
    name = _pick(fdp, ATTRIBUTES)
    kind = fdp.ConsumeIntInRange(0, 6)
    if kind == 0:
        attr = helper.make_attribute(name, _int(fdp))
    elif kind == 1:
        attr = helper.make_attribute(name, fdp.ConsumeFloat())
    elif kind == 2:
        attr = helper.make_attribute(name, _pick(fdp, ["silu", "gelu", "tanh", "none", "x"]))
    elif kind == 3:
        attr = helper.make_attribute(name, [_int(fdp) for _ in range(fdp.ConsumeIntInRange(0, 4))],
                                     attr_type=onnx.AttributeProto.INTS)
    elif kind == 4:
        attr = helper.make_attribute(name, _pick(fdp, _tensors(model)) or TensorProto())
    elif kind == 5:  # a subgraph that reads outer values: the main graph, copied
        sub = onnx.GraphProto()
        sub.CopyFrom(model.graph)
        sub.ClearField("input")
        attr = helper.make_attribute(name, sub)
    else:
        attr = helper.make_attribute(name, [fdp.ConsumeFloat()], attr_type=onnx.AttributeProto.FLOATS)
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(attr)


def m_tensor(model: onnx.ModelProto, fdp: Fdp) -> None:
    """Dims, element type, data (raw, typed, truncated) or external-data entries."""
    tensor = _pick(fdp, _tensors(model))
    if tensor is None:
        return
    choice = fdp.ConsumeIntInRange(0, 5)
    if choice == 0:
        tensor.dims[:] = [_int(fdp) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    elif choice == 1:
        tensor.data_type = fdp.ConsumeIntInRange(-1, 30)
    elif choice == 2:
        tensor.raw_data = tensor.raw_data[: fdp.ConsumeIntInRange(0, len(tensor.raw_data))] \
            + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))
    elif choice == 3:
        tensor.ClearField("raw_data")
        tensor.float_data[:] = fdp.ConsumeFloatList(fdp.ConsumeIntInRange(0, 64))
    elif choice == 4:
        tensor.ClearField("raw_data")
        tensor.data_location = fdp.ConsumeIntInRange(0, 1)  # DEFAULT or EXTERNAL (a closed enum)
        del tensor.external_data[:]
        for key in ("location", "offset", "length", "checksum", "other"):
            if fdp.ConsumeBool():
                value = (_pick(fdp, [DATA_FILE, "missing.data", "", "sub/x.data", "."])
                         if key == "location" else str(_int(fdp)))
                tensor.external_data.add(key=key, value=value)
    else:
        tensor.name = _pick(fdp, [*_values(model), ""])


def m_opset(model: onnx.ModelProto, fdp: Fdp) -> None:
    choice = fdp.ConsumeIntInRange(0, 3)
    if choice == 0 and model.opset_import:
        model.opset_import[fdp.ConsumeIntInRange(0, len(model.opset_import) - 1)].version = \
            fdp.ConsumeIntInRange(-1, 30)
    elif choice == 1 and model.opset_import:
        del model.opset_import[fdp.ConsumeIntInRange(0, len(model.opset_import) - 1)]
    elif choice == 2:
        model.opset_import.append(helper.make_opsetid(_pick(fdp, DOMAINS), fdp.ConsumeIntInRange(-1, 30)))
    else:
        model.ir_version = _int(fdp)


def m_function(model: onnx.ModelProto, fdp: Fdp) -> None:
    function = _pick(fdp, list(model.functions))
    if function is None:
        return
    choice = fdp.ConsumeIntInRange(0, 4)
    if choice == 0:
        function.domain = _pick(fdp, DOMAINS)
    elif choice == 1:
        function.name = _pick(fdp, OP_TYPES)
    elif choice == 2:
        del model.functions[:]
    elif choice == 3 and function.input:
        del function.input[fdp.ConsumeIntInRange(0, len(function.input) - 1)]
    else:
        function.output.append(_pick(fdp, ["", "missing", *function.input]))


def m_graph_io(model: onnx.ModelProto, fdp: Fdp) -> None:
    """Remove, add or retype graph inputs, outputs and value_info."""
    g = model.graph
    holders = [g.input, g.output, g.value_info]
    holder = _pick(fdp, holders)
    choice = fdp.ConsumeIntInRange(0, 2)
    if choice == 0 and len(holder):
        del holder[fdp.ConsumeIntInRange(0, len(holder) - 1)]
    elif choice == 1:
        dims = [_pick(fdp, [*INTS, "n", None]) for _ in range(fdp.ConsumeIntInRange(0, 4))]
        holder.append(helper.make_tensor_value_info(
            _pick(fdp, [*_values(model), "extra"]), fdp.ConsumeIntInRange(0, 25), dims))
    elif len(holder):
        holder[fdp.ConsumeIntInRange(0, len(holder) - 1)].type.tensor_type.elem_type = \
            fdp.ConsumeIntInRange(-1, 30)


MUTATIONS: list[Callable[[onnx.ModelProto, Fdp], None]] = [
    m_node_op, m_node_io, m_nodes, m_attribute, m_tensor, m_opset, m_function, m_graph_io]


def build(data: bytes, seed_list: list[tuple[bytes, bytes | None]]) -> tuple[bytes, bytes | None]:
    """The model file and the optional ``weights.data`` an input stands for."""
    if not data or data[0] % 2 == 0:
        return data[1:], None
    fdp = Fdp(data[1:])
    model_bytes, weights = _pick(fdp, seed_list)
    model = onnx.ModelProto()
    model.ParseFromString(model_bytes)
    for _ in range(fdp.ConsumeIntInRange(1, 6)):
        _pick(fdp, MUTATIONS)(model, fdp)
    if fdp.ConsumeIntInRange(0, 3) == 0:  # mostly the seed's own weights file
        weights = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))
    return model.SerializeToString(), weights


# ------------------------------------------------------------------------------ target


def run_one(model: bytes, weights: bytes | None) -> None:
    """Rewrite ``model`` as the CLI does; raise on anything but success or a UserError."""
    with tempfile.TemporaryDirectory(prefix="onnxfuse-fuzz-") as tmp:
        src, out = Path(tmp, "model.onnx"), Path(tmp, "out", "model.onnx")
        src.write_bytes(model)
        out.parent.mkdir()
        if weights is not None:
            Path(tmp, DATA_FILE).write_bytes(weights)
        try:
            rewrite(RewriteConfig(input=src, output=out, report=Path(tmp, "out", "report.json")))
        except UserError:
            return
        # What a successful rewrite writes, onnxfuse reads, and finds nothing more to fuse.
        again = rewrite(RewriteConfig(input=out, output=Path(tmp, "again.onnx")))
        if again.fused:
            raise AssertionError(f"rewriting the output fused {len(again.fused)} more node(s)")


def main() -> None:
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    seed_list = seeds()
    argv = list(sys.argv)
    paths = [Path(a) for a in argv[1:] if not a.startswith("-")]
    if not paths:
        paths = [Path(tempfile.mkdtemp(prefix="onnxfuse-fuzz-corpus-"))]
        argv.append(str(paths[0]))
    if not paths[0].is_file():  # a corpus folder (files given: libFuzzer replays them)
        paths[0].mkdir(parents=True, exist_ok=True)
        for i, (model, _) in enumerate(seed_list):  # both modes start from every seed
            (paths[0] / f"seed-raw-{i}").write_bytes(b"\x00" + model)
            (paths[0] / f"seed-mutate-{i}").write_bytes(b"\x01" + bytes([i]) + bytes(range(64)))

    def one_input(data: bytes) -> None:
        run_one(*build(data, seed_list))

    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
