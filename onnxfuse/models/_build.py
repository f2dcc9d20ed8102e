"""Build exportable modules (full model or one isolated MLP) with deterministic inputs."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, Protocol

import torch

from onnxfuse.errors import ModelNotFoundError, UserError
from onnxfuse.models._checkpoints import (
    PACKAGED,
    check_checkpoint,
    find_packaged_gguf,
    load_pretrained,
)
from onnxfuse.models._specs import PARTS, SPECS, ModelSpec, Part, get_spec
from onnxfuse.numerics import DTYPES, DType

__all__ = ["Exportable", "InputMaker", "ModelSource", "Part", "build", "check_part", "load_causal_lm",
           "make_token_inputs", "past_names", "resolve"]

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
}
# Example-input shape of real checkpoints (specs carry their own).
_CHECKPOINT_BATCH, _CHECKPOINT_SEQ = 2, 16


class CausalLMWrapper(torch.nn.Module):
    """``forward(input_ids, attention_mask)`` returning the model output as a tuple
    (``(logits,)``; no KV cache), as the reference notebook wraps its Llama."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return tuple(out.to_tuple())


class CausalLMWithPastWrapper(torch.nn.Module):
    """``forward(input_ids, attention_mask, position_ids, *past)`` returning ``(logits,
    *present)``: a decoder step on a KV cache, flat as ONNX needs it.

    ``past`` is ``key_0, value_0, key_1, value_1, ...``, each ``[batch, kv_heads, past,
    head_dim]``; ``present`` the same after appending this step's ``seq`` positions. The cache
    is a plain ``DynamicCache`` of full layers, not one built from the config: a
    sliding-window model (Mistral) then keeps every position and applies its window through
    the mask, so every family's present is ``past + seq`` long, as ``attention_mask`` is.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(list(zip(past[0::2], past[1::2], strict=True)))
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, use_cache=True)
        return (out.logits, *(t for layer in out.cache.layers for t in (layer.keys, layer.values)))


class MLPWrapper(torch.nn.Module):
    """One decoder layer's MLP as a module of its own: ``forward(hidden_states) -> (y,)``."""

    def __init__(self, mlp: torch.nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.mlp(hidden_states),)


class InputMaker(Protocol):
    """``make_inputs(batch, seq, past=0)`` → a module's positional inputs: ``seq`` new positions
    on a KV cache of ``past`` positions (a module without a cache takes ``past=0`` only)."""

    def __call__(self, batch: int, seq: int, past: int = 0, /) -> tuple[torch.Tensor, ...]: ...


# Dynamic axes of a module without a KV cache: every input and output's.
_BATCH_SEQ: Mapping[int, str] = MappingProxyType({0: "batch", 1: "seq"})


def past_names(layers: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The KV cache's input and output names for ``layers`` decoder layers, as
    onnxruntime-genai and optimum name them: ``past_key_values.{i}.key/.value`` and
    ``present.{i}.key/.value``."""
    pairs = [(i, kv) for i in range(layers) for kv in ("key", "value")]
    return (tuple(f"past_key_values.{i}.{kv}" for i, kv in pairs),
            tuple(f"present.{i}.{kv}" for i, kv in pairs))


@dataclasses.dataclass(frozen=True)
class Exportable:
    """A module ready for ``torch.onnx.export``, with its deterministic inputs.

    Attributes:
        name: model name, with ``/mlp`` for an isolated MLP (e.g. ``seed/mlp``).
        module: the module in eval mode, in ``dtype``.
        dtype: element type of the weights and float activations.
        input_names, output_names: names the ONNX graph gets.
        batch, seq: shape of the example inputs.
        make_inputs: ``make_inputs(batch, seq, past=0)`` → the module's positional inputs; the
            same arguments always give the same tensors.
        config: the transformers config of the model.
        layers: number of decoder layers in ``module``.
        with_past: the module takes and returns a KV cache (:class:`CausalLMWithPastWrapper`).
        axes: each input's and output's dynamic axes, ``{name: {axis: dim name}}``; equal dim
            names are equal sizes. Without a cache: axis 0 ``batch`` and 1 ``seq`` everywhere.
    """

    name: str
    module: torch.nn.Module
    dtype: DType
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    batch: int
    seq: int
    make_inputs: InputMaker
    config: Any
    layers: int
    with_past: bool = False
    axes: Mapping[str, Mapping[int, str]] = dataclasses.field(default_factory=dict)

    def dynamic_axes(self, name: str) -> Mapping[int, str]:
        """The dynamic axes of input or output ``name``."""
        return self.axes.get(name, _BATCH_SEQ)

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        return self.make_inputs(self.batch, self.seq)


Mask = Literal["tril", "ones"]


def make_token_inputs(vocab_size: int, batch: int, seq: int, seed: int,
                      mask: Mask = "tril") -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded int64 token ids and a float32 attention mask.

    ``tril`` is the reference notebook's mask, ``torch.tril(torch.ones(batch, seq))``: row
    ``b`` keeps only the first ``b + 1`` tokens, so most positions attend to a single key.
    ``ones`` is the mask of real use (no padding). Real checkpoints are verified with
    ``ones``: under ``tril``, SmolLM2's 30 layers amplify float32 reassociation to a rel L2 of
    1.7e-4 on batch 1 × seq 37 (7.5e-7 with ``ones``), a property of the input, not the export.
    """
    if batch < 1 or seq < 1:
        raise UserError(f"batch and seq must be >= 1, got batch={batch} seq={seq}")
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, seq), generator=gen, dtype=torch.int64)
    ones = torch.ones(batch, seq, dtype=torch.float32)
    return ids, (torch.tril(ones) if mask == "tril" else ones)


