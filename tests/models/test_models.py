from __future__ import annotations

import pytest
import torch

from onnxfuse.errors import InvalidModelError, ModelNotFoundError, UserError
from onnxfuse.models import SPECS, ModelSource, build, get_spec, make_token_inputs, spec_names


def _state_bytes(module: torch.nn.Module) -> list[bytes]:
    return [t.detach().contiguous().view(torch.uint8).numpy().tobytes()
            for t in module.state_dict().values()]


def test_seed_spec_is_the_notebooks_model() -> None:
    spec = get_spec("seed")
    assert dict(spec.config) == dict(
        num_hidden_layers=1, vocab_size=32000, hidden_size=1024, intermediate_size=11008,
        max_position_embeddings=2048, num_attention_heads=4,
    )
    assert (spec.family, spec.batch, spec.seq) == ("llama", 2, 1024)


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        get_spec("Tiny")  # exact names only
    for name in spec_names():
        assert name in str(info.value)


def test_missing_paths_are_user_errors(tmp_path) -> None:
    with pytest.raises(ModelNotFoundError):
        build(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelNotFoundError):
        build(str(tmp_path / "no-such-folder") + "/")
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(InvalidModelError, match="GGUF"):
        build(str(tmp_path / "fake.gguf"))
    with pytest.raises(InvalidModelError, match=r"config\.json"):
        build(str(tmp_path))


def test_a_checkpoint_source_without_a_path_is_a_user_error() -> None:
    # A ModelSource built by hand: refused with a typed error, not an assert (gone under -O).
    with pytest.raises(ModelNotFoundError, match="'mine' \\(folder\\) has no path"):
        build(ModelSource("mine", "folder"))


@pytest.mark.parametrize("name", [n for n in SPECS if n not in ("seed", "wide-2g")])
def test_specs_build_and_run(name: str) -> None:
    ex = build(name)
    (logits,) = ex.module(*ex.example_inputs())
    assert logits.shape == (ex.batch, ex.seq, ex.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_same_name_and_seed_give_the_same_bytes() -> None:
    a, b, c = build("tiny", seed=3), build("tiny", seed=3), build("tiny", seed=4)
    assert _state_bytes(a.module) == _state_bytes(b.module)
    assert _state_bytes(a.module) != _state_bytes(c.module)
    for x, y in zip(a.example_inputs(), b.example_inputs(), strict=True):
        assert torch.equal(x, y)


def test_inputs_are_seeded_ids_and_a_tril_mask() -> None:
    ids, mask = make_token_inputs(100, 2, 7, seed=0)
    assert ids.dtype == torch.int64 and mask.dtype == torch.float32
    assert torch.equal(mask, torch.tril(torch.ones(2, 7)))
    assert int(ids.max()) < 100
    assert not torch.equal(ids, make_token_inputs(100, 2, 7, seed=1)[0])
    with pytest.raises(UserError):
        make_token_inputs(100, 0, 7, seed=0)


def test_isolated_mlp_gets_the_hidden_states_of_a_real_forward_pass() -> None:
    full = build("tiny")
    part = build("tiny", part="mlp", mlp_layer=1)
    (hidden,) = part.make_inputs(1, 5)
    assert hidden.shape == (1, 5, 64)
    # Oracle: the same layer's MLP input and output seen by hooks in a plain forward pass.
    mlp = full.module.model.model.layers[1].mlp
    seen: dict[str, torch.Tensor] = {}
    mlp.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    with torch.no_grad():
        full.module(*full.make_inputs(1, 5))
        (y,) = part.module(hidden)
    assert torch.equal(hidden, seen["x"])
    assert torch.equal(y, seen["y"])


def test_mlp_layer_out_of_range() -> None:
    with pytest.raises(UserError, match="out of range"):
        build("tiny", part="mlp", mlp_layer=5)


@pytest.mark.parametrize("dtype,torch_dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_dtype_applies_to_weights_and_hidden_states(dtype: str, torch_dtype: torch.dtype) -> None:
    part = build("tiny", part="mlp", dtype=dtype)  # type: ignore[arg-type]
    assert all(p.dtype == torch_dtype for p in part.module.parameters())
    assert part.example_inputs()[0].dtype == torch_dtype


def test_checkpoint_folder_loads_the_same_model(tmp_path) -> None:
    spec_model = build("tiny-qwen2")
    spec_model.module.model.save_pretrained(tmp_path)
    folder = build(str(tmp_path))
    inputs = spec_model.example_inputs()
    with torch.no_grad():
        assert torch.equal(folder.module(*inputs)[0], spec_model.module(*inputs)[0])


def test_biases_are_random_not_zero() -> None:
    mlp = build("tiny-bias").module.model.model.layers[0].mlp
    gate, up = mlp.gate_proj.bias, mlp.up_proj.bias
    assert gate.abs().min() > 0 and not torch.equal(gate, up)
