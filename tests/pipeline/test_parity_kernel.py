"""`onnxfuse parity` checks the plugin's kernel, not the fused node's function body (which is the
original nodes): a node whose declared inputs are wrong fails under the default backend and
passes under `--backend none`; the report names what ran and the plugin's counters prove it."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import onnx
import onnx_ir as ir
import pytest

from onnxfuse.errors import KernelError
from onnxfuse.graph_rewrites import fuse_model
from onnxfuse.kernels import ort as plugin
from onnxfuse.pipeline import cli, sessions
from onnxfuse.pipeline.configs import ParityConfig
from onnxfuse.pipeline.parity import parity
from tests.conftest import run_cli
from tests.graph_rewrites.graphs import gated_mlp


def _swap_gate_and_up(fused: onnx.ModelProto) -> onnx.ModelProto:
    """The fused node gets W_up in the W_gate slot and W_gate in the W_up slot, and its function's
    parameters are swapped with them: the body still computes the original MLP, the node's
    declared inputs (what a kernel reads, by slot) are wrong."""
    (node,) = [n for n in fused.graph.node if n.op_type == "FusedGatedMLP"]
    (function,) = fused.functions
    for names in (node.input, function.input):
        names[1], names[2] = names[2], names[1]
    return fused


@pytest.fixture(scope="module")
def mislabelled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A one-MLP model (d=8, d_ff=12) and its fused form with W_gate and W_up swapped."""
    folder = tmp_path_factory.mktemp("mislabelled")
    original = gated_mlp(form="silu")
    model = ir.from_proto(original)
    assert len(fuse_model(model)[0]) == 1
    onnx.save(original, folder / "original.onnx")
    onnx.save(_swap_gate_and_up(ir.to_proto(model)), folder / "swapped.onnx")
    return folder / "original.onnx", folder / "swapped.onnx"


def test_a_node_with_swapped_gate_and_up_fails_under_the_default_backend(
        mislabelled: tuple[Path, Path], tmp_path: Path) -> None:
    proc = run_cli(["parity", *map(str, mislabelled), "--json", str(tmp_path / "r.json")])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "first divergent fused node: FusedGatedMLP_0" in proc.stderr
    assert "fused nodes (FusedGatedMLP_0) ran on: plugin cpu matmul" in proc.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] is False and report["first_divergent_node"] == "FusedGatedMLP_0"
    assert report["implementation"] == "plugin cpu matmul"
    (failing, *_) = [o for o in report["outputs"] if not o["passed"]]
    assert failing["name"].startswith("add_") and failing["rel_l2"] > 1e-2


def test_the_same_node_passes_its_function_body_check(mislabelled: tuple[Path, Path], tmp_path: Path) -> None:
    """--backend none runs the function body (the original nodes): the swap is invisible there, so
    the failure above came from the kernel."""
    proc = run_cli(["parity", *map(str, mislabelled), "--backend", "none", "--json", str(tmp_path / "r.json")])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["implementation"] == "function body" and report["kernel_runs"] is None
    assert all(o["rel_l2"] == 0.0 for o in report["outputs"])
    assert "ran on: function body" in proc.stdout


@pytest.mark.interpreter
def test_the_report_names_the_kernel_and_its_counted_runs(mislabelled: tuple[Path, Path], tmp_path: Path) -> None:
    original, _ = mislabelled
    model = ir.from_proto(onnx.load(original))
    fuse_model(model)
    fused = tmp_path / "fused.onnx"
    onnx.save(ir.to_proto(model), fused)
    result = parity(ParityConfig(original, fused, per_node=True, report=tmp_path / "r.json"))
    assert result.passed and result.implementation == "plugin cpu matmul"
    assert result.fused_nodes == ("FusedGatedMLP_0",)
    runs = json.loads((tmp_path / "r.json").read_text())["kernel_runs"]
    # two shapes, then the per-node run: three runs of the fused graph, one fused node.
    assert runs == {"counter": "onnxfuse_kernel_runs(matmul)", "nodes": 1, "session_runs": 3, "counted": 3,
                    "exact": True, "expected": 3}
    tri = parity(ParityConfig(original, fused, backend="triton", batch=1, seq=3))
    assert tri.passed and tri.implementation == "triton (interpreter)"
    assert tri.kernel_runs is not None and tri.kernel_runs.counter == "bridge.calls()"
    assert tri.kernel_runs.counted == tri.kernel_runs.expected == 2


def _options_without_a_kernel(backend: str, device: str = "cpu", cpu_kernel: str = "off") -> object:
    """The planted fault: the plugin registered, but with no CPU kernel (its CPU default)."""
    return functools.partial(plugin.session_options, backend=backend, device=device, cpu_kernel="off")


def test_a_session_that_runs_no_kernel_fails_loudly(mislabelled: tuple[Path, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Parity believes the default backend runs the plugin's matmul kernel; a session that runs the
    function bodies instead (rel L2 0.0 on the mislabelled model) must be an internal error, not a
    pass."""
    monkeypatch.setattr(sessions, "plugin_options", _options_without_a_kernel)
    with pytest.raises(KernelError, match=r"counted 0"):
        parity(ParityConfig(*mislabelled))
    assert cli.main(["parity", "-q", *map(str, mislabelled), "--json", str(tmp_path / "r.json")]) == 3
    err = capsys.readouterr().err
    assert "should have run the plugin cpu matmul kernel 2 time(s), but onnxfuse_kernel_runs(matmul) counted 0" in err
    assert not (tmp_path / "r.json").exists()


def test_fused_nodes_inside_subgraphs_make_the_count_a_lower_bound(tmp_path: Path) -> None:
    """A fused node in an If branch runs 0..n times per run: the counter can only be checked
    as a lower bound (``exact`` false), not as an equality that a taken branch would break."""
    model = ir.from_proto(gated_mlp(form="silu"))
    fuse_model(model)
    fused = ir.to_proto(model)
    shape: list[int | str] = ["batch", "seq", 8]
    then = onnx.helper.make_graph(list(fused.graph.node), "then", [], [
        onnx.helper.make_tensor_value_info(fused.graph.output[0].name, onnx.TensorProto.FLOAT, shape)])
    other = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["e"])], "else", [],
                                   [onnx.helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, shape)])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="if0")], "g",
        [*fused.graph.input, onnx.helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)], list(fused.graph.initializer))
    path = tmp_path / "nested.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=list(fused.opset_import), ir_version=10,
                                     functions=list(fused.functions)), path)
    info = sessions.model_info(path)
    assert (info.fused_nodes, info.nested_fused) == ((), 1)
    result = parity(ParityConfig(path, path))
    assert result.passed and result.kernel_runs is not None and not result.kernel_runs.exact
    assert result.kernel_runs.expected == 0 and result.kernel_runs.counted == 2  # the branch ran twice
