"""The fused-op registry: its derived facts and the C header generated from it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from onnxfuse import ops

GATED = ops.FUSED_GATED_MLP
NBITS = ops.FUSED_GATED_MLP_NBITS


def test_op_ids_are_their_positions_and_names_unique() -> None:
    assert [s.op_id for s in ops.REGISTRY] == list(range(len(ops.REGISTRY)))
    assert len({(s.domain, s.op_type) for s in ops.REGISTRY}) == len(ops.REGISTRY)


def test_optional_inputs_follow_the_required_ones() -> None:
    for spec in ops.REGISTRY:
        flags = [i.optional for i in spec.inputs]
        assert flags == sorted(flags), spec.op_type
    assert GATED.required_inputs == 4
    assert GATED.input_names[:4] == ("X", "W_gate", "W_up", "W_down")
    assert NBITS.required_inputs == 7


def test_describe_fills_attributes_and_drops_absent_terms() -> None:
    assert GATED.describe({"activation": "gelu"}, ["X", "W_gate", "W_up", "W_down"]) == \
        "gelu(X @ W_gate) * (X @ W_up) @ W_down"
    assert GATED.describe({}, GATED.input_names) == \
        "silu(X @ W_gate + B_gate) * (X @ W_up + B_up) @ W_down + B_down"


def test_attribute_codes_and_unknown_values() -> None:
    activation = GATED.attribute("activation")
    assert [activation.code(v) for v in activation.values] == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown activation 'relu': choose one of silu, gelu"):
        activation.code("relu")
    with pytest.raises(KeyError, match="no attribute 'alpha'"):
        GATED.attribute("alpha")
    bits = NBITS.attribute("bits")  # an int attribute: its values are ints, codes still indices
    assert bits.is_int and bits.code(4) == 1 and not GATED.attribute("activation").is_int
    with pytest.raises(ValueError, match="unknown bits 3: choose one of 2, 4, 8"):
        bits.code(3)
    assert NBITS.attribute("activation") is GATED.attribute("activation")  # one declaration


def test_find_names_only_registered_ops() -> None:
    assert ops.find(SimpleNamespace(domain="onnxfuse", op_type="FusedGatedMLP")) is GATED
    for domain, op_type in (("", "FusedGatedMLP"), ("onnxfuse", "MatMul"), ("com.microsoft", "Gelu")):
        assert not ops.is_fused(SimpleNamespace(domain=domain, op_type=op_type))


def test_c_header_compiles_and_embeds_the_contract(tmp_path: Path) -> None:
    header = ops.c_header()
    assert json.loads(json.loads(header.split("kContract = ", 1)[1].split(";\n", 1)[0])) == \
        json.loads(json.dumps(ops.contract(), sort_keys=True))
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    (tmp_path / "onnxfuse_ops.h").write_text(header)
    source = tmp_path / "use.cc"
    source.write_text('#include "onnxfuse_ops.h"\n'
                      "static_assert(onnxfuse_ops::kFusedGatedMLP_NumInputs == 7, \"\");\n"
                      "static_assert(onnxfuse_ops::kFusedGatedMLP_activation_Count == 3, \"\");\n"
                      "static_assert(onnxfuse_ops::kFusedGatedMLPNBits_NumInputs == 13, \"\");\n"
                      "static_assert(onnxfuse_ops::kFusedGatedMLPNBits_block_size_Values[3] == 128, \"\");\n"
                      "int main() { return onnxfuse_ops::kFusedGatedMLP_Id; }\n")
    subprocess.run([compiler, "-std=c++17", "-fsyntax-only", "-I", str(tmp_path), str(source)],
                   check=True, capture_output=True)


def test_first_line_of_an_error() -> None:
    from onnxfuse.errors import first_line

    assert first_line(RuntimeError("\n  \n  cannot load\nstack trace...")) == "cannot load"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(ValueError("   \n"), "") == ""


def test_every_fusion_family_is_named_by_its_ops_registry_entry() -> None:
    from onnxfuse.graph_rewrites import DEFAULT_FAMILIES

    assert [f.op for f in DEFAULT_FAMILIES] == [s for s in ops.REGISTRY if s.rules is not None]
    assert GATED.rules is not None and GATED.kernel is not None


def test_the_registry_element_types_are_the_tolerance_tables() -> None:
    from onnxfuse import numerics

    assert tuple(ops.ELEMENT_TYPES) == numerics.DTYPES
