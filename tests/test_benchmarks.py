"""The benchmark cannot rot: its quick mode runs every section, so a section that breaks fails here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from repo_scripts import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run_benchmarks.py"


def _module():
    return load_script("benchmarks/run_benchmarks.py", "spacil_benchmarks")


def _sections() -> list[str]:
    return list(_module().SECTIONS)


def test_quick_results_never_overwrite_the_full_runs_files():
    module = _module()
    every = list(module.SECTIONS)
    full = module.default_results_folder(False, every)
    quick, subset = module.default_results_folder(True, every), module.default_results_folder(False, every[:1])
    assert full == Path("benchmarks/results") and quick != full and subset != full
    repo = SCRIPT.parents[1]
    ignored = subprocess.run(["git", "check-ignore", "-q", str(quick / "results.json")], cwd=repo)
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(full / "results.json")], cwd=repo,
                             capture_output=True)
    if tracked.returncode == 0:  # in a git checkout: the full run's files are committed, the quick ones ignored
        assert ignored.returncode == 0


def _errors(node, where=""):
    """Every ``error`` entry anywhere in a section's results (a section reports failures of its parts so)."""
    if isinstance(node, dict):
        found = [f"{where}: {node['error']}"] if "error" in node else []
        for key, value in node.items():
            found += _errors(value, f"{where}.{key}")
        return found
    return []


def test_quick_mode_runs_every_section(tmp_path):
    sections = _sections()
    assert {"sinkhorn", "ot_overhead", "forwards", "protocol_scale"} <= set(sections)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPT.parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quick"] is True
    missing = [name for name in sections if name not in results]
    assert not missing, f"sections without results: {missing}"
    assert not _errors({name: results[name] for name in sections})
    table = (tmp_path / "results.md").read_text()
    assert table.startswith("QUICK MODE")
    assert "not measured" not in table.split("\n\n- ")[0]  # every goal row got a value from its section
