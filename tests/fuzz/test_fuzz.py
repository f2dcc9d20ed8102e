"""``make test`` runs the fuzzer (fuzz_rewrite.py) for a bounded time: 60 s by default,
``ONNXFUSE_FUZZ_SECONDS`` to change it. docs/fuzzing.md says how to run it longer."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

FUZZER = Path(__file__).with_name("fuzz_rewrite.py")
SECONDS = int(os.environ.get("ONNXFUSE_FUZZ_SECONDS", "60"))
# Measured: 2,500-3,000 runs in 60 s on one core of a 2-core machine while the other core ran
# the rest of the suite; far fewer means the harness is stuck or the target got slow.
MIN_RUNS = 10 * SECONDS


@pytest.mark.timeout(SECONDS + 300)
def test_fuzzer_finds_no_crash_in_a_bounded_run(tmp_path: Path) -> None:
    if importlib.util.find_spec("atheris") is None:
        message = "atheris is not installed (the test extra installs it on Linux, CPython < 3.14)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    # A fixed libFuzzer seed: a failure in CI reproduces with the same command.
    seed = os.environ.get("ONNXFUSE_FUZZ_SEED", "1")
    # libFuzzer's default RSS limit (2 GiB) is sized for C targets; this Python process starts
    # at ~130 MiB. One CI run under load stopped at 2.26 GB with the input lost (not reproduced
    # in 60 s locally: 133 MiB peak): 4 GiB keeps a real blow-up visible without that noise.
    command = [sys.executable, str(FUZZER), f"-max_total_time={SECONDS}", f"-seed={seed}",
               "-rss_limit_mb=4096", f"-artifact_prefix={tmp_path}/", str(tmp_path / "corpus")]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=SECONDS + 240)
    output = "\n".join(line for line in (proc.stdout + proc.stderr).splitlines()
                       if not line.startswith("INFO: Instrumenting"))
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert proc.returncode == 0 and not crashes, (
        f"{' '.join(command)} exited {proc.returncode}; inputs kept: {crashes}\n{output[-6000:]}")
    done = re.search(r"Done (\d+) runs in (\d+) second", output)
    assert done is not None, output[-3000:]
    runs = int(done.group(1))
    print(f"\nfuzz_rewrite.py: {runs} runs in {done.group(2)} s, no crash")
    assert runs > MIN_RUNS, output[-3000:]
