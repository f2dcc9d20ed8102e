"""Decoders with a KV cache (``--with-past``): names and dynamic dims, verification at a
prefill and a decode step, one fusion per decoder layer, and a cache the graph really reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from onnxfuse import ops
from onnxfuse.errors import UserError
from onnxfuse.exporters import SECOND_PAST_SHAPE, ExportConfig, ExportResult, export
from onnxfuse.models import Exportable, build, get_spec, make_token_inputs, past_names
from onnxfuse.numerics import compare, tolerance
from tests.conftest import run_cli
from tests.helpers import Exports, ort_run, ort_session

# Every family the exporters support: grouped KV heads (Mistral, Qwen2, Gemma), QKV bias
# (Qwen2), an explicit head_dim (Gemma), a packed QKV projection (Phi-3), a sliding window
# (Mistral: its mask applies the window; the cache keeps every position).
PAST_SPECS = ["tiny", "tiny-mistral", "tiny-qwen2", "tiny-gemma", "tiny-phi3"]


def _dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _assert_past_io(r: ExportResult, kv_heads: int, head_dim: int, vocab: int) -> None:
    """The names onnxruntime-genai and optimum use, int64 token inputs, and dynamic batch,
    sequence, past and total (past + sequence) lengths, with the KV layout
    [batch, kv_heads, length, head_dim]."""
    past, present = past_names(r.layers)
    assert r.with_past
    assert r.input_names == ("input_ids", "attention_mask", "position_ids", *past)
    assert r.output_names == ("logits", *present)
    header = onnx.load(str(r.onnx_path), load_external_data=False)
    inputs = {v.name: v for v in header.graph.input}
    outputs = {v.name: v for v in header.graph.output}
    int64 = onnx.TensorProto.INT64
    for name, dims in (("input_ids", ["batch", "seq"]), ("attention_mask", ["batch", "total_seq"]),
                       ("position_ids", ["batch", "seq"])):
        assert _dims(inputs[name]) == dims and inputs[name].type.tensor_type.elem_type == int64, name
    assert _dims(outputs["logits"]) == ["batch", "seq", vocab]
    for name in past:
        assert _dims(inputs[name]) == ["batch", kv_heads, "past_seq", head_dim], name
    for name in present:
        assert _dims(outputs[name]) == ["batch", kv_heads, "total_seq", head_dim], name
    assert {p.key: p.value for p in header.metadata_props}["onnxfuse.with_past"] == "true"


def _spec_kv(model: str) -> tuple[int, int]:
    """(kv heads, head dim) as the spec declares them."""
    cfg = get_spec(model).config
    heads = cfg["num_attention_heads"]
    return cfg.get("num_key_value_heads", heads), cfg.get("head_dim", cfg["hidden_size"] // heads)


@pytest.mark.parametrize("model", PAST_SPECS)
def test_with_past_export_verifies_at_prefill_and_decode(exports: Exports, model: str) -> None:
    r = exports.export(model, with_past=True)
    spec = get_spec(model)
    _assert_past_io(r, *_spec_kv(model), vocab=spec.config["vocab_size"])
    # A prefill (empty cache), the decode step after it, a chunk on a cache the trace never saw.
    assert [(c.batch, c.seq, c.past) for c in r.checks] == [
        (spec.batch, spec.seq, 0), (spec.batch, 1, spec.seq), SECOND_PAST_SHAPE]
    assert r.verified
    for c in r.checks:
        assert tuple(o.name for o in c.outputs) == r.output_names
        assert all(o.limit == 1e-5 and o.rel_l2 <= 1e-5 for o in c.outputs), c


def test_torchscript_exports_with_past_float16(exports: Exports) -> None:
    r = exports.export("tiny", exporter="torchscript", dtype="float16", with_past=True)
    _assert_past_io(r, *_spec_kv("tiny"), vocab=256)
    assert r.verified and [c.past for c in r.checks] == [0, 16, SECOND_PAST_SHAPE[2]]
    assert all(o.limit == 5e-3 and o.rel_l2 <= 5e-3 for c in r.checks for o in c.outputs)


# Phi-3's packed gate/up projection (one MatMul, then a Split) fuses too (split at rewrite time).
@pytest.mark.parametrize("model", PAST_SPECS)
def test_with_past_fuses_one_node_per_layer_and_still_matches(exports: Exports, model: str) -> None:
    src, fused = exports.fused_pair(model, with_past=True)
    nodes = [n for n in onnx.load(str(fused), load_external_data=False).graph.node if ops.is_fused(n)]
    # One per decoder layer: as many as layers, each on its own weights.
    assert len(nodes) == exports.export(model, with_past=True).layers == 2
    assert len({tuple(n.input[1:]) for n in nodes}) == len(nodes)
    _assert_fused_matches(build(model, with_past=True), src, fused)


def _assert_fused_matches(ex: Exportable, src: Path, fused: Path) -> None:
    """The fused model in plain ONNX Runtime (function bodies, no plugin) gives the original's
    outputs at a decode step, where the cache holds positions."""
    feeds = {n: t.numpy() for n, t in zip(ex.input_names, ex.make_inputs(2, 1, 9), strict=True)}
    got, want = ort_run(fused, feeds), ort_run(src, feeds)
    for name, g, w in zip(ex.output_names, got, want, strict=True):
        c = compare(name, g, w, limit=tolerance(ex.dtype))
        assert c.passed, c.detail


def test_rewrite_report_counts_one_fusion_per_layer(exports: Exports, tmp_path: Path) -> None:
    src = exports.export("tiny", with_past=True).onnx_path
    proc = run_cli(["rewrite", str(src), "-o", "fused.onnx", "--json", "r.json"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "r.json").read_text())["fused"] == 2


def _assert_decode_reads_its_inputs(ex: Exportable, path: Path, past: int = 8) -> None:
    """One decode step on the cache of ``past`` tokens gives torch's logits for the last of
    ``past + 1`` tokens run as one sequence (no cache), and present starts with the past it
    was fed, unchanged. Each input counts: a zeroed cache, the cache of other tokens, a mask
    that hides the first cached position, or positions counted as if nothing were cached
    move the logits by over 100x the float32 ceiling (tiny: 0.57, 0.84, 0.18, 1.0e-2)."""
    step = ex.make_inputs(1, 1, past)  # batch 1: no padding
    ids, _ = make_token_inputs(int(ex.config.vocab_size), 1, past + 1, seed=0, mask="ones")
    assert torch.equal(step[0], ids[:, -1:])
    feeds = {n: t.numpy() for n, t in zip(ex.input_names, step, strict=True)}
    session = ort_session(path)
    got = session.run(None, feeds)
    with torch.no_grad():
        lm = ex.module.model
        whole = lm(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits[:, -1:]
    c = compare("logits", got[0], whole.numpy(), limit=tolerance(ex.dtype))
    assert c.passed, c.detail
    cache_names = ex.input_names[3:]
    for name, present in zip(cache_names, got[1:], strict=True):
        assert np.array_equal(present[:, :, :past], feeds[name]), name

    other = (ids[:, :past] + 1) % int(ex.config.vocab_size)
    with torch.no_grad():
        wrong = ex.module(other, torch.ones_like(other), torch.arange(past)[None],
                          *(t[:, :, :0] for t in step[3:]))[1:]
    hidden = feeds["attention_mask"].copy()
    hidden[:, 0] = 0
    for label, changed in (
        ("a zeroed cache", {n: np.zeros_like(feeds[n]) for n in cache_names}),
        ("other tokens' cache", {n: t.numpy() for n, t in zip(cache_names, wrong, strict=True)}),
        ("a mask hiding the first cached position", {"attention_mask": hidden}),
        ("positions that ignore the cache", {"position_ids": feeds["position_ids"] - past}),
    ):
        logits = session.run(["logits"], {**feeds, **changed})[0]
        rel = compare("logits", logits, got[0], limit=0.0).rel_l2
        assert rel > 100 * tolerance("float32"), f"{label} moves the logits by only {rel:.2e}: ignored"


def test_decode_reads_its_inputs_and_matches_the_whole_sequence(exports: Exports) -> None:
    _assert_decode_reads_its_inputs(build("tiny", with_past=True), exports.export("tiny", with_past=True).onnx_path)


def test_with_past_needs_the_full_model(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"not --part mlp: use --part full --with-past"):
        export(ExportConfig("tiny", tmp_path / "m.onnx", part="mlp", with_past=True))
    assert list(tmp_path.iterdir()) == []  # the command line's exit 2: tests/pipeline/test_cli.py


def test_a_model_without_cache_takes_no_past() -> None:
    with pytest.raises(UserError, match=r"has no KV cache.*--with-past"):
        build("tiny", part="mlp").make_inputs(1, 1, 3)


@pytest.mark.smollm2
@pytest.mark.slow  # 6 min (export 2.5-3), 2.7 GiB peak RSS on 2 busy cores
def test_smollm2_with_past(exports: Exports) -> None:
    r = exports.export("smollm2", with_past=True)
    ex = build("smollm2", with_past=True)
    _assert_past_io(r, ex.config.num_key_value_heads, ex.config.head_dim, ex.config.vocab_size)
    assert r.layers == 30 and r.verified
    assert [(c.batch, c.seq, c.past) for c in r.checks] == [(2, 16, 0), (2, 1, 16), SECOND_PAST_SHAPE]
    src, fused = exports.fused_pair("smollm2", with_past=True)
    assert sum(ops.is_fused(n) for n in onnx.load(str(fused), load_external_data=False).graph.node) == 30
    _assert_fused_matches(ex, src, fused)
    _assert_decode_reads_its_inputs(ex, src)
