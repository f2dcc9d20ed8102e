"""A corpus of hostile and malformed model files, generated at test time.

Each :class:`Case` builds its files inside a folder of its own::

    ROOT/<case>/model/model.onnx   the file handed to the command (+ its data files)
    ROOT/<case>/outside/secret.bin a file outside the model's folder that attacks aim at

``malformed`` cases break the file or the graph; ``external`` cases attack external data;
``checkpoint`` cases (for ``export``) are hostile Hugging Face folders and GGUF files. Every
case must be refused with exit 2 and one line on stderr, and the line must contain
``Case.expect`` (which proves the check that caught it).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

D, D_FF = 8, 12
_OPSET = 18
_UNPARSABLE = "is not an ONNX model"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "malformed" | "external" | "checkpoint"
    build: Callable[[Path], Path]  # (model folder) -> the model path to hand to the command
    expect: str  # a fragment of the expected one-line error


# -- the base model: a gated MLP, so a rewrite would fuse it if a check let it through -----

def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"W_gate": rng.standard_normal((D, D_FF)).astype(np.float32),
            "W_up": rng.standard_normal((D, D_FF)).astype(np.float32),
            "W_down": rng.standard_normal((D_FF, D)).astype(np.float32)}


def base_graph() -> onnx.GraphProto:
    nodes = [
        helper.make_node("MatMul", ["X", "W_gate"], ["gate"], name="gate_proj"),
        helper.make_node("Sigmoid", ["gate"], ["sig"], name="sigmoid"),
        helper.make_node("Mul", ["gate", "sig"], ["act"], name="silu"),
        helper.make_node("MatMul", ["X", "W_up"], ["up"], name="up_proj"),
        helper.make_node("Mul", ["act", "up"], ["prod"], name="gated"),
        helper.make_node("MatMul", ["prod", "W_down"], ["Y"], name="down_proj"),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in _weights().items()]
    return helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "seq", D])],
                             [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", "seq", D])], inits)


def base_model() -> onnx.ModelProto:
    return helper.make_model(base_graph(), opset_imports=[helper.make_opsetid("", _OPSET)],
                             producer_name="onnxfuse-corpus")


def save_with_data(model: onnx.ModelProto, path: Path, location: str = "model.onnx.data") -> None:
    """Save with every initializer in one external data file (as the exporter writes)."""
    onnx.save(model, os.fspath(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=0)


def _write(proto: onnx.ModelProto) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "model.onnx"
        path.write_bytes(proto.SerializeToString())
        return path
    return build


def _bytes(data: bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "model.onnx"
        path.write_bytes(data)
        return path
    return build


def _mutate(fn: Callable[[onnx.ModelProto], object]) -> Callable[[Path], Path]:
    """A base model (weights inline) changed by ``fn``."""
    model = base_model()
    fn(model)
    return _write(model)


# -- malformed files -----------------------------------------------------------------------

def _byte_cases() -> list[Case]:
    good = base_model().SerializeToString()
    cases = [Case("empty-file", "malformed", _bytes(b""), "holds no graph")]
    # The first two bytes are the complete ir_version field: that prefix parses, as a model
    # without a graph. Every other cut ends inside a field.
    cases.append(Case("truncated-2", "malformed", _bytes(good[:2]), "holds no graph"))
    for n in (1, 5, 11, *(int(len(good) * f) for f in (0.1, 0.25, 0.5, 0.75, 0.9)),
              len(good) - 3, len(good) - 1):
        cases.append(Case(f"truncated-{n}", "malformed", _bytes(good[:n]), _UNPARSABLE))
    rng = np.random.default_rng(1234)
    for size in (1, 3, 7, 64, 100, 300, 1000, 4096, 10_000, 65_536):
        cases.append(Case(f"random-{size}", "malformed", _bytes(rng.bytes(size)), _UNPARSABLE))
    for i in range(3):
        cases.append(Case(f"valid-prefix-random-{i}", "malformed",
                          _bytes(good[: 40 + 30 * i] + rng.bytes(200)), _UNPARSABLE))
    cases += [
        Case("zeros-1k", "malformed", _bytes(b"\0" * 1024), _UNPARSABLE),
        Case("text", "malformed", _bytes(b"hello, I am not a model\n"), _UNPARSABLE),
        Case("onnx-textproto", "malformed", _bytes(onnx.printer.to_text(base_model()).encode()), _UNPARSABLE),
        Case("json", "malformed", _bytes(onnx.helper.printable_graph(base_graph()).encode()), _UNPARSABLE),
        Case("gzip-of-model", "malformed", _bytes(gzip.compress(good)), _UNPARSABLE),
        Case("zip-header", "malformed", _bytes(b"PK\x03\x04" + bytes(60)), _UNPARSABLE),
        Case("elf-header", "malformed", _bytes(b"\x7fELF\x02\x01\x01" + bytes(120)), _UNPARSABLE),
        Case("tensor-proto", "malformed", _bytes(numpy_helper.from_array(np.ones(3, np.float32), "t").SerializeToString()), _UNPARSABLE),
        Case("nested-subgraphs-200", "malformed", _nested_if_bytes(200), _UNPARSABLE),
        Case("graph-proto", "malformed", _bytes(base_graph().SerializeToString()), "holds no graph"),
        Case("over-2GiB-sparse", "malformed", _sparse_file(3 * 2**30), "over protobuf's 2 GiB limit"),
        Case("path-is-folder", "malformed", _folder, "not a regular file"),
        Case("path-is-fifo", "malformed", _fifo, "not a regular file"),
        Case("path-links-to-dev-zero", "malformed", _link_to("/dev/zero"), "not a regular file"),
        Case("dangling-link", "malformed", _link_to("no-such-target.onnx"), "does not exist"),
        Case("missing", "malformed", lambda folder: folder / "missing.onnx", "does not exist"),
    ]
    return cases


def _sparse_file(size: int) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "model.onnx"
        with path.open("wb") as f:
            f.truncate(size)  # a hole: costs no disk, but 3 GiB to read
        return path
    return build


def _folder(folder: Path) -> Path:
    (folder / "model.onnx").mkdir()
    return folder / "model.onnx"


def _fifo(folder: Path) -> Path:
    os.mkfifo(folder / "model.onnx")  # opening it for reading would block forever
    return folder / "model.onnx"


def _link_to(target: str) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        (folder / "model.onnx").symlink_to(target)
        return folder / "model.onnx"
    return build


def _set_opsets(*pairs: tuple[str, int]) -> Callable[[onnx.ModelProto], None]:
    def fn(m: onnx.ModelProto) -> None:
        del m.opset_import[:]
        m.opset_import.extend(helper.make_opsetid(d, v) for d, v in pairs)
    return fn


def _node(m: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in m.graph.node if n.name == name)


def _init(m: onnx.ModelProto, name: str) -> TensorProto:
    return next(t for t in m.graph.initializer if t.name == name)


def _replace_init(name: str, tensor: TensorProto) -> Callable[[onnx.ModelProto], None]:
    def fn(m: onnx.ModelProto) -> None:
        _init(m, name).CopyFrom(tensor)
    return fn


def _add_node(node: onnx.NodeProto, at: int = 0) -> Callable[[onnx.ModelProto], None]:
    def fn(m: onnx.ModelProto) -> None:
        m.graph.node.insert(at, node)
    return fn


def _if_node(then: onnx.GraphProto | None, other: onnx.GraphProto | None, out: str = "branch") -> onnx.NodeProto:
    attrs = {}
    if then is not None:
        attrs["then_branch"] = then
    if other is not None:
        attrs["else_branch"] = other
    return helper.make_node("If", ["cond"], [out], name="if", **attrs)


def _branch(name: str, nodes: list[onnx.NodeProto], out: str,
            inits: list[TensorProto] | None = None) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                             inits or [])


def _with_if(then: onnx.GraphProto | None, other: onnx.GraphProto | None) -> Callable[[onnx.ModelProto], None]:
    """Add a boolean initializer ``cond`` and an If node on it (output unused)."""
    def fn(m: onnx.ModelProto) -> None:
        m.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
        m.graph.node.append(_if_node(then, other))
    return fn


def _const_branch(name: str, value: float = 1.0) -> onnx.GraphProto:
    t = numpy_helper.from_array(np.array([value], np.float32), f"{name}_c")
    return _branch(name, [helper.make_node("Constant", [], [f"{name}_out"], value=t)], f"{name}_out")


def _varint(n: int) -> bytes:
    out = b""
    while True:
        out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            return out


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field, by hand."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _nested_if_bytes(depth: int) -> Callable[[Path], Path]:
    """The base model plus an If whose then-branch nests ``depth`` Ifs: written by hand,
    since protobuf's own encoder refuses the depth its decoder would refuse."""
    graph = _const_branch("leaf").SerializeToString()
    for _ in range(depth):
        # NodeProto: input 1, output 2, op_type 4, attribute 5 (name 1, g 6, type 20 = GRAPH)
        node = (_ld(1, b"cond") + _ld(2, b"o") + _ld(4, b"If")
                + _ld(5, _ld(1, b"then_branch") + _ld(6, graph) + _varint(20 << 3) + _varint(5)))
        graph = _ld(1, node) + _ld(2, b"level") + _ld(12, _ld(1, b"o"))
    # A repeated embedded message field merges: this adds the If to the main graph.
    return _bytes(base_model().SerializeToString() + _ld(7, graph))


