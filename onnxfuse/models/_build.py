"""Build exportable modules (full model or one isolated MLP) with deterministic inputs."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch

from onnxfuse.errors import ModelNotFoundError, UserError
from onnxfuse.models._checkpoints import (
    PACKAGED,
    check_checkpoint,
    find_packaged_gguf,
    load_pretrained,
)
from onnxfuse.models._specs import SPECS, ModelSpec, get_spec
from onnxfuse.numerics import DTYPES, DType

__all__ = ["Exportable", "ModelSource", "Part", "build", "load_causal_lm", "make_token_inputs", "resolve"]

Part = Literal["full", "mlp"]
PARTS: tuple[Part, ...] = ("full", "mlp")
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


class MLPWrapper(torch.nn.Module):
    """One decoder layer's MLP as a module of its own: ``forward(hidden_states) -> (y,)``."""

    def __init__(self, mlp: torch.nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.mlp(hidden_states),)


@dataclasses.dataclass(frozen=True)
class Exportable:
    """A module ready for ``torch.onnx.export``, with its deterministic inputs.

    Every input and output has a dynamic batch axis (0) and sequence axis (1).

    Attributes:
        name: model name, with ``/mlp`` for an isolated MLP (e.g. ``seed/mlp``).
        module: the module in eval mode, in ``dtype``.
        dtype: element type of the weights and float activations.
        input_names, output_names: names the ONNX graph gets.
        batch, seq: shape of the example inputs.
        make_inputs: ``make_inputs(batch, seq)`` → the module's positional inputs; the same
            arguments always give the same tensors.
        config: the transformers config of the model.
        layers: number of decoder layers in ``module``.
    """

    name: str
    module: torch.nn.Module
    dtype: DType
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    batch: int
    seq: int
    make_inputs: Callable[[int, int], tuple[torch.Tensor, ...]]
    config: Any
    layers: int

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

    Raises:
        UserError: a bad name, path, part, dtype or layer index (a subclass names which).
    """
    if part not in PARTS:
        raise UserError(f"unknown part {part!r}: choose one of {', '.join(PARTS)}")
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

    def token_inputs(bb: int, ss: int) -> tuple[torch.Tensor, ...]:
        return make_token_inputs(vocab, bb, ss, seed, mask)

    if part == "full":
        return Exportable(name, full, dtype, ("input_ids", "attention_mask"), ("logits",),
                          b, s, token_inputs, config, len(layers))

    if not -len(layers) <= mlp_layer < len(layers):
        raise UserError(f"mlp_layer {mlp_layer} is out of range: {name} has {len(layers)} layers")
    mlp = layers[mlp_layer].get_submodule("mlp")

    def captured_hidden_states(bb: int, ss: int) -> tuple[torch.Tensor, ...]:
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