def check_part(part: str, with_past: bool = False) -> None:
    """Refuse an unknown part, and a KV cache on anything but the full model.

    Raises:
        UserError: naming the value and the way out.
    """
    if part not in PARTS:
        raise UserError(f"unknown part {part!r}: choose one of {', '.join(PARTS)}")
    if with_past and part != "full":
        raise UserError(f"--with-past exports the whole decoder with its KV cache, not --part {part}: "
                        "use --part full --with-past, or --part mlp without --with-past")


def _no_past(name: str, past: int) -> None:
    if past:
        raise UserError(f"{name} has no KV cache, so it takes no past of {past} positions: "
                        "export the model with --with-past for a decoder with a cache")


def _with_past(name: str, lm: torch.nn.Module, dtype: DType, batch: int, seq: int, seed: int,
               layers: int) -> Exportable:
    """The decoder with a KV cache (:class:`CausalLMWithPastWrapper`) and its inputs."""
    module = CausalLMWithPastWrapper(lm).eval()
    config: Any = lm.config
    past_in, present_out = past_names(layers)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    vocab = int(config.vocab_size)

    def inputs(bb: int, ss: int, past: int = 0) -> tuple[torch.Tensor, ...]:
        """``ss`` new tokens after ``past`` cached ones: the cache is the model's own, computed
        on the first ``past`` tokens, left-padded as batched generation pads it (row ``b``
        starts with ``min(b, past)`` padding positions), so that ``attention_mask`` matters;
        positions count the unpadded tokens before each one (padding gets 1), as transformers'
        ``generate`` does. The new tokens are never padding: a padded query attends to
        nothing, and its logits (noise, 1.3e-2 rel L2 apart in float16) are no one's output."""
        if past < 0:
            raise UserError(f"past must be >= 0, got {past}")
        ids, _ = make_token_inputs(vocab, bb, past + ss, seed, "ones")
        mask = (torch.arange(past + ss) >= torch.arange(bb).clamp(max=past)[:, None]).to(torch.int64)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        cache = tuple(torch.zeros(bb, kv_heads, 0, head_dim, dtype=TORCH_DTYPES[dtype]) for _ in past_in)
        if past:
            with torch.no_grad():
                prefix = module(ids[:, :past], mask[:, :past], positions[:, :past], *cache)
            cache = tuple(t.detach().contiguous() for t in prefix[1:])
        return (ids[:, past:], mask, positions[:, past:], *cache)

    step, cached, total = {0: "batch", 1: "seq"}, {0: "batch", 2: "past_seq"}, {0: "batch", 2: "total_seq"}
    axes = {"input_ids": step, "attention_mask": {0: "batch", 1: "total_seq"}, "position_ids": step,
            "logits": step, **{n: cached for n in past_in}, **{n: total for n in present_out}}
    return Exportable(name, module, dtype, ("input_ids", "attention_mask", "position_ids", *past_in),
                      ("logits", *present_out), batch, seq, inputs, config, layers, with_past=True,
                      axes=MappingProxyType(axes))


