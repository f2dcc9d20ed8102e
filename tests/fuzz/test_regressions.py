"""The crashes the fuzzer (fuzz_rewrite.py) found, as minimal models.

Each was an exception other than a ``UserError`` out of ``rewrite`` (the code path of
``onnxfuse rewrite``), or a rewritten model that onnxfuse itself could not read back. The
fuzzer ran first against ``ir.load``; the external-data cases are refused by
``onnxfuse.modelfile.read_model`` now, written at the same time for hostile models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from onnxfuse.errors import InvalidModelError, UnsupportedError
from onnxfuse.graph_rewrites import RewriteConfig, fuse_model, rewrite
from tests.graph_rewrites.graphs import D, feeds, gated_mlp
from tests.helpers import ort_run


def _rewrite(tmp_path: Path, model: onnx.ModelProto, data: bytes | None = None):  # type: ignore[no-untyped-def]
    src = tmp_path / "model.onnx"
    src.write_bytes(model.SerializeToString())
    if data is not None:
        (tmp_path / "weights.data").write_bytes(data)
    (tmp_path / "out").mkdir()
    return rewrite(RewriteConfig(input=src, output=tmp_path / "out" / "model.onnx"))


def _external(model: onnx.ModelProto, **entries: str) -> bytes:
    """Move the first initializer to ``weights.data``; ``entries`` override its keys."""
    tensor = model.graph.initializer[0]
    data = tensor.raw_data
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    keys = {"location": "weights.data", "offset": "0", "length": str(len(data)), **entries}
    for key, value in keys.items():
        tensor.external_data.add(key=key, value=value)
    return data


def test_external_data_shorter_than_the_tensor(tmp_path: Path) -> None:
    model = gated_mlp()
    data = _external(model)
    with pytest.raises(InvalidModelError, match="which has 380 bytes"):
        _rewrite(tmp_path, model, data[:-4])


def test_external_data_length_other_than_the_tensor_size(tmp_path: Path) -> None:
    # Was: RewriteError at save ("could not read 2147481344 more byte(s)").
    model = gated_mlp()
    data = _external(model, length=str(2**31))
    with pytest.raises(InvalidModelError, match="external-data length 2147483648 but its dims and type need 384"):
        _rewrite(tmp_path, model, data)


def test_external_data_file_missing(tmp_path: Path) -> None:
    model = gated_mlp()
    _external(model)
    with pytest.raises(InvalidModelError, match=r"weights\.data"):
        _rewrite(tmp_path, model)


def test_a_name_that_is_not_utf8(tmp_path: Path) -> None:
    # Was: RewriteError at save (UnicodeDecodeError): protobuf hands such strings over as bytes.
    model = gated_mlp()
    name = model.graph.node[0].output[0]
    raw = model.SerializeToString().replace(name.encode(), name[:-1].encode() + b"\xed")
    (tmp_path / "model.onnx").write_bytes(raw)
    (tmp_path / "out").mkdir()
    with pytest.raises(InvalidModelError, match=r"model\.graph\.node\.output is not UTF-8"):
        rewrite(RewriteConfig(input=tmp_path / "model.onnx", output=tmp_path / "out" / "m.onnx"))


def test_nodes_out_of_topological_order(tmp_path: Path) -> None:
    # Was: ValueError from onnxscript copying the match into the function body.
    model = gated_mlp()
    nodes = list(model.graph.node)
    sigmoid = next(i for i, n in enumerate(nodes) if n.op_type == "Sigmoid")
    nodes[sigmoid], nodes[sigmoid + 1] = nodes[sigmoid + 1], nodes[sigmoid]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    with pytest.raises(InvalidModelError, match="topologically sorted"):
        _rewrite(tmp_path, model)


@pytest.mark.parametrize("data_type", [TensorProto.FLOAT16, 27])  # 27: FLOAT6E2M3
def test_raw_data_longer_than_the_tensor(tmp_path: Path, data_type: int) -> None:
    # Was: RewriteError at save for the 6-bit types; the checker finds only short raw data.
    model = gated_mlp()
    model.graph.initializer[0].data_type = data_type
    with pytest.raises(InvalidModelError, match="bytes of raw data"):
        _rewrite(tmp_path, model)


def test_typed_data_of_another_count_than_the_shape(tmp_path: Path) -> None:
    # Was: ValueError from onnx_ir while the rewriter matched a constant.
    model = gated_mlp(form="gelu_erf_dec", opset=18)
    scalar = next(t for t in model.graph.initializer if not t.dims)
    scalar.ClearField("raw_data")
    scalar.float_data[:] = [0.5] * 60
    with pytest.raises(InvalidModelError, match="cannot reshape"):
        _rewrite(tmp_path, model)


def test_another_version_of_the_onnxfuse_opset(tmp_path: Path) -> None:
    # Was: ValueError from onnxscript ("Multiple versions of opset onnxfuse used").
    model = gated_mlp()
    model.opset_import.append(helper.make_opsetid("onnxfuse", 26))
    with pytest.raises(UnsupportedError, match="onnxfuse opset version 26"):
        _rewrite(tmp_path, model)


def test_a_function_in_the_onnx_domain(tmp_path: Path) -> None:
    # Was: a rewritten model onnxfuse could not read back (onnx_ir writes no domain for it).
    model = gated_mlp()
    model.functions.append(helper.make_function("", "Twice", ["a"], ["b"],
                                                [helper.make_node("Add", ["a", "a"], ["b"])],
                                                [helper.make_opsetid("", 20)]))
    with pytest.raises(InvalidModelError, match="function 'Twice' is in the ONNX domain"):
        _rewrite(tmp_path, model)


def test_a_projection_op_of_another_domain_without_inputs(tmp_path: Path) -> None:
    # Was: IndexError in the near-miss scan, which took any node named MatMul or Gemm.
    model = gated_mlp()
    model.graph.node.append(helper.make_node("Gemm", [], ["g"], domain="com.microsoft"))
    assert len(_rewrite(tmp_path, model).fused) == 1


def test_the_onnx_opset_imported_as_ai_onnx(tmp_path: Path) -> None:
    # Was: the function body imported no opset for its "" nodes (an invalid model).
    model = gated_mlp(biased=True)
    model.opset_import[0].domain = "ai.onnx"
    assert len(_rewrite(tmp_path, model).fused) == 1
    out = tmp_path / "out" / "model.onnx"
    onnx.checker.check_model(out, full_check=True)
    inputs = feeds(model)
    (actual,) = ort_run(out, inputs)
    (expected,) = ort_run(model, inputs)
    assert np.array_equal(actual, expected)


def test_a_matched_node_with_a_subgraph_attribute_is_left_alone() -> None:
    # Was: NotImplementedError from onnxscript copying the match into the function body.
    # (onnx.checker refuses such a Mul, so only fuse_model on an unchecked model meets it.)
    model = gated_mlp()
    product = next(n for n in model.graph.node if n.op_type == "Mul" and "sigmoid" not in n.input[1])
    product.attribute.append(helper.make_attribute("then_branch", helper.make_graph([], "g", [], [])))
    ir_model = ir.from_proto(model)
    fused, skipped = fuse_model(ir_model)
    assert fused == [] and len(skipped) == 1


def test_external_data_of_a_subgraph_initializer(tmp_path: Path) -> None:
    # _load deserializes the model itself and must give every external tensor the model's
    # folder, as ir.load does for the graph and its subgraphs (functions too, here). The
    # fuzzer caught a draft of _load that missed subgraph initializers: their data was looked
    # for relative to the working folder.
    model = gated_mlp()
    weight = onnx.numpy_helper.from_array(np.arange(D, dtype=np.float32), "held_weight")
    body = helper.make_graph([helper.make_node("Add", ["x", "held_weight"], ["held_sum"])], "body",
                             [], [helper.make_tensor_value_info("held_sum", TensorProto.FLOAT, None)],
                             [weight])
    data = _external(onnx.ModelProto(graph=body))
    model.graph.node.append(helper.make_node("Holder", ["x"], ["held"], domain="custom", body=body))
    model.opset_import.append(helper.make_opsetid("custom", 1))
    assert len(_rewrite(tmp_path, model, data).fused) == 1
    out = ir.load(tmp_path / "out" / "model.onnx")
    (holder,) = [n for n in out.graph if n.op_type == "Holder"]
    (weight, *_) = holder.attributes["body"].as_graph().initializers.values()
    assert weight.const_value.tobytes() == data  # type: ignore[union-attr]


@pytest.mark.parametrize("where", ["output", "value_info"])
def test_an_input_redeclared_larger_by_an_output_or_value_info(tmp_path: Path, where: str) -> None:
    # Was: the rewrite took the larger shape for the input (onnx_ir merges the declarations)
    # and wrote a model that onnxfuse then refused to read.
    model = gated_mlp()
    getattr(model.graph, where).append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [2**31, 2**31]))
    with pytest.raises(InvalidModelError, match="input 'x' declares 4611686018427387904 elements"):
        _rewrite(tmp_path, model)


def test_an_external_data_location_that_is_not_utf8(tmp_path: Path) -> None:
    # Was: TypeError in the output check, which lists the input's data files (str vs bytes).
    model = gated_mlp()
    data = _external(model, location="weights.dat\u00e9")
    raw = model.SerializeToString().replace("weights.dat\u00e9".encode(), b"weights.dat\xe9\xe9")
    (tmp_path / "model.onnx").write_bytes(raw)
    (tmp_path / "weights.data").write_bytes(data)
    with pytest.raises(InvalidModelError, match="is not UTF-8"):
        rewrite(RewriteConfig(input=tmp_path / "model.onnx", output=tmp_path / "o.onnx"))
