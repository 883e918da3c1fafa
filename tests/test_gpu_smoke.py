"""scripts/gpu_smoke.sh on the CPU: its steps, its summary and its exit status (the CUDA run needs a GPU)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_smoke.sh"


def _run(*args, timeout=900):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_smoke_script_rejects_unknown_options():
    result = _run("--device", "tpu")
    assert result.returncode == 2 and "--device must be cuda or cpu" in result.stderr


@pytest.mark.slow  # about 2 minutes on 2 cores: eight CLI processes and a 2-process torchrun
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_smoke_script_passes_on_the_cpu(tmp_path):
    result = _run("--device", "cpu", "--quick", "--workdir", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    summary = result.stdout.split("== summary (device=cpu)")[1]
    for step in ("two SPA tasks on cpu", "kill -9 and resume", "torchrun 2 processes", "bf16 vs fp32 features"):
        assert f"PASS  {step}" in summary, summary
    assert summary.strip().endswith("GPU smoke: OK")
