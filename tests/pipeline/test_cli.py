"""The CLI as a user meets it: exit codes, one-line errors, no partial files, help text."""

from __future__ import annotations

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