def _function(name: str, nodes: list[onnx.NodeProto], inputs: list[str], outputs: list[str],
              domain: str = "local", opset: int = _OPSET) -> onnx.FunctionProto:
    return helper.make_function(domain, name, inputs, outputs, nodes,
                                [helper.make_opsetid("", opset), helper.make_opsetid("local", 1)])


def _with_functions(*functions: onnx.FunctionProto, call: tuple[str, str] | None = ("local", "F"),
                    import_local: bool = True) -> Callable[[onnx.ModelProto], None]:
    """Add model-local functions and (unless ``call`` is None) a node calling one on ``Y``."""
    def fn(m: onnx.ModelProto) -> None:
        m.functions.extend(functions)
        if import_local:
            m.opset_import.append(helper.make_opsetid("local", 1))
        if call is not None:
            m.graph.node.append(helper.make_node(call[1], ["Y"], ["Z"], domain=call[0], name="call"))
            m.graph.output.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT, ["batch", "seq", D]))
    return fn


def _identity_fn(name: str = "F", op: str = "Identity", domain: str = "") -> onnx.FunctionProto:
    return _function(name, [helper.make_node(op, ["x"], ["y"], domain=domain)], ["x"], ["y"])


def _sparse(values: TensorProto, indices: TensorProto, dims: list[int]) -> Callable[[onnx.ModelProto], None]:
    def fn(m: onnx.ModelProto) -> None:
        m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, dims))
        m.graph.node.append(helper.make_node("Identity", [values.name], ["sparse_out"], name="use_sparse"))
        m.graph.output.append(helper.make_tensor_value_info("sparse_out", TensorProto.FLOAT, [4]))
    return fn


