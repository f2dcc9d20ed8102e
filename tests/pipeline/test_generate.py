"""`onnxfuse generate`: greedy generation with the decoder's KV cache kept in ORT.

Oracles: the same model run without a cache on the whole sequence (a wrong cache, or a cache
re-fed, changes those logits), onnxruntime-genai's own greedy search on the same folder, and
the function body for the plugin's kernels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnxfuse.graph_rewrites import RewriteConfig
from onnxfuse.kernels.ort import bridge
from onnxfuse.numerics import compare, tolerance
from onnxfuse.pipeline import cli, sessions
from onnxfuse.pipeline.configs import GenerateConfig
from onnxfuse.pipeline.genai import rewrite_any
from onnxfuse.pipeline.generate import Decoder, GenerateResult, generate
from tests.helpers import Exports, ort_session
from tests.pipeline.test_genai import LAYERS, _greedy

PROMPT = (5, 9, 33, 70, 101)


@pytest.fixture(scope="module")
def fused_llama(exports: Exports, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = exports.genai("llama", "fp32")
    out = tmp_path_factory.mktemp("gen") / "fused"
    rewrite_any(RewriteConfig(folder, out))
    return folder, out


@pytest.mark.parametrize("producer", ["genai", "export --with-past"])
def test_every_step_matches_the_model_run_without_a_cache(exports: Exports, fused_llama: tuple[Path, Path],
                                                          producer: str) -> None:
    """Step k's logits (one token fed, the cache from ORT's own buffers) equal the last
    position of the whole sequence run from an empty cache: a cache dropped, re-fed, misaligned
    (positions, mask), stale or mixed up between layers changes them. genai lists its outputs
    keys first, our exports layer by layer: both orders."""
    path = (fused_llama[0] / "model.onnx" if producer == "genai"
            else exports.export("tiny", with_past=True).onnx_path)
    info = sessions.model_info(path)
    decoder = Decoder(path, ort_session(path), info)
    tokens = list(PROMPT)
    logits = decoder.prefill(tokens)
    plain = ort_session(path)
    for _ in range(6):
        tokens.append(int(logits[0].argmax()))
        logits = decoder.step(tokens[-1])
        assert decoder.length == len(tokens)
        feeds = sessions.decoder_inputs(info, 1, len(tokens), past=0)
        feeds["input_ids"] = np.asarray([tokens], dtype=feeds["input_ids"].dtype)
        full = plain.run(["logits"], feeds)[0][:, -1]
        c = compare("last logits", logits, full, limit=1e-5)
        assert c.passed, c.detail


def test_the_fused_folder_generates_genais_tokens(fused_llama: tuple[Path, Path], tmp_path: Path) -> None:
    original, fused = fused_llama
    want = _greedy(original, list(PROMPT), 12)[len(PROMPT):]  # genai's own greedy search
    result: GenerateResult = generate(GenerateConfig(fused, ids=PROMPT, max_new_tokens=12, stop_at_eos=False,
                                     report=tmp_path / "g.json"))
    # genai suppresses the end-of-sequence token (2) below min_length: equal up to our first one.
    stop = result.tokens.index(2) if 2 in result.tokens else len(want)
    assert stop >= 5
    assert list(result.tokens[:stop]) == want[:stop] and len(result.tokens) == 12
    assert generate(GenerateConfig(original, ids=PROMPT, max_new_tokens=12, stop_at_eos=False)).tokens == result.tokens
    report = json.loads((tmp_path / "g.json").read_text())
    assert report["tokens"] == list(result.tokens) and report["prompt_ids"] == list(PROMPT)
    assert report["prefill_tokens_per_s"] > 0 and report["decode_tokens_per_s"] > 0
    assert len(report["decode_seconds"]) == 11 and report["onnxfuse_version"]


def test_the_plugins_kernel_runs_each_layer_once_a_step(fused_llama: tuple[Path, Path]) -> None:
    _, fused = fused_llama
    body = generate(GenerateConfig(fused, ids=PROMPT, max_new_tokens=8, stop_at_eos=False, backend="none"))
    # The exact native kernel (parity's): counted once per fused node per step.
    from onnxfuse.kernels import ort as plugin

    info = sessions.model_info(fused / "model.onnx")
    before = bridge.kernel_runs("matmul")
    decoder = Decoder(fused / "model.onnx", sessions.session(
        fused / "model.onnx", optimize=True, options=plugin.session_options(cpu_kernel="matmul")), info)
    from onnxfuse.pipeline.generate import greedy

    tokens, _, steps = greedy(decoder, PROMPT, 8)
    assert tokens == list(body.tokens)
    assert bridge.kernel_runs("matmul") - before == LAYERS * (1 + len(steps))


@pytest.mark.interpreter
@pytest.mark.parametrize("producer", ["genai", "export --with-past"])
def test_the_triton_backend_gives_the_function_bodys_tokens(exports: Exports, fused_llama: tuple[Path, Path],
                                                            producer: str) -> None:
    """The Triton kernel (interpreted) through the plugin on a decoder's fused nodes: the
    function body's tokens, one launch per layer per step."""
    fused = fused_llama[1] if producer == "genai" else exports.fused_pair("tiny", with_past=True)[1]
    body = generate(GenerateConfig(fused, ids=PROMPT, max_new_tokens=4, stop_at_eos=False, backend="none"))
    before = bridge.calls()
    triton = generate(GenerateConfig(fused, ids=PROMPT, max_new_tokens=4, stop_at_eos=False, backend="triton"))
    assert triton.tokens == body.tokens and triton.implementation == "triton (interpreter)"
    assert bridge.calls() - before == LAYERS * (1 + 3)  # prefill + 3 decode steps


