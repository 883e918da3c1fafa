"""Reruns notice code: a finished run computed by other code is refused, and --set run.overwrite=true redoes it.

The code change is real: a learner's source is edited in a copy of the package, and the runs are real
``spa-cil train`` processes importing that copy.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path


from spacil.runs.code_version import code_difference, code_version, source_digest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "spacil"


def _train(src: Path, image_folder: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    sets = ["backbone.name=tiny-test", f"data.root={image_folder}", "data.init_cls=2", "data.increment=2",
            "method.name=simplecil",
            f"cache.root={tmp_path / 'cache'}", f"run.output_dir={tmp_path / 'runs'}", "backbone.num_workers=0",
            "run.plots=false", *extra]
    cmd = [sys.executable, "-m", "spacil.cli", "-q", "train", "--no-progress"] + [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def _accuracy(proc: subprocess.CompletedProcess) -> float:
    assert proc.returncode == 0, proc.stderr[-2000:]
    return float(re.search(r"average accuracy ([\d.]+)", proc.stdout).group(1))


def test_editing_a_learner_does_not_return_the_old_numbers(image_folder, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "spacil", ignore=shutil.ignore_patterns("__pycache__", "assets"))
    before = _accuracy(_train(src, image_folder, tmp_path))
    run = next((tmp_path / "runs").iterdir())
    recorded = json.loads((run / "code.json").read_text())
    assert recorded["source_sha256"] == source_digest.__wrapped__(src / "spacil")

    learner = src / "spacil" / "methods" / "simplecil.py"
    text = learner.read_text()
    assert "return self.config.logit_scale * image @" in text
    learner.write_text(text.replace("return self.config.logit_scale * image @", "return -self.config.logit_scale * image @"))

    refused = _train(src, image_folder, tmp_path)
    assert refused.returncode == 2
    assert "computed by other code" in refused.stderr and "run.overwrite=true" in refused.stderr
    assert f"average accuracy {before:.2f}" not in refused.stdout

    after = _accuracy(_train(src, image_folder, tmp_path, "run.overwrite=true"))
    assert after != before  # the edited learner ran (nearest prototype became farthest prototype)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [run.name]  # same folder, redone
    assert json.loads((run / "code.json").read_text())["source_sha256"] == source_digest.__wrapped__(src / "spacil")
    assert _accuracy(_train(src, image_folder, tmp_path)) == after  # same code again: reused, not redone


def test_code_difference_names_what_changed():
    current = code_version()
    assert code_difference(dict(current), current) is None
    assert code_difference({**current, "git_commit": "other"}, current) is None  # a commit alone changes nothing
    changed = code_difference({**current, "source_sha256": "0" * 64}, current)
    assert changed.startswith("source_sha256 000000000000 -> " + current["source_sha256"][:12])
    assert "predates" in code_difference(None, current)