def _tensor(name: str, dtype: int, dims: list[int], raw: bytes | None = None, **fields: object) -> TensorProto:
    t = TensorProto(name=name, data_type=dtype, dims=dims)
    if raw is not None:
        t.raw_data = raw
    for k, v in fields.items():
        getattr(t, k).extend(v)  # type: ignore[arg-type]
    return t


def _proto_cases() -> list[Case]:
    f32 = TensorProto.FLOAT
    wg = numpy_helper.from_array(_weights()["W_gate"], "W_gate")
    nl = "w\nInjected: fake line\x1b[31m\u2028"
    mutations: list[tuple[str, Callable[[onnx.ModelProto], object], str]] = [
        # IR version and opsets
        ("ir-version-0", lambda m: setattr(m, "ir_version", 0), "IR version 0"),
        ("ir-version-future", lambda m: setattr(m, "ir_version", onnx.IR_VERSION + 1), "IR version"),
        ("ir-version-huge", lambda m: setattr(m, "ir_version", 2**62), "IR version"),
        ("ir-version-negative", lambda m: setattr(m, "ir_version", -1), "IR version"),
        ("no-opset", _set_opsets(), "imports no ONNX opset"),
        ("opset-0", _set_opsets(("", 0)), "out of range"),
        ("opset-negative", _set_opsets(("", -5)), "out of range"),
        ("opset-huge", _set_opsets(("", 10**6)), "out of range"),
        ("opset-next", _set_opsets(("", onnx.defs.onnx_opset_version() + 1)), "out of range"),
        ("opset-twice", _set_opsets(("", 18), ("", 17)), "imported twice"),
        ("opset-ai-onnx-alias-twice", _set_opsets(("", 18), ("ai.onnx", 18)), "imported twice"),
        ("opset-only-custom", _set_opsets(("custom", 1)), "imports no ONNX opset"),
        ("custom-opset-0", _set_opsets(("", 18), ("custom", 0)), "out of range"),
        ("ml-opset-huge", _set_opsets(("", 18), ("ai.onnx.ml", 999)), "out of range"),
        ("domain-not-imported", _add_node(helper.make_node("Foo", ["X"], ["foo"], domain="evil.domain")), "onnx.checker"),
        ("unknown-op", _add_node(helper.make_node("NoSuchOp", ["X"], ["foo"])), "onnx.checker"),
        ("op-newer-than-opset", _add_node(helper.make_node("Gelu", ["X"], ["foo"])), "onnx.checker"),
        ("op-removed-in-opset", _add_node(helper.make_node("Upsample", ["X", "X"], ["foo"])), "onnx.checker"),
        ("ml-op-without-import", _add_node(helper.make_node("Normalizer", ["X"], ["foo"], domain="ai.onnx.ml")), "onnx.checker"),
        # graph structure
        ("missing-initializer", lambda m: m.graph.initializer.remove(_init(m, "W_up")), "onnx.checker"),
        ("no-initializers", lambda m: m.graph.ClearField("initializer"), "onnx.checker"),
        ("undefined-node-input", lambda m: _node(m, "sigmoid").input.__setitem__(0, "nowhere"), "onnx.checker"),
        ("undefined-graph-output", lambda m: setattr(m.graph.output[0], "name", "nowhere"), "onnx.checker"),
        ("cycle", _cycle, "onnx.checker"),
        ("self-loop", lambda m: _node(m, "sigmoid").input.__setitem__(0, "sig"), "onnx.checker"),
        ("reverse-order", lambda m: m.graph.node.reverse(), "onnx.checker"),
        ("duplicate-node-output", lambda m: _node(m, "up_proj").output.__setitem__(0, "gate"), "onnx.checker"),
        ("duplicate-initializer", lambda m: m.graph.initializer.append(numpy_helper.from_array(_weights()["W_up"], "W_up")), "onnx.checker"),
        ("duplicate-graph-input", lambda m: m.graph.input.append(m.graph.input[0]), "onnx.checker"),
        ("initializer-is-node-output", lambda m: setattr(_init(m, "W_up"), "name", "gate"), "onnx.checker"),
        ("node-output-is-graph-input", lambda m: _node(m, "sigmoid").output.__setitem__(0, "X"), "onnx.checker"),
        ("empty-graph", lambda m: m.graph.CopyFrom(onnx.GraphProto(name="empty")), "no outputs"),
        ("no-graph", lambda m: m.ClearField("graph"), "holds no graph"),
        ("no-outputs", lambda m: m.graph.ClearField("output"), "no outputs"),
        ("output-without-type", lambda m: m.graph.output[0].ClearField("type"), "onnx.checker"),
        ("empty-op-type", _add_node(helper.make_node("", ["X"], ["foo"])), "onnx.checker"),
        ("matmul-three-inputs", lambda m: _node(m, "up_proj").input.append("W_gate"), "onnx.checker"),
        ("matmul-no-inputs", lambda m: _node(m, "up_proj").ClearField("input"), "onnx.checker"),
        ("sigmoid-two-outputs", lambda m: _node(m, "sigmoid").output.append("extra"), "onnx.checker"),
        # types and dims
        ("input-dtype-99", lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", 99), "unknown element type 99"),
        ("input-dtype-undefined", lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", 0), "unknown element type 0"),
        ("output-dtype-1000", lambda m: setattr(m.graph.output[0].type.tensor_type, "elem_type", 1000), "unknown element type 1000"),
        ("input-negative-dim", lambda m: setattr(m.graph.input[0].type.tensor_type.shape.dim[2], "dim_value", -8), "negative dimension"),
        ("input-absurd-dims", _input_dims([10**6, 10**6, D]), "declares 8000000000000 elements"),
        ("input-huge-dims", _input_dims([2**62, 2**62, D]), "elements"),
        ("value-info-negative-dim", lambda m: m.graph.value_info.append(helper.make_tensor_value_info("gate", f32, [-1, 3])), "negative dimension"),
        ("value-info-dtype-77", lambda m: m.graph.value_info.append(helper.make_tensor_value_info("gate", 77, [1])), "unknown element type 77"),
        ("initializer-dtype-99", _replace_init("W_gate", _tensor("W_gate", 99, [D, D_FF], wg.raw_data)), "unknown data type 99"),
        ("initializer-dtype-undefined", _replace_init("W_gate", _tensor("W_gate", 0, [D, D_FF], wg.raw_data)), "unknown data type 0"),
        ("initializer-negative-dim", _replace_init("W_gate", _tensor("W_gate", f32, [-D, D_FF], wg.raw_data)), "negative dimension"),
        ("initializer-absurd-dims", _replace_init("W_gate", _tensor("W_gate", f32, [2**40, 2**40], b"1234")), "more than 2**62"),
        ("initializer-huge-no-data", _replace_init("W_gate", _tensor("W_gate", f32, [10**12])), "onnx.checker"),
        ("initializer-huge-raw-mismatch", _replace_init("W_gate", _tensor("W_gate", f32, [10**12], b"1234")), "bytes of raw data"),
        ("initializer-raw-short", _replace_init("W_gate", _tensor("W_gate", f32, [D, D_FF], wg.raw_data[:-1])), "bytes of raw data"),
        ("initializer-raw-long", _replace_init("W_gate", _tensor("W_gate", f32, [D, D_FF], wg.raw_data + b"xxxx")), "bytes of raw data"),
        ("initializer-float-data-short", _replace_init("W_gate", _tensor("W_gate", f32, [D, D_FF], float_data=[1.0] * 5)), "onnx.checker"),
        ("initializer-raw-and-float-data", _replace_init("W_gate", _tensor("W_gate", f32, [D, D_FF], wg.raw_data, float_data=[1.0] * D * D_FF)), "onnx.checker"),
        ("initializer-string-raw", _replace_init("W_gate", _tensor("W_gate", TensorProto.STRING, [2], b"ab")), "onnx.checker"),
        # attributes and nodes
        ("attribute-wrong-type", _add_node(helper.make_node("Transpose", ["X"], ["foo"], perm=[0.5, 1.5])), "onnx.checker"),
        ("attribute-undefined-type", _add_node(_with_attr(helper.make_node("Transpose", ["X"], ["foo"]), onnx.AttributeProto(name="perm"))), "onnx.checker"),
        ("attribute-twice", _add_node(_with_attr(helper.make_node("Transpose", ["X"], ["foo"], perm=[0, 1, 2]), helper.make_attribute("perm", [2, 1, 0]))), "onnx.checker"),
        ("constant-without-value", _add_node(helper.make_node("Constant", [], ["c"])), "0 value attributes"),
        ("constant-two-values", _add_node(helper.make_node("Constant", [], ["c"], value_float=1.0, value_int=1)), "2 value attributes"),
        ("constant-dtype-99", _add_node(helper.make_node("Constant", [], ["c"], value=_tensor("c", 99, [1], b"1234"))), "unknown data type 99"),
        ("constant-raw-short", _add_node(helper.make_node("Constant", [], ["c"], value=_tensor("c", f32, [4], b"1234"))), "bytes of raw data"),
        ("constant-negative-dims", _add_node(helper.make_node("Constant", [], ["c"], value=_tensor("c", f32, [-1], b""))), "negative dimension"),
        ("cast-to-99", _add_node(helper.make_node("Cast", ["X"], ["foo"], to=99)), "unknown element type 99"),
        ("if-without-else", _with_if(_const_branch("then"), None), "onnx.checker"),
        ("if-branch-undefined-input", _with_if(_branch("then", [helper.make_node("Identity", ["nowhere"], ["o"])], "o"), _const_branch("else")), "onnx.checker"),
        ("if-branch-dtype-99", _with_if(_branch("then", [helper.make_node("Constant", [], ["o"], value=_tensor("t", 99, [1], b"1"))], "o"), _const_branch("else")), "unknown data type 99"),
        ("if-branch-bad-initializer", _with_if(_branch("then", [helper.make_node("Identity", ["i"], ["o"])], "o", [_tensor("i", f32, [4], b"12")]), _const_branch("else")), "bytes of raw data"),
        ("loop-without-body", _add_node(helper.make_node("Loop", ["", ""], ["foo"])), "onnx.checker"),
        ("sparse-index-out-of-range", _sparse(numpy_helper.from_array(np.ones(2, np.float32), "sp"), numpy_helper.from_array(np.array([0, 99], np.int64), "sp_i"), [4]), "onnx.checker"),
        ("sparse-values-dtype-99", _sparse(_tensor("sp", 99, [2], b"12345678"), numpy_helper.from_array(np.array([0, 1], np.int64), "sp_i"), [4]), "unknown data type 99"),
        ("sparse-values-2d", _sparse(numpy_helper.from_array(np.ones((2, 2), np.float32), "sp"), numpy_helper.from_array(np.array([0, 1], np.int64), "sp_i"), [4]), "onnx.checker"),
        # model-local functions
        ("function-undefined-value", _with_functions(_function("F", [helper.make_node("Identity", ["nowhere"], ["y"])], ["x"], ["y"])), "onnx.checker"),
        ("function-output-not-produced", _with_functions(_function("F", [helper.make_node("Identity", ["x"], ["t"])], ["x"], ["y"])), "never computes its output 'y'"),
        ("function-defined-twice", _with_functions(_identity_fn(), _identity_fn()), "defined twice"),
        ("function-calls-itself", _with_functions(_identity_fn("F", "F", "local")), "calls itself"),
        ("function-mutual-recursion", _with_functions(_identity_fn("F", "G", "local"), _identity_fn("G", "F", "local")), "calls itself"),
        ("function-recursion-in-subgraph", _with_functions(_function("F", [
            helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(True), "c")),
            helper.make_node("If", ["c"], ["y"], then_branch=_branch("t", [helper.make_node("F", ["x"], ["o"], domain="local")], "o"),
                             else_branch=_branch("e", [helper.make_node("Identity", ["x"], ["o2"])], "o2"))],
            ["x"], ["y"])), "calls itself"),
        ("function-domain-not-imported", _with_functions(_identity_fn(), import_local=False), "onnx.checker"),
        ("function-unknown-op", _with_functions(_identity_fn("F", "NoSuchOp")), "onnx.checker"),
        ("function-dtype-99-constant", _with_functions(_function("F", [helper.make_node("Constant", [], ["y"], value=_tensor("t", 99, [1], b"1"))], ["x"], ["y"])), "unknown data type 99"),
        ("function-raw-short-constant", _with_functions(_function("F", [helper.make_node("Constant", [], ["y"], value=_tensor("t", f32, [3], b"1"))], ["x"], ["y"])), "bytes of raw data"),
        ("function-duplicate-inputs", _with_functions(_function("F", [helper.make_node("Identity", ["x"], ["y"])], ["x", "x"], ["y"])), "onnx.checker"),
        ("function-opset-mismatch", _with_functions(_function("F", [helper.make_node("Identity", ["x"], ["y"])], ["x"], ["y"], opset=11)), "onnx.checker"),
        ("function-called-with-too-many-inputs", _function_call_arity, "with 4 inputs"),
        # training graphs
        ("training-info-dtype-99", _training(_tensor("tr", 99, [1], b"1")), "unknown data type 99"),
        # names an error message must not let out as extra lines
        ("newline-in-missing-initializer", lambda m: setattr(_init(m, "W_up"), "name", nl), "onnx.checker"),
        ("newline-in-tensor-name-dtype-99", _replace_init("W_gate", _tensor(nl, 99, [D, D_FF], wg.raw_data)), "unknown data type 99"),
        ("newline-in-function-name", _with_functions(_identity_fn(nl), _identity_fn(nl)), "defined twice"),
        ("huge-name-undefined-input", lambda m: _node(m, "sigmoid").input.__setitem__(0, "n" * 200_000), "onnx.checker"),
    ]
    return [Case(name, "malformed", _mutate(fn), expect) for name, fn, expect in mutations]


