"""``onnxfuse generate``: greedy generation in ONNX Runtime with the model's KV cache.

The model is a decoder under the names onnxruntime-genai and optimum use (``export
--with-past`` writes them): inputs ``input_ids``, ``attention_mask``, optional
``position_ids``, ``past_key_values.{i}.key/.value``; outputs ``logits``,
``present.{i}.key/.value``. Or a genai folder: its decoder and tokenizer.

One session, bound once per step with ORT's I/O binding: the prompt runs as a prefill with an
empty cache; each decode step feeds one token, and the previous step's ``present`` values,
still ORT's own buffers (``OrtValue``), as the next ``past``: the cache never goes through
numpy and is never re-fed as tokens. Only the last position's logits are read back.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxfuse.errors import InvalidModelError, UnsupportedError, UserError, first_line
from onnxfuse.fileio import check_output, write_report
from onnxfuse.pipeline import sessions
from onnxfuse.pipeline.configs import GenerateConfig

__all__ = ["Decoder", "GenerateConfig", "GenerateResult", "generate", "greedy"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GenerateResult:
    model: Path
    prompt_ids: tuple[int, ...]
    tokens: tuple[int, ...]  # the new tokens only
    text: str | None  # the new tokens decoded, where a tokenizer is known
    prefill_seconds: float
    decode_seconds: tuple[float, ...]  # one per decode step
    implementation: str

    @property
    def prefill_tokens_per_s(self) -> float:
        return len(self.prompt_ids) / self.prefill_seconds

    @property
    def decode_tokens_per_s(self) -> float | None:
        total = sum(self.decode_seconds)
        return len(self.decode_seconds) / total if total > 0 else None

    def as_dict(self) -> dict[str, object]:
        return {"model": str(self.model), "prompt_ids": list(self.prompt_ids), "tokens": list(self.tokens),
                "text": self.text, "prefill_tokens_per_s": self.prefill_tokens_per_s,
                "decode_tokens_per_s": self.decode_tokens_per_s, "prefill_seconds": self.prefill_seconds,
                "decode_seconds": list(self.decode_seconds), "implementation": self.implementation}


class Decoder:
    """A decoder session stepped with I/O binding (see the module's docstring).

    Raises (constructor):
        UnsupportedError: the model has no KV-cache inputs, or inputs it cannot feed.
    """

    def __init__(self, path: Path, sess: Any, info: sessions.ModelInfo) -> None:
        if not sessions.is_decoder(info):
            raise UnsupportedError(f"{path} has no KV cache (inputs past_key_values.*): export it with "
                                   "`onnxfuse export --with-past`, or name a genai model folder")
        self.path, self.sess, self.info = path, sess, info
        self.layers = sessions.num_layers(info)
        self.types = {name: onnx.helper.tensor_dtype_to_np_dtype(elem) for name, elem, _ in info.inputs}
        outputs = [o.name for o in sess.get_outputs()]
        self.present = [sessions.PRESENT_KEY.format(i) for i in range(self.layers)] + \
                       [sessions.PRESENT_VALUE.format(i) for i in range(self.layers)]
        self.past = [sessions.PAST_KEY.format(i) for i in range(self.layers)] + \
                    [sessions.PAST_VALUE.format(i) for i in range(self.layers)]
        missing = [n for n in ["logits", *self.present] if n not in outputs]
        if missing:
            raise UnsupportedError(f"{path} lacks the outputs {', '.join(missing)}: a decoder with a cache "
                                   "returns logits and present.{i}.key/.value")
        self.cache: list[Any] | None = None
        self.length = 0

    def _run(self, ids: np.ndarray) -> np.ndarray:
        binding = self.sess.io_binding()
        batch, seq = ids.shape
        feeds: dict[str, np.ndarray] = {"input_ids": ids.astype(self.types["input_ids"])}
        if "attention_mask" in self.types:
            feeds["attention_mask"] = np.ones((batch, self.length + seq), self.types["attention_mask"])
        if "position_ids" in self.types:
            feeds["position_ids"] = np.arange(self.length, self.length + seq)[None].repeat(batch, 0).astype(
                self.types["position_ids"])
        if self.cache is None:  # an empty cache of the model's own type and head sizes
            empty = sessions.decoder_inputs(self.info, batch, 0, past=0)
            feeds.update({n: empty[n] for n in self.past})
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        if self.cache is not None:
            for name, value in zip(self.past, self.cache, strict=True):
                binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits")
        for name in self.present:
            binding.bind_output(name)  # ORT allocates: kept as OrtValues for the next step
        try:
            self.sess.run_with_iobinding(binding)
        except Exception as e:
            raise InvalidModelError(f"ONNX Runtime cannot run {self.path}: {first_line(e)}") from None
        # In the order they were bound (not the session's output order).
        by_name = dict(zip(["logits", *self.present], binding.get_outputs(), strict=True))
        self.cache = [by_name[n] for n in self.present]
        self.length += seq
        logits = by_name["logits"].numpy()
        return np.asarray(logits[:, -1], dtype=np.float32)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Run the prompt from an empty cache; the last position's logits, [1, vocab]."""
        self.cache, self.length = None, 0
        return self._run(np.asarray([list(ids)], dtype=np.int64))

    def step(self, token: int) -> np.ndarray:
        """One token after the cache; its logits, [1, vocab]."""
        if self.cache is None:
            raise UserError("decode step before the prefill")
        return self._run(np.asarray([[token]], dtype=np.int64))


def greedy(decoder: Decoder, prompt: Sequence[int], new_tokens: int, eos: int | None = None,
           clock: Callable[[], float] = time.perf_counter) -> tuple[list[int], float, list[float]]:
    """Greedy tokens after ``prompt`` (``new_tokens`` of them, fewer if ``eos`` comes), the
    prefill's seconds and each decode step's."""
    start = clock()
    logits = decoder.prefill(prompt)
    prefill = clock() - start
    tokens: list[int] = []
    steps: list[float] = []
    while True:
        token = int(logits[0].argmax())
        tokens.append(token)
        if len(tokens) == new_tokens or token == eos:
            return tokens, prefill, steps
        start = clock()
        logits = decoder.step(token)
        steps.append(clock() - start)


class _Tokenizer:
    """encode/decode/eos of a tokenizer that lies beside the model (``tokenizer.json``) or
    that the model's recorded source checkpoint has."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text).input_ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tok.decode(list(ids)))

    @property
    def eos(self) -> int | None:
        eos = getattr(self.tok, "eos_token_id", None)
        return int(eos) if isinstance(eos, int) else None


def checkpoint_tokenizer(model: str) -> Any | None:
    """The transformers tokenizer of the checkpoint ``model`` names (a GGUF file or package,
    a Hugging Face folder), or ``None`` for a spec without one or a folder without tokenizer files.

    Raises:
        UserError: ``model`` names nothing (:func:`onnxfuse.models.resolve`).
    """
    import transformers

    from onnxfuse import models

    source = models.resolve(model)
    if source.path is None:
        return None
    where, kwargs = ((source.path.parent, {"gguf_file": source.path.name}) if source.kind in ("gguf", "packaged")
                     else (source.path, {}))
    return transformers.AutoTokenizer.from_pretrained(where, local_files_only=True, **kwargs)


def find_tokenizer(path: Path, info: sessions.ModelInfo) -> _Tokenizer | None:
    """The tokenizer of the model at ``path``: the one beside it (``tokenizer.json``, with
    ``tokenizer_config.json`` where present: genai folders, exports of checkpoint folders),
    else its recorded source's (:func:`checkpoint_tokenizer`), else ``None``."""
    import transformers

    try:
        if (path.parent / "tokenizer.json").is_file():
            return _Tokenizer(transformers.AutoTokenizer.from_pretrained(path.parent, local_files_only=True))
        if info.source is None:
            return None
        tok = checkpoint_tokenizer(info.source)
    except UserError:
        return None
    except Exception:  # no tokenizer files after all: ids only
        return None
    return None if tok is None else _Tokenizer(tok)


def _model_path(model: Path) -> Path:
    """The decoder file of ``model`` (a file, or a genai folder's decoder)."""
    from onnxfuse.pipeline import genai

    if genai.is_genai_folder(model):
        config = genai.read_config(model)
        return model / genai.checked_path(model, config["model"]["decoder"]["filename"], "model.decoder.filename")
    return model


def generate(config: GenerateConfig) -> GenerateResult:
    """Greedy generation (see the module's docstring).

    Raises:
        UserError: no prompt and no ids, a prompt without a tokenizer, a model without a
            cache; InvalidModelError: ORT cannot run it.
    """
    report = check_output(config.report, force=config.force, inputs=[config.model]) if config.report else None
    path = _model_path(Path(config.model))
    info = sessions.model_info(path)
    tokenizer = find_tokenizer(path, info)
    if config.ids is not None:
        prompt = list(config.ids)
    elif config.prompt is not None:
        if tokenizer is None:
            raise UserError(f"no tokenizer is known for {path} (no tokenizer.json beside it, no checkpoint "
                            "recorded): pass --ids 1,2,3 instead of --prompt")
        prompt = tokenizer.encode(config.prompt)
    else:
        raise UserError("nothing to generate from: pass --prompt TEXT or --ids 1,2,3")
    if not prompt:
        raise UserError("the prompt has no tokens: pass a longer --prompt or some --ids")
    impl = sessions.implementation(config.backend, config.device)
    factory = sessions.plugin_options(config.backend, config.device)
    sess = sessions.session(path, device=config.device, optimize=True, options=factory() if factory else None)
    decoder = Decoder(path, sess, info)
    log.info("greedy generation of %d token(s) after %d prompt token(s); fused nodes run on: %s",
             config.max_new_tokens, len(prompt), impl.name)
    eos = tokenizer.eos if tokenizer is not None and config.stop_at_eos else None
    tokens, prefill, steps = greedy(decoder, prompt, config.max_new_tokens, eos)
    text = tokenizer.decode(tokens) if tokenizer is not None else None
    result = GenerateResult(path, tuple(prompt), tuple(tokens), text, prefill, tuple(steps), impl.name)
    if report is not None:
        write_report(report, result.as_dict())
    return result