def test_a_prompt_goes_through_the_folders_tokenizer(fused_llama: tuple[Path, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _, fused = fused_llama
    code = cli.main(["generate", str(fused), "--prompt", "hi!", "--max-new-tokens", "3", "-q",
                     "--no-stop-at-eos"])
    out = capsys.readouterr()
    assert code == 0 and "tokens/s" in out.err and out.out.strip()
    result = generate(GenerateConfig(fused, prompt="hi!", max_new_tokens=3, stop_at_eos=False))
    assert result.prompt_ids == tuple(b + 0 for b in result.prompt_ids) and len(result.prompt_ids) == 3


@pytest.mark.parametrize("args,message", [
    (["--ids", "1,2", "--prompt", "x"], "not both"),
    ([], "pass --prompt TEXT or --ids"),
    (["--ids", "1,x"], "expected token ids"),
])
def test_bad_arguments_are_one_line(fused_llama: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
                                    args: list[str], message: str) -> None:
    _, fused = fused_llama
    try:
        code = cli.main(["generate", str(fused), *args, "-q"])
    except SystemExit as e:  # argparse's own usage errors
        code = e.code  # type: ignore[assignment]
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_model_without_a_cache_is_refused_naming_the_fix(exports: Exports,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    model = exports.export("tiny").onnx_path
    assert cli.main(["generate", str(model), "--ids", "1,2", "-q"]) == 2
    err = capsys.readouterr().err
    assert "has no KV cache" in err and "--with-past" in err and len(err.strip().splitlines()) == 1


def test_fp16_generation_matches_the_uncached_model(exports: Exports) -> None:
    # llama: genai's fp16 CPU models with fewer KV heads than heads (qwen2, mistral, gemma) fail
    # their own decode step in ORT 1.32, genai's greedy search included (a Cast ORT inserts
    # re-uses a buffer of the prefill's shape): an upstream bug, not ours.
    path = exports.genai("llama", "fp16") / "model.onnx"
    info = sessions.model_info(path)
    decoder = Decoder(path, sessions.session(path, optimize=True), info)
    tokens = list(PROMPT)
    logits = decoder.prefill(tokens)
    tokens.append(int(logits[0].argmax()))
    logits = decoder.step(tokens[-1])
    feeds = sessions.decoder_inputs(info, 1, len(tokens), past=0)
    feeds["input_ids"] = np.asarray([tokens], dtype=feeds["input_ids"].dtype)
    full = sessions.session(path, optimize=True).run(["logits"], feeds)[0][:, -1]
    assert compare("last logits", logits, full.astype(np.float32), limit=tolerance("float16")).passed


def test_an_export_with_past_generates_torchs_greedy_tokens(exports: Exports) -> None:
    """`export --with-past` then `generate`: the fused and the unfused decoder give torch's own
    greedy tokens (transformers' `generate` with its cache)."""
    import torch

    from onnxfuse import models

    src, fused = exports.fused_pair("tiny", with_past=True)
    ex = models.build("tiny", with_past=True)
    with torch.no_grad():
        want = ex.module.model.generate(torch.tensor([PROMPT]), max_new_tokens=10, min_new_tokens=10,
                                        do_sample=False, attention_mask=torch.ones(1, len(PROMPT)))
    want_tokens = tuple(int(t) for t in want[0, len(PROMPT):])
    for model in (src, fused):
        result = generate(GenerateConfig(model, ids=PROMPT, max_new_tokens=10, stop_at_eos=False))
        assert result.tokens == want_tokens, model.name


@pytest.mark.smollm2
@pytest.mark.slow  # the with-past export: 2.5-3 min, shared with tests/exporters/test_export_past.py
def test_smollm2_with_past_generates_torchs_32_greedy_tokens(exports: Exports) -> None:
    """The real checkpoint: `generate` on the fused and the unfused with-past export gives the
    32 tokens of transformers' greedy `generate` (its own cache) for the prompt through the
    GGUF's tokenizer, and the kernel path (the plugin's exact CPU kernel) the same."""
    import torch

    from onnxfuse import models
    from onnxfuse.kernels import ort as plugin
    from onnxfuse.pipeline.generate import find_tokenizer, greedy

    src, fused = exports.fused_pair("smollm2", with_past=True)
    tok = find_tokenizer(src, sessions.model_info(src))
    assert tok is not None
    ids = tuple(tok.encode("The capital of France is"))
    ex = models.build("smollm2", with_past=True)
    with torch.no_grad():
        out = ex.module.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                                       max_new_tokens=32, min_new_tokens=32, do_sample=False)
    want = tuple(int(t) for t in out[0, len(ids):])
    for model in (src, fused):
        assert generate(GenerateConfig(model, ids=ids, max_new_tokens=32, stop_at_eos=False)).tokens == want
    decoder = Decoder(fused, sessions.session(fused, optimize=True, options=plugin.session_options(cpu_kernel="matmul")),
                      sessions.model_info(fused))
    before = bridge.kernel_runs("matmul")
    tokens, _, steps = greedy(decoder, ids, 32)
    assert tuple(tokens) == want and bridge.kernel_runs("matmul") - before == 30 * (1 + len(steps))
    assert "Paris" in tok.decode(list(want))