def _cycle(m: onnx.ModelProto) -> None:
    _node(m, "sigmoid").input[0] = "act"  # sigmoid <- silu <- sigmoid


def _input_dims(dims: list[int]) -> Callable[[onnx.ModelProto], None]:
    def fn(m: onnx.ModelProto) -> None:
        m.graph.input[0].CopyFrom(helper.make_tensor_value_info("X", TensorProto.FLOAT, dims))
    return fn


def _with_attr(node: onnx.NodeProto, attr: onnx.AttributeProto) -> onnx.NodeProto:
    node.attribute.append(attr)
    return node


def _function_call_arity(m: onnx.ModelProto) -> None:
    _with_functions(_identity_fn())(m)
    _node(m, "call").input.extend(["X", "X", "X"])


def _training(tensor: TensorProto) -> Callable[[onnx.ModelProto], None]:
    def fn(m: onnx.ModelProto) -> None:
        graph = helper.make_graph([], "init", [], [], [tensor])
        m.training_info.append(onnx.TrainingInfoProto(initialization=graph))
    return fn


# -- external-data attacks -----------------------------------------------------------------

def _external(edit: Callable[[onnx.ModelProto, Path], object]) -> Callable[[Path], Path]:
    """A base model saved with its weights in ``model.onnx.data``; ``edit(model, folder)``
    then changes the graph file (the data file stays as written)."""
    def build(folder: Path) -> Path:
        path = folder / "model.onnx"
        save_with_data(base_model(), path)
        model = onnx.load(os.fspath(path), load_external_data=False)
        edit(model, folder)
        path.write_bytes(model.SerializeToString())
        return path
    return build


