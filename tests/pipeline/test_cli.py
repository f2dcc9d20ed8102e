"""The CLI as a user meets it: exit codes, one-line errors, no partial files, help text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli


def _assert_user_error(proc, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("args,needles", [
    (["--model", "nope"], ["unknown model 'nope'", "seed", "tiny"]),
    (["--model", "/no/such/checkpoint"], ["does not exist"]),
    (["--model", "missing.gguf"], ["does not exist"]),
    (["--model", "tiny", "--dtype", "float64"], ["invalid choice"]),
    (["--model", "tiny", "--batch", "0"], ["must be >= 1"]),
    (["--model", "tiny", "--opset", "99"], ["out of range"]),
    (["--model", "tiny", "--part", "mlp", "--with-past"], ["not --part mlp", "--part full --with-past"]),
])
def test_user_errors_exit_2_with_one_line(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    proc = run_cli(["export", *args, "-o", str(tmp_path / "m.onnx")], cwd=tmp_path)
    _assert_user_error(proc, *needles)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("output,needle", [
    ("/proc/onnxfuse-test.onnx", "cannot write"),
    ("/no/such/dir/m.onnx", "does not exist"),
    ("/etc/passwd/m.onnx", "does not exist"),
])
def test_unwritable_output_exits_2(tmp_path: Path, output: str, needle: str) -> None:
    _assert_user_error(run_cli(["export", "--model", "tiny", "--part", "mlp", "-o", output]), needle)
    assert not Path(output).exists()


def test_not_a_gguf_file_exits_2(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"\0" * 64)
    _assert_user_error(run_cli(["export", "--model", str(fake), "-o", str(tmp_path / "m.onnx")]),
                       "not a GGUF file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake.gguf"]


def test_export_success_then_existing_output_needs_force(tmp_path: Path) -> None:
    args = ["export", "--model", "tiny", "--part", "mlp", "-o", "m.onnx"]
    ok = run_cli(args, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "rel_l2=" in ok.stdout and "seq=37" in ok.stdout
    assert "building" in ok.stderr and "Traceback" not in ok.stderr
    assert "torchvision" not in ok.stderr  # third-party noise is silenced
    before = (tmp_path / "m.onnx").read_bytes()
    _assert_user_error(run_cli(args, cwd=tmp_path), "--force")
    assert (tmp_path / "m.onnx").read_bytes() == before
    assert run_cli([*args, "--force", "-q"], cwd=tmp_path).returncode == 0


def test_parity_failure_exits_1(tmp_path: Path) -> None:
    proc = run_cli(["export", "--model", "tiny", "--part", "mlp", "--dtype", "float16",
                    "--rel-l2", "1e-9", "-q", "-o", "m.onnx"], cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "disagrees with torch" in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_bfloat16_names_the_missing_kernel(tmp_path: Path) -> None:
    proc = run_cli(["export", "--model", "tiny", "--dtype", "bfloat16", "-q", "-o", "m.onnx"], cwd=tmp_path)
    _assert_user_error(proc, "no kernel for", "--no-verify")
    assert list(tmp_path.iterdir()) == []


def test_help_states_defaults() -> None:
    proc = run_cli(["export", "--help"])
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for default in ("(default: full)", "(default: dynamo)", "(default: float32)", "(default: 0)"):
        assert default in text


def test_models_lists_every_name() -> None:
    proc = run_cli(["models"])
    assert proc.returncode == 0
    for name in ("seed", "tiny", "tiny-mistral", "tiny-qwen2", "smollm2"):
        assert name in proc.stdout


@pytest.mark.parametrize("command,required", [
    ("export", ["--model", "tiny", "-o", "m.onnx"]),
    ("rewrite", ["in.onnx", "-o", "out.onnx"]),
    ("parity", ["a.onnx", "b.onnx"]),
    ("bench", ["a.onnx", "b.onnx"]),
    ("demo", []),
])
def test_each_option_defaults_to_its_config_field(command: str, required: list[str]) -> None:
    """The CLI's options are built from the stage config: parsing only the required
    arguments gives the config with every other field at its declared default."""
    import dataclasses

    from onnxfuse.pipeline import cli

    cmd = cli._COMMANDS[command]
    assert cmd.config is not None
    cls = cmd.config()
    args = cli._parser(command).parse_args([command, *required])
    config = cli._config_from_args(cls, cmd.options, args)
    given = {f.name: getattr(config, f.name) for f in dataclasses.fields(cls)
             if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    assert config == cls(**given)
    assert len(cli._cli_options(cls, cmd.options)) >= len(given) + 1


def test_parity_and_bench_flags_set_their_config_fields() -> None:
    from onnxfuse.pipeline import cli
    from onnxfuse.pipeline.configs import BenchConfig, ParityConfig

    args = cli._parser("parity").parse_args([
        "parity", "a.onnx", "b.onnx", "--backend", "triton", "--batch", "3", "--rel-l2", "logits=1e-4",
        "--rel-l2", "y=2", "--json", "r.json", "--force", "--device", "cuda"])
    assert cli._config_from_args(ParityConfig, {}, args) == ParityConfig(
        Path("a.onnx"), Path("b.onnx"), device="cuda", backend="triton", batch=3,
        rel_l2={"logits": 1e-4, "y": 2.0}, report=Path("r.json"), force=True)
    args = cli._parser("bench").parse_args(["bench", "a.onnx", "b.onnx", "--backend", "triton,none",
                                            "--no-torch", "--repeat", "4"])
    assert cli._config_from_args(BenchConfig, {}, args) == BenchConfig(
        Path("a.onnx"), Path("b.onnx"), backends=("triton", "none"), torch=False, repeat=4)


@pytest.mark.parametrize("command,option,default", [
    ("parity", "--batch", "2"), ("parity", "--seq", "16"), ("parity", "--backend", "default"),
    ("parity", "--device", "cpu"), ("bench", "--backend", "default"), ("bench", "--repeat", "20"),
    ("demo", "--out", "out/demo"),
])
def test_help_states_each_commands_defaults(command: str, option: str, default: str) -> None:
    proc = run_cli([command, "--help"])
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    after = text[text.index(f" {option} ", text.index("options:")):]
    assert f"(default: {default})" in after.split(" --")[1]


@pytest.mark.parametrize("command", ["parity", "bench"])
def test_backend_means_the_same_for_parity_and_bench(command: str) -> None:
    from onnxfuse.pipeline.configs import BACKENDS

    proc = run_cli([command, "--help"])
    text = " ".join(proc.stdout.split())
    assert all(f"{b} (" in text for b in BACKENDS), text
    bad = run_cli([command, "a.onnx", "b.onnx", "--backend", "fast"])
    assert bad.returncode == 2 and "'fast'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("config,fields,needle", [
    ("ParityConfig", {"backend": "fast"}, "unknown backend 'fast'"),
    ("ParityConfig", {"device": "tpu"}, "unknown device 'tpu'"),
    ("ParityConfig", {"seq": 0}, "seq must be >= 1"),
    ("BenchConfig", {"backends": ("default", "fast")}, "unknown backend 'fast'"),
    ("BenchConfig", {"backends": ()}, "unknown backend list ()"),
    ("BenchConfig", {"warmup": -1}, "warmup must be >= 0"),
])
def test_a_bad_config_value_is_a_user_error(config: str, fields: dict[str, object], needle: str) -> None:
    import onnxfuse

    with pytest.raises(onnxfuse.UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        getattr(onnxfuse, config)(Path("a.onnx"), Path("b.onnx"), **fields)


def test_a_value_only_the_config_checks_exits_2() -> None:
    _assert_user_error(run_cli(["bench", "a.onnx", "b.onnx", "--threads", "-1"]), "threads must be >= 0")


def test_help_imports_no_heavy_library() -> None:
    """Every command's --help is built from its config's fields, and the configs live in light
    modules: no torch, onnx_ir, onnxscript or onnxruntime behind `onnxfuse CMD --help`
    (export's took 2-5 s when its config lived beside the exporter)."""
    script = ("import sys\nfrom onnxfuse.pipeline import cli\n"
              "for command in cli._COMMANDS:\n    cli._parser(command)\n"
              "heavy = sorted(m for m in ('torch', 'onnx_ir', 'onnxscript', 'onnxruntime', 'transformers') "
              "if m in sys.modules)\nprint(','.join(heavy))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"--help imports {proc.stdout.strip()}"
