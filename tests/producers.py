"""Models made by other tools, from the registry's tiny specs (no hub: every model is built
from a config): a Hugging Face checkpoint folder with a byte-level tokenizer, and
onnxruntime-genai's model builder run on it (``python -m onnxruntime_genai.models.builder``,
the way its users run it; its ``--help`` crashes in 0.18, its options are in ``get_args()``).

Use them through :class:`tests.helpers.Exports` (``exports.hf_folder(...)``,
``exports.genai(...)``): each is built once per test run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# The families the builder takes, with the registry's tiny spec of each.
GENAI_SPECS = {"llama": "tiny", "qwen2": "tiny-qwen2", "mistral": "tiny-mistral", "phi3": "tiny-phi3",
               "gemma": "tiny-gemma"}


def write_hf_folder(spec_name: str, folder: Path, *, seed: int = 0) -> Path:
    """Save the registry model ``spec_name`` (seeded random weights) as a Hugging Face folder,
    with a byte-level BPE tokenizer over the first 256 ids (every tiny spec's vocab)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from onnxfuse.models import get_spec

    spec = get_spec(spec_name)
    config = transformers.AutoConfig.for_model(spec.family, **dict(spec.config))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # some families zero-initialise norms: give every weight a value
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model.save_pretrained(folder)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=alphabet[1],
                                                eos_token=alphabet[2], pad_token=alphabet[0])
    fast.save_pretrained(folder)
    return folder


# Each family's builds (precision, extra options). Importing the builder costs ~11 s, a tiny
# build 0.1-0.2 s: every build of a run happens in one process (:func:`build_all`).
GENAI_BUILDS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("fp32", ()), ("fp16", ()), ("fp32", (("fuse_mlp_gate_up", "true"),)),
    ("fp16", (("fuse_mlp_gate_up", "true"),)), ("int4", ()), ("int4", (("is_symmetric", "false"),)),
    ("int4", (("block_size", "128"),)), ("int8", ()),
)


def genai_key(family: str, precision: str, extra: tuple[tuple[str, str], ...] = ()) -> str:
    """The folder name of one build under :func:`build_all`'s root."""
    return "-".join([family, precision, *(f"{k}={v}" for k, v in extra)])


def build_all(root: Path) -> dict[str, Path]:
    """Every family's Hugging Face folder (``root/hf-FAMILY``) and every :data:`GENAI_BUILDS`
    build of it (``root/KEY``, :func:`genai_key`), made by one process running
    onnxruntime-genai's builder as its command line does (``parse_extra_options``, then
    ``create_model``; its ``--help`` crashes in 0.18, its options are in ``get_args()``)."""
    proc = subprocess.run([sys.executable, __file__, str(root)], capture_output=True, text=True, timeout=900,
                          cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"building the producers' models failed:\n{proc.stderr[-3000:]}")
    built = {genai_key(f, p, e): root / genai_key(f, p, e) for f in GENAI_SPECS for p, e in GENAI_BUILDS}
    built.update({f"hf-{f}": root / f"hf-{f}" for f in GENAI_SPECS})
    missing = [k for k, v in built.items() if not v.exists()]
    if missing:
        raise RuntimeError(f"the builder made no {', '.join(missing)}:\n{proc.stderr[-3000:]}")
    return built


def _main(root: Path) -> None:
    import contextlib
    import io

    for family, spec in GENAI_SPECS.items():
        write_hf_folder(spec, root / f"hf-{family}")
    from onnxruntime_genai.models import builder

    for family in GENAI_SPECS:
        for precision, extra in GENAI_BUILDS:
            out = root / genai_key(family, precision, extra)
            cache = root / ".cache"
            options = [f"{k}={v}" for k, v in extra]
            with contextlib.redirect_stdout(io.StringIO()):  # a progress line per tensor
                parsed = builder.parse_extra_options("", str(root / f"hf-{family}"), str(out), precision,
                                                     "cpu", str(cache), options)
                builder.create_model("", str(root / f"hf-{family}"), str(out), precision, "cpu", str(cache),
                                     **parsed)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    _main(Path(sys.argv[1]))