def _from_spec(spec: ModelSpec, seed: int) -> torch.nn.Module:
    import transformers

    config = transformers.AutoConfig.for_model(spec.family, **dict(spec.config))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
        # transformers initialises biases to zero: identical zero tensors would let the
        # exporters merge them (one initializer for gate and up bias) and would hide a bias
        # that a fusion drops. Give them seeded random values too.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(".bias") and not param.any():
                    param.normal_(0.0, 0.02)
    return model.eval()


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, checked to exist (cheap: nothing is loaded yet).

    Attributes:
        name: display name (spec name, packaged name, or the file/folder name).
        kind: ``spec``, ``packaged``, ``folder`` or ``gguf``.
        path: the checkpoint folder or GGUF file (``None`` for specs).
    """

    name: str
    kind: Literal["spec", "packaged", "folder", "gguf"]
    path: Path | None = None


def resolve(model: str | os.PathLike[str] | ModelSource) -> ModelSource:
    """Resolve a model name or path, checking that it exists, before anything is loaded.

    Raises:
        ModelNotFoundError: unknown name (the message lists the valid ones) or missing path.
        InvalidModelError: a path that is not a checkpoint folder or GGUF file.
    """
    if isinstance(model, ModelSource):
        return model
    text = os.fspath(model)
    if text in SPECS:
        return ModelSource(text, "spec")
    if text in PACKAGED:
        return ModelSource(text, "packaged", find_packaged_gguf(text))
    path = Path(text).expanduser()
    looks_like_path = path.suffix.lower() == ".gguf" or os.sep in text or path.exists()
    if not looks_like_path:
        get_spec(text)  # raises ModelNotFoundError listing the valid names
    check_checkpoint(path)
    kind: Literal["folder", "gguf"] = "gguf" if path.suffix.lower() == ".gguf" else "folder"
    return ModelSource(path.name or text, kind, path)


def load_causal_lm(model: str | os.PathLike[str] | ModelSource, *, seed: int = 0) -> tuple[ModelSource, torch.nn.Module, int, int]:
    """Load ``model`` as a float32 causal LM: ``(source, model, example batch, example seq)``.

    Raises:
        UserError: as :func:`resolve`, or a checkpoint :class:`ModelSource` without a path.
    """
    source = resolve(model)
    if source.kind == "spec":
        spec = get_spec(source.name)
        return source, _from_spec(spec, seed), spec.batch, spec.seq
    if source.path is None:  # a ModelSource built by hand: resolve() gives checkpoints a path
        raise ModelNotFoundError(f"model source {source.name!r} ({source.kind}) has no path: "
                                 "give its checkpoint folder or .gguf file")
    return source, load_pretrained(source.path), _CHECKPOINT_BATCH, _CHECKPOINT_SEQ


def _decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or not all(hasattr(layer, "mlp") for layer in layers):
        raise UserError(
            f"{type(model).__name__} has no decoder layers with an `mlp`: --part mlp needs a "
            "Llama-style model (model.layers[i].mlp)"
        )
    return layers


def build(
    model: str | os.PathLike[str] | ModelSource,
    *,
    part: Part = "full",
    dtype: DType = "float32",
    seed: int = 0,
    mlp_layer: int = 0,
    batch: int | None = None,
    seq: int | None = None,
    with_past: bool = False,
) -> Exportable:
    """Build the full model or one decoder layer's MLP, ready for export.

    Args:
        model: a spec name (``seed``, ``tiny``, ...), ``smollm2``, a Hugging Face checkpoint
            folder or a ``.gguf`` file.
        part: ``full`` (``forward(input_ids, attention_mask) -> (logits,)``) or ``mlp``
            (``forward(hidden_states) -> (y,)``, fed the hidden states that reach that MLP
            in a forward pass of the whole model).
        dtype: element type of the weights.
        seed: seeds the random weights of spec models and every example input.
        mlp_layer: which decoder layer's MLP ``part="mlp"`` isolates.
        batch, seq: example-input shape; defaults come from the spec.
        with_past: the full model as a decoder step on a KV cache (``forward(input_ids,
            attention_mask, position_ids, *past) -> (logits, *present)``, see
            :class:`CausalLMWithPastWrapper`); its inputs take a ``past`` length.

    Raises:
        UserError: a bad name, path, part, dtype or layer index, or ``with_past`` with
            ``part="mlp"`` (a subclass names which).
    """
    check_part(part, with_past)
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    source, lm, default_batch, default_seq = load_causal_lm(model, seed=seed)
    name = source.name
    lm = lm.to(TORCH_DTYPES[dtype])
    # A transformers config, typed as Exportable.config is: its fields depend on the family.
    config: Any = lm.config
    vocab = int(config.vocab_size)
    full = CausalLMWrapper(lm).eval()
    layers = _decoder_layers(lm)
    b, s = batch or default_batch, seq or default_seq

    mask: Mask = "tril" if source.kind == "spec" else "ones"

    def token_inputs(bb: int, ss: int, past: int = 0) -> tuple[torch.Tensor, ...]:
        _no_past(name, past)
        return make_token_inputs(vocab, bb, ss, seed, mask)

    if part == "full" and with_past:
        return _with_past(name, lm, dtype, b, s, seed, len(layers))
    if part == "full":
        return Exportable(name, full, dtype, ("input_ids", "attention_mask"), ("logits",),
                          b, s, token_inputs, config, len(layers))

    if not -len(layers) <= mlp_layer < len(layers):
        raise UserError(f"mlp_layer {mlp_layer} is out of range: {name} has {len(layers)} layers")
    mlp = layers[mlp_layer].get_submodule("mlp")

    def captured_hidden_states(bb: int, ss: int, past: int = 0) -> tuple[torch.Tensor, ...]:
        _no_past(f"{name}/mlp", past)
        seen: list[torch.Tensor] = []

        def hook(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            seen.append(args[0].detach().clone())

        handle = mlp.register_forward_pre_hook(hook)
        try:
            with torch.no_grad():
                full(*token_inputs(bb, ss))
        finally:
            handle.remove()
        return (seen[0],)

    return Exportable(f"{name}/mlp", MLPWrapper(mlp).eval(), dtype, ("hidden_states",),
                      ("output",), b, s, captured_hidden_states, config, 1)