def _set_keys(tensor: str = "W_gate", **entries: str) -> Callable[[onnx.ModelProto, Path], None]:
    def edit(m: onnx.ModelProto, folder: Path) -> None:
        t = _init(m, tensor)
        current = {e.key: e.value for e in t.external_data}
        current.update(entries)
        del t.external_data[:]
        for k, v in current.items():
            t.external_data.add(key=k, value=v)
    return edit


def _secret(folder: Path) -> Path:
    """The outside target: ``ROOT/<case>/outside/secret.bin``, as large as ``W_gate``."""
    outside = folder.parent / "outside"
    outside.mkdir(exist_ok=True)
    secret = outside / "secret.bin"
    secret.write_bytes(b"S" * (D * D_FF * 4))
    return secret


def _location(loc: Callable[[Path], str] | str) -> Callable[[onnx.ModelProto, Path], None]:
    """Point W_gate at ``loc`` (offset 0, its own length)."""
    def edit(m: onnx.ModelProto, folder: Path) -> None:
        _secret(folder)
        value = loc(folder) if callable(loc) else loc
        _set_keys(location=value, offset="0")(m, folder)
    return edit


def _link(name: str, target: Callable[[Path], Path], *, hard: bool = False,
          location: str | None = None) -> Callable[[onnx.ModelProto, Path], None]:
    def edit(m: onnx.ModelProto, folder: Path) -> None:
        link, dest = folder / name, target(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        if hard:
            os.link(dest, link)
        else:
            link.symlink_to(dest, target_is_directory=dest.is_dir())
        _set_keys(location=location or name, offset="0")(m, folder)
    return edit


def _outside_dir(folder: Path) -> Path:
    return _secret(folder).parent


def _data_file_replaced(kind: str) -> Callable[[onnx.ModelProto, Path], None]:
    def edit(m: onnx.ModelProto, folder: Path) -> None:
        data = folder / "model.onnx.data"
        data.unlink()
        if kind == "dir":
            data.mkdir()
        elif kind == "fifo":
            os.mkfifo(data)
    return edit


def _external_in(where: str) -> Callable[[onnx.ModelProto, Path], None]:
    """Move W_gate's external reference (``../outside/secret.bin``) to a tensor elsewhere."""
    def edit(m: onnx.ModelProto, folder: Path) -> None:
        _secret(folder)
        t = TensorProto(name="hidden", data_type=TensorProto.FLOAT, dims=[D, D_FF],
                        data_location=TensorProto.EXTERNAL)
        t.external_data.add(key="location", value="../outside/secret.bin")
        if where == "constant":
            m.graph.node.insert(0, helper.make_node("Constant", [], ["hidden"], value=t))
        elif where == "tensors-attribute":
            m.graph.node.insert(0, helper.make_node("Custom", [], ["hidden"], domain="custom", payload=[t]))
            m.opset_import.append(helper.make_opsetid("custom", 1))
        elif where == "function":
            f = _function("F", [helper.make_node("Constant", [], ["y"], value=t)], ["x"], ["y"])
            _with_functions(f)(m)
        elif where in ("sparse-values", "sparse-indices"):
            values = numpy_helper.from_array(np.ones(2, np.float32), "sp")
            indices = numpy_helper.from_array(np.array([0, 1], np.int64), "sp_i")
            target = values if where == "sparse-values" else indices
            target.ClearField("raw_data")
            target.data_location = TensorProto.EXTERNAL
            target.external_data.add(key="location", value="../outside/secret.bin")
            _sparse(values, indices, [4])(m)
        elif where == "subgraph":
            then = _branch("then", [helper.make_node("Identity", ["hidden"], ["o"])], "o", [t])
            _with_if(then, _const_branch("else"))(m)
        elif where == "training":
            _training(t)(m)
        elif where == "not-marked-external":
            t.data_location = TensorProto.DEFAULT
            _replace_init("W_gate", t)(m)
    return edit


def _external_cases() -> list[Case]:
    big = str(2**62)
    attacks: list[tuple[str, Callable[[onnx.ModelProto, Path], object], str]] = [
        ("dotdot", _location("../outside/secret.bin"), "steps out of"),
        ("dotdot-nested", _location("sub/../../outside/secret.bin"), "steps out of"),
        ("dotdot-many", _location("../" * 40 + "etc/passwd"), "steps out of"),
        ("dot-component", _location("./model.onnx.data"), "steps out of"),
        ("absolute-secret", _location(lambda folder: str(_secret(folder))), "not a plain relative path"),
        ("absolute-etc-passwd", _location("/etc/passwd"), "not a plain relative path"),
        ("double-slash-absolute", _location("//etc/passwd"), "not a plain relative path"),
        ("backslash-dotdot", _location("..\\outside\\secret.bin"), "not a plain relative path"),
        ("drive-letter", _location("C:/Windows/win.ini"), "not a plain relative path"),
        ("file-url", _location("file:///etc/passwd"), "not a plain relative path"),
        ("nul-byte", _location("model.onnx.data\0/../../outside/secret.bin"), "name a file in the model's folder"),
        ("tilde-home", _location("~/.ssh/id_rsa"), "cannot be read"),
        ("very-long-location", _location("a/" * 2000 + "x"), "name a file in the model's folder"),
        ("ort-mem-addr", _set_keys(location="*/_ORT_MEM_ADDR_/*", offset="140737488355328"), "memory address"),
        ("ort-mem-addr-in-folder", _set_keys(location="sub/_ORT_MEM_ADDR_/model.onnx.data"), "memory address"),
        ("symlink-file-outside", _link("model.onnx.data.link", lambda f: _secret(f)), "through a symlink"),
        ("symlink-file-inside", _link("alias.data", lambda f: f / "model.onnx.data"), "through a symlink"),
        ("symlink-dir-outside", _link("weights", _outside_dir, location="weights/secret.bin"), "through a symlink"),
        ("symlink-to-etc", _link("etc", lambda f: Path("/etc"), location="etc/passwd"), "through a symlink"),
        ("symlink-to-dev-zero", _link("zero.data", lambda f: Path("/dev/zero")), "through a symlink"),
        ("hardlink-outside", _link("hard.data", lambda f: _secret(f), hard=True), "hard links"),
        ("negative-offset", _set_keys(offset="-1"), "must be a non-negative decimal integer"),
        ("negative-length", _set_keys(length="-384"), "must be a non-negative decimal integer"),
        ("plus-sign-offset", _set_keys(offset="+0"), "must be a non-negative decimal integer"),
        ("hex-offset", _set_keys(offset="0x10"), "must be a non-negative decimal integer"),
        ("float-length", _set_keys(length="384.0"), "must be a non-negative decimal integer"),
        ("space-offset", _set_keys(offset=" 0"), "must be a non-negative decimal integer"),
        ("huge-offset", _set_keys(offset=big), "reads bytes"),
        ("huge-length", _set_keys(length=big), "length"),
        ("overflowing-offset", _set_keys(offset="9" * 40), "must be a non-negative decimal integer"),
        ("offset-past-end", _set_keys(offset="10000"), "reads bytes"),
        ("range-past-end", _set_keys(tensor="W_down", offset=str(3 * D * D_FF * 4 - 8)), "reads bytes"),
        ("length-too-short", _set_keys(length="8"), "need 384 bytes"),
        ("unknown-key", _set_keys(foo="bar"), "external-data key 'foo'"),
        ("basepath-key", _set_keys(basepath="/etc"), "external-data key 'basepath'"),
        ("duplicate-location", _duplicate_location, "two external-data 'location'"),
        ("empty-location", _set_keys(location=""), "without a location"),
        ("no-entries", lambda m, f: _init(m, "W_gate").ClearField("external_data"), "without a location"),
        ("entries-but-not-external", _external_in("not-marked-external"), "data_location is not EXTERNAL"),
        ("in-constant-attribute", _external_in("constant"), "only for graph initializers"),
        ("in-tensors-attribute", _external_in("tensors-attribute"), "only for graph initializers"),
        ("in-function-body", _external_in("function"), "only for graph initializers"),
        ("in-sparse-values", _external_in("sparse-values"), "only for graph initializers"),
        ("in-sparse-indices", _external_in("sparse-indices"), "only for graph initializers"),
        ("in-training-info", _external_in("training"), "only for graph initializers"),
        ("in-subgraph-initializer-dotdot", _external_in("subgraph"), "steps out of"),
        ("string-tensor", _string_external, "string tensor"),
        ("missing-data-file", lambda m, f: (f / "model.onnx.data").unlink(), "cannot be read"),
        ("data-file-is-folder", _data_file_replaced("dir"), "not a regular file"),
        ("data-file-is-fifo", _data_file_replaced("fifo"), "not a regular file"),
        ("location-is-folder", _location("sub"), "cannot be read"),
    ]
    return [Case(f"external-{name}", "external", _external(edit), expect) for name, edit, expect in attacks]


def _duplicate_location(m: onnx.ModelProto, folder: Path) -> None:
    _secret(folder)
    # ORT and onnx disagree about which duplicate wins: a benign first one must not hide the second.
    _init(m, "W_gate").external_data.add(key="location", value="../outside/secret.bin")


def _string_external(m: onnx.ModelProto, folder: Path) -> None:
    t = _init(m, "W_gate")
    t.data_type = TensorProto.STRING


def cases() -> list[Case]:
    return [*_byte_cases(), *_proto_cases(), *_external_cases()]


def build(case: Case, root: Path) -> Path:
    """Build ``case`` under ``root``; return the path to hand to the command."""
    folder = root / case.name / "model"
    folder.mkdir(parents=True)
    return case.build(folder)


def good_model(folder: Path) -> Path:
    """A valid model (the base, weights in external data) for the other side of parity/bench."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "good.onnx"
    save_with_data(base_model(), path, "good.onnx.data")
    return path



# -- hostile checkpoints for `export --model DIR|FILE.gguf` --------------------------------

_LLAMA = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
          "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 64,
          "max_position_embeddings": 64}
_EMPTY_SAFETENSORS = b"\x02\x00\x00\x00\x00\x00\x00\x00{}"  # a header with no tensors


def _folder_files(files: dict[str, object]) -> Callable[[Path], Path]:
    """A checkpoint folder; a value is bytes, a JSON object, or ``fn(path, outside)``."""
    def build(folder: Path) -> Path:
        outside = folder.parent / "outside"
        outside.mkdir()
        for name, content in files.items():
            path = folder / name
            if callable(content):
                content(path, outside)
            else:
                path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
        return folder
    return build


def _outside_link(data: bytes, *, hard: bool = False) -> Callable[[Path, Path], None]:
    def make(path: Path, outside: Path) -> None:
        (outside / path.name).write_bytes(data)
        if hard:
            os.link(outside / path.name, path)
        else:
            path.symlink_to(outside / path.name)
    return make


def _fifo_at(path: Path, outside: Path) -> None:
    os.mkfifo(path)


def _gguf(data: bytes | None) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "model.gguf"
        if data is None:
            os.mkfifo(path)
        else:
            path.write_bytes(data)
        return path
    return build


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "little")


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "little")


def checkpoint_cases() -> list[Case]:
    config = json.dumps(_LLAMA).encode()
    huge = {**_LLAMA, "hidden_size": 2**20, "intermediate_size": 2**22, "vocab_size": 2**24,
            "num_attention_heads": 8, "num_key_value_heads": 8}
    remote = {**_LLAMA, "auto_map": {"AutoConfig": "evil.Config", "AutoModelForCausalLM": "evil.Model"}}
    # evil.py leaves a mark next to the folder if anything ever imports it
    evil = b"open(__file__ + '.ran', 'w').write('ran')\nraise SystemExit(0)\n"
    folders = {
        "config-invalid-json": ({"config.json": b"{not json"}, "not a valid JSON file"),
        "config-symlink-outside": ({"config.json": _outside_link(config)}, "is a symlink"),
        "config-hardlink-outside": ({"config.json": _outside_link(config, hard=True)}, "hard links"),
        "config-fifo": ({"config.json": _fifo_at}, "not a regular file"),
        "weights-symlink-outside": ({"config.json": _LLAMA, "model.safetensors": _outside_link(b"x" * 64)}, "is a symlink"),
        "weights-fifo": ({"config.json": _LLAMA, "model.safetensors": _fifo_at}, "not a regular file"),
        "index-traversal": ({"config.json": _LLAMA, "model.safetensors.index.json": {
            "metadata": {}, "weight_map": {"lm_head.weight": "../outside/secret.safetensors"}}}, "names the shard"),
        "index-not-json": ({"config.json": _LLAMA, "model.safetensors.index.json": b"\xff\xfe"}, "is not a weight index"),
        "remote-code": ({"config.json": remote, "evil.py": evil, "model.safetensors": _EMPTY_SAFETENSORS}, "lacks"),
        "garbage-safetensors": ({"config.json": _LLAMA, "model.safetensors": b"\xff" * 200}, "header too large"),
        "unknown-model-type": ({"config.json": {"model_type": "evilarch"}}, "does not recognize this architecture"),
        "weights-missing": ({"config.json": _LLAMA, "model.safetensors": _EMPTY_SAFETENSORS}, "lacks"),
        "absurd-dims": ({"config.json": huge, "model.safetensors": _EMPTY_SAFETENSORS}, "does not match the weights"),
    }
    cases = [Case(f"checkpoint-{name}", "checkpoint", _folder_files(files), expect)
             for name, (files, expect) in folders.items()]
    head = b"GGUF" + _u32(3)

    def tensor(dims: list[int], kind: int = 0) -> bytes:  # one tensor, no key/value pairs
        return (head + _u64(1) + _u64(0) + _u64(1) + b"w" + _u32(len(dims))
                + b"".join(map(_u64, dims)) + _u32(kind) + _u64(0))

    ggufs = {
        "magic-only": (b"GGUF", "ends before a field"),
        "huge-tensor-count": (head + _u64(2**62) + _u64(2**62), "claims 4611686018427387904 tensors"),
        "huge-string": (head + _u64(0) + _u64(1) + _u64(2**60) + b"abc", "ends before a field"),
        "huge-array": (head + _u64(0) + _u64(1) + _u64(1) + b"a" + _u32(9) + _u32(8) + _u64(2**60),
                       "array claims"),
        "version-99": (b"GGUF" + _u32(99) + bytes(32), "version 99"),
        "tensor-past-end": (tensor([1024, 1024]), "past the end of the file"),
        "tensor-5-dims": (tensor([1] * 5), "5 dimensions"),
        "tensor-unknown-type": (tensor([4], kind=999), "unknown type 999"),
        "no-architecture": (b"GGUF" + _u32(3) + _u64(0) + _u64(0), "no `general.architecture`"),
        "not-gguf": (b"\0" * 64, "not a GGUF file"),
        "fifo": (None, "not a regular file"),
    }
    cases += [Case(f"gguf-{name}", "checkpoint", _gguf(data), expect) for name, (data, expect) in ggufs.items()]
    return cases


# -- valid models that cannot be run: refused by parity and bench (not by view or rewrite) --

def _graph_model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
                 inits: list[TensorProto] | None = None, out_type: int = TensorProto.FLOAT,
                 opsets: tuple[tuple[str, int], ...] = (),
                 out_shape: tuple[object, ...] = ("batch", "seq", D)) -> Callable[[Path], Path]:
    y = helper.make_tensor_value_info("Y", out_type, list(out_shape))
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, [y], inits or []),
        opset_imports=[helper.make_opsetid("", _OPSET), *(helper.make_opsetid(d, v) for d, v in opsets)])
    return _write(model)


def runtime_cases() -> list[Case]:
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "seq", D])
    shape = numpy_helper.from_array(np.array([7, 7], np.int64), "shape")
    cases = {
        "sequence-input": (_graph_model(
            [helper.make_node("SequenceAt", ["X", "zero"], ["Y"])],
            [helper.make_tensor_sequence_value_info("X", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(np.array(0, np.int64), "zero")], out_shape=("n",)), "not a numeric tensor"),
        "string-input": (_graph_model(
            [helper.make_node("Identity", ["X"], ["Y"])],
            [helper.make_tensor_value_info("X", TensorProto.STRING, ["batch"])], out_type=TensorProto.STRING,
            out_shape=("batch",)),
            "not a numeric tensor"),
        "reshape-impossible": (_graph_model([helper.make_node("Reshape", ["X", "shape"], ["Y"])], [x], [shape],
                                            out_shape=(7, 7)),
                               "ONNX Runtime cannot run"),
        "allocation-4TiB": (_graph_model(
            [helper.make_node("ConstantOfShape", ["big"], ["c"]), helper.make_node("Add", ["c", "X"], ["Y"])], [x],
            [numpy_helper.from_array(np.array([2**40, 1, 1], np.int64), "big")]), "ONNX Runtime cannot run"),
        "type-mismatch": (_graph_model([helper.make_node("MatMul", ["X", "W"], ["Y"])], [x],
                                       [numpy_helper.from_array(np.ones((D, D), np.int64), "W")]),
                          "ONNX Runtime cannot load"),
        "op-without-kernel": (_graph_model([helper.make_node("Foo", ["X"], ["Y"], domain="evil")], [x],
                                           opsets=(("evil", 1),)), "ONNX Runtime cannot load"),
    }
    return [Case(f"runtime-{name}", "runtime", build, expect) for name, (build, expect) in cases.items()]
