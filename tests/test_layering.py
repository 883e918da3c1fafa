"""The library core never imports the parts-world / demo side, and library code leaves global state alone."""

import subprocess
import sys

import pytest

from spacil.config import load_config
from spacil.runs.run_folder import config_digest

CORE = ["spacil.backbone", "spacil.config", "spacil.data.check", "spacil.data.protocol", "spacil.descriptions",
        "spacil.evaluation", "spacil.features.distributed", "spacil.io", "spacil.methods", "spacil.ot",
        "spacil.runs", "spacil.text.class_phrases", "spacil.text.semantic_tokens", "spacil.training.compare",
        "spacil.training.harness", "spacil.runs.plots", "spacil.training.matrix", "spacil.runs.results",
        "spacil.runs.code_version"]


def test_core_modules_do_not_import_the_demo_side():
    code = ("import sys, importlib\n"
            f"for name in {CORE!r}: importlib.import_module(name)\n"
            "bad = sorted(m for m in sys.modules if m.startswith('spacil.partsworld') or m == 'spacil.cli'"
            " or m == 'matplotlib.pyplot')\n"
            "print(','.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == ""


def test_plotting_leaves_matplotlib_backend_alone(tmp_path):
    import matplotlib
    import numpy as np

    from spacil.runs.plots import plot_accuracy_matrix

    before = matplotlib.get_backend()
    plot_accuracy_matrix(tmp_path / "m.png", np.array([[50.0, np.nan], [40.0, 60.0]]))
    assert (tmp_path / "m.png").stat().st_size > 0 and matplotlib.get_backend() == before


@pytest.mark.parametrize("neutral", ["data.root=/elsewhere", "backbone.num_workers=7", "train.eval_batch_size=3",
                                     "run.output_dir=/tmp/x", "run.plots=false", "cache.root=/c",
                                     "method.simplecil.logit_scale=3"])
def test_run_key_ignores_settings_that_do_not_change_results(neutral):
    assert config_digest(load_config(None, [neutral])) == config_digest(load_config(None, []))


@pytest.mark.parametrize("change", ["train.seed=1", "method.spa.selection.k=3", "cache.dtype=float32",
                                    "method.name=simplecil"])
def test_run_key_follows_settings_that_change_results(change):
    assert config_digest(load_config(None, [change])) != config_digest(load_config(None, []))
