"""onnxruntime-genai's model folders (tests/producers.py builds them with genai's own builder):
``onnxfuse rewrite FOLDER -o OUT`` fuses every MLP, the fused decoder matches the original in
plain ORT and through the plugin's kernel, genai runs the written folder with the plugin, and
a hostile folder is refused with one line; int4 and int8 folders fuse into the quantized op."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxfuse import ops
from onnxfuse.graph_rewrites import RewriteConfig
from onnxfuse.kernels import ort as plugin
from onnxfuse.kernels.ort import bridge
from onnxfuse.numerics import compare, tolerance
from onnxfuse.pipeline import cli, sessions
from onnxfuse.pipeline.genai import CONFIG_NAME, FolderRewrite, rewrite_any
from tests.helpers import Exports, ort_run
from tests.producers import GENAI_SPECS

LAYERS = 2  # every tiny spec's


def _fuse(folder: Path, out: Path) -> FolderRewrite:
    result = rewrite_any(RewriteConfig(folder, out))
    assert isinstance(result, FolderRewrite)
    return result


@pytest.mark.parametrize("packed", [False, True], ids=["separate", "fuse_mlp_gate_up"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("family", list(GENAI_SPECS))
def test_builder_models_fuse_every_mlp_and_keep_the_numbers(exports: Exports, family: str, precision: str,
                                                            packed: bool, tmp_path: Path) -> None:
    # fuse_mlp_gate_up=true: one MatMul of a packed gate/up weight, then Split(axis=-1); the
    # rewrite splits the weight (rule FusedGatedMLP[evaluated,packed]).
    folder = exports.genai(family, precision, **({"fuse_mlp_gate_up": "true"} if packed else {}))
    result = _fuse(folder, tmp_path / "fused")
    assert len(result.model.fused) == LAYERS and not result.model.skipped
    assert all(("packed" in n.rule) == packed for n in result.model.fused)
    # The builder's default-domain SimplifiedLayerNormalization has no ONNX schema: accepted, and said.
    assert any("SimplifiedLayerNormalization" in note for note in result.model.checks_skipped)
    original, fused = folder / "model.onnx", tmp_path / "fused" / "model.onnx"
    dtype = "float32" if precision == "fp32" else "float16"
    assert sessions.model_info(fused).dtype == dtype
    for batch, seq in ((1, 7), (2, 5)):
        feeds = sessions.decoder_inputs(sessions.model_info(original), batch, seq, past=0)
        want = ort_run(original, feeds)
        # Plain ORT (function bodies, optimizations off): the original's computation.
        body = ort_run(fused, feeds)
        # The plugin's exact native kernel, counted once per fused node.
        before = bridge.kernel_runs("matmul")
        kernel = ort_run(fused, feeds, plugin.session_options(cpu_kernel="matmul"))
        assert bridge.kernel_runs("matmul") - before == LAYERS
        for i, w in enumerate(want):
            c = compare(f"out{i}@{batch}x{seq}", body[i], w, limit=1e-6 if dtype == "float32" else tolerance(dtype))
            assert c.passed, c.detail
            c = compare(f"out{i}@{batch}x{seq}", kernel[i], w, limit=tolerance(dtype))  # type: ignore[arg-type]
            assert c.passed, c.detail


def _greedy(folder: Path, prompt: list[int], new_tokens: int) -> list[int]:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + new_tokens, min_length=len(prompt) + new_tokens,
                              do_sample=False)  # min_length: no early stop at a random eos
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([prompt], dtype=np.int32))
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)]


QUANTIZED = {  # the builder's MatMulNBits builds: (precision, options)
    "int4": ("int4", {}), "int4-zero-points": ("int4", {"is_symmetric": "false"}),
    "int4-block128": ("int4", {"block_size": "128"}), "int8": ("int8", {}),
}
# onnxruntime-genai 0.18 quantizes Gemma's tied embedding for GatherBlockQuantized through a
# Reshape of lm_head's float weight typed uint8 when asymmetric: ORT refuses its own model.
BUILDER_BROKEN = {("gemma", "int4-zero-points"): r"embed_tokens/Reshape.*does not match expected type"}


@pytest.mark.parametrize("build", list(QUANTIZED))
@pytest.mark.parametrize("family", list(GENAI_SPECS))
def test_quantized_builder_models_fuse_every_mlp_and_give_the_same_tokens(exports: Exports, tmp_path: Path,
                                                                           family: str, build: str) -> None:
    # Issue 16: three MatMulNBits projections fuse into FusedGatedMLPNBits, whose function body
    # (the original MatMulNBits nodes) is what plain ORT and genai run.
    precision, extra = QUANTIZED[build]
    folder = exports.genai(family, precision, **extra)
    result = _fuse(folder, tmp_path / "fused")
    assert len(result.model.fused) == LAYERS and not result.model.skipped, result.model.skipped
    assert {n.rule for n in result.model.fused} == {"FusedGatedMLPNBits[evaluated]"}
    original, fused = folder / "model.onnx", tmp_path / "fused" / "model.onnx"
    nodes = [n for n in onnx.load(str(fused), load_external_data=False).graph.node if ops.is_fused(n)]
    spec = ops.FUSED_GATED_MLP_NBITS
    assert len(nodes) == LAYERS and all(spec.matches(n) for n in nodes)
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attributes["bits"] == (8 if precision == "int8" else 4)
    assert attributes["block_size"] == int(extra.get("block_size", 32))
    zero_points = [name for name in nodes[0].input[spec.input_names.index("Z_gate"):][:3] if name]
    assert len(zero_points) == (3 if "is_symmetric" in extra else 0)
    if (family, build) in BUILDER_BROKEN:  # the builder's own model: ORT refuses it, so compare nothing
        with pytest.raises(Exception, match=BUILDER_BROKEN[family, build]):
            ort_run(original, {})
        return
    for batch, seq in ((1, 7), (2, 5)):
        feeds = sessions.decoder_inputs(sessions.model_info(original), batch, seq, past=0)
        for i, (got, want) in enumerate(zip(ort_run(fused, feeds), ort_run(original, feeds), strict=True)):
            c = compare(f"out{i}@{batch}x{seq}", got, want, limit=1e-6)
            assert c.passed, c.detail
    prompt = [5, 9, 33, 70, 101]
    assert _greedy(tmp_path / "fused", prompt, 8) == _greedy(folder, prompt, 8)


@pytest.mark.parametrize("packed", [False, True], ids=["separate", "fuse_mlp_gate_up"])
@pytest.mark.parametrize("family", list(GENAI_SPECS))
def test_genai_runs_the_written_folder_with_the_plugin_and_gives_the_same_tokens(
        exports: Exports, family: str, packed: bool, tmp_path: Path) -> None:
    folder = exports.genai(family, "fp32", **({"fuse_mlp_gate_up": "true"} if packed else {}))
    result = _fuse(folder, tmp_path / "fused")
    out = tmp_path / "fused"
    config = json.loads((out / CONFIG_NAME).read_text())
    library = config["model"]["decoder"]["session_options"]["custom_ops_library"]
    assert library == result.plugin == plugin.library_path().name and (out / library).is_file()
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(result.copied)
    prompt = [5, 9, 33, 70, 101]
    tokens = _greedy(out, prompt, 16)
    assert tokens == _greedy(folder, prompt, 16) and len(tokens) == len(prompt) + 16
    if packed:  # the packed weight is split at rewrite time: both halves stored, not the original
        assert len(result.model.fused) == LAYERS
    if family != "llama" or packed:
        return  # the library check below once is enough
    # genai really loads the library the config names: a broken one fails the model's load.
    # (A copy of the folder: the library loaded above stays mapped, and writing over a mapped
    # file kills the process with SIGBUS.)
    broken = shutil.copytree(out, tmp_path / "broken", ignore=shutil.ignore_patterns(library))
    (broken / library).write_bytes(b"not a library")
    with pytest.raises(Exception, match=r"(?i)libonnxfuse_ort\.so|custom op"):
        _greedy(broken, prompt, 2)


def test_unfuse_of_a_written_folder_removes_the_plugin(exports: Exports, tmp_path: Path) -> None:
    folder = exports.genai("llama", "fp32")
    _fuse(folder, tmp_path / "fused")
    back = rewrite_any(RewriteConfig(tmp_path / "fused", tmp_path / "back", unfuse=True))
    assert isinstance(back, FolderRewrite) and back.model.unfused == LAYERS and back.plugin is None
    config = json.loads((tmp_path / "back" / CONFIG_NAME).read_text())
    assert "custom_ops_library" not in config["model"]["decoder"]["session_options"]
    assert not (tmp_path / "back" / plugin.library_path().name).exists()


def _hostile(folder: Path, tmp: Path, how: str) -> tuple[Path, list[str]]:
    """A copy of the genai ``folder`` made hostile in one way; the extra CLI arguments."""
    bad = tmp / "bad"
    shutil.copytree(folder, bad)
    config_path = bad / CONFIG_NAME
    config = json.loads(config_path.read_text())
    decoder = config["model"]["decoder"]
    extra: list[str] = []
    if how == "filename-leaves":
        decoder["filename"] = "../model.onnx"
    elif how == "filename-absolute":
        decoder["filename"] = str(bad / "model.onnx")
    elif how == "library-leaves":
        decoder["session_options"]["custom_ops_library"] = "../../lib/evil.so"
    elif how == "nested-path-leaves":
        config["model"]["vision"] = {"filename": "sub/../../x.onnx"}
    elif how == "symlink":
        (bad / "tokenizer.json").unlink()
        os.symlink("/etc/passwd", bad / "tokenizer.json")
    elif how == "config-symlink":
        config_path.rename(bad / "real.json")
        os.symlink(bad / "real.json", config_path)
        return bad, extra
    elif how == "huge":
        config["pad"] = "x" * (1 << 20)
    elif how == "malformed":
        config_path.write_text('{"model": {"decoder": ')
        return bad, extra
    elif how == "deep":
        config_path.write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
        return bad, extra
    elif how == "not-an-object":
        config_path.write_text("[1, 2]")
        return bad, extra
    elif how == "no-decoder":
        del config["model"]["decoder"]
    elif how == "missing-model":
        (bad / "model.onnx").unlink()
    elif how == "output-inside":
        extra = ["-o", str(bad / "out")]
    elif how == "output-exists":
        (tmp / "out").mkdir()
    elif how == "force-over-another-folder":  # --force replaces only a genai folder
        (tmp / "out").mkdir()
        (tmp / "out" / "notes.txt").write_text("mine")
        extra = ["-o", str(tmp / "out"), "--force"]
    elif how == "output-alias":  # the input's own folder through a symlinked parent
        os.symlink(tmp, tmp / "alias")
        extra = ["-o", str(tmp / "alias" / "bad"), "--force"]
    config_path.write_text(json.dumps(config))
    return bad, extra


HOSTILE = {
    "filename-leaves": "leaves the folder", "filename-absolute": "leaves the folder",
    "library-leaves": "leaves the folder", "nested-path-leaves": "leaves the folder",
    "symlink": "is a symlink", "config-symlink": "not a regular file", "huge": "over 1048576",
    "malformed": "not valid JSON", "deep": "not valid JSON|nests deeper", "not-an-object": "not a JSON object",
    "no-decoder": "no model.decoder.filename", "missing-model": "is missing",
    "output-inside": "overlaps the input folder", "output-exists": "exists: pass --force",
    "force-over-another-folder": "is not an onnxruntime-genai folder", "output-alias": "overlaps the input folder",
}


@pytest.mark.parametrize("how", list(HOSTILE))
def test_a_hostile_folder_is_refused_with_one_line(exports: Exports, tmp_path: Path, how: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    bad, extra = _hostile(exports.genai("llama", "fp32"), tmp_path, how)
    before = sorted((p.name, p.stat().st_size) for p in bad.rglob("*") if not p.is_symlink())
    code = cli.main(["rewrite", str(bad), *(extra or ["-o", str(tmp_path / "out")]), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert __import__("re").search(HOSTILE[how], err), err
    assert sorted((p.name, p.stat().st_size) for p in bad.rglob("*") if not p.is_symlink()) == before
    if how == "force-over-another-folder":
        assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    elif how != "output-exists":
        assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_force_replaces_a_written_folder_whole(exports: Exports, tmp_path: Path) -> None:
    folder = exports.genai("llama", "fp32")
    _fuse(folder, tmp_path / "fused")
    (tmp_path / "fused" / "stale.txt").write_text("from an older run")
    again = rewrite_any(RewriteConfig(folder, tmp_path / "fused", force=True))
    assert isinstance(again, FolderRewrite) and len(again.model.fused) == LAYERS
    assert not (tmp_path / "fused" / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fused"]  # no stage or old copy left
