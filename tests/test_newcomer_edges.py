"""Rough edges a new user hit (issue 22): each test failed on the code before the fix."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spacil.cli import app
from spacil.config import load_config
from spacil.errors import MissingFileError, SpacilError

runner = CliRunner()


def _common(image_folder: Path, tmp_path: Path) -> list[str]:
    return ["--set", f"data.root={image_folder}", "--set", "data.init_cls=2", "--set", "data.increment=2",
            "--set", f"cache.root={tmp_path / 'cache'}", "--set", "backbone.num_workers=0",
            "--set", f"run.output_dir={tmp_path / 'runs'}", "--set", "method.name=simplecil"]


# ---------------------------------------------------------------------------------------- feature cache
def test_bad_images_error_is_honoured_on_a_cache_hit(image_folder, tmp_path, tiny_backbone):
    from spacil.data.datasets import DatasetError, ImageFolderSource
    from spacil.features import FeatureCache, get_features

    (image_folder / "train" / "class_01" / "img_002.png").write_bytes(b"not a png at all")
    source = ImageFolderSource(image_folder, "train")
    cache = FeatureCache(tmp_path / "c")
    kept = get_features(source, tiny_backbone, cache, bad_images="skip", num_workers=0, progress=False)
    assert len(kept) == 23  # the skip run cached the features without the broken file
    with pytest.raises(DatasetError, match=r"img_002\.png.*data\.bad_images=skip"):
        get_features(source, tiny_backbone, cache, bad_images="error", num_workers=0, progress=False)
    assert tiny_backbone.images_encoded >= 23  # (the hit itself encoded nothing: checked from the cache entry)


# ---------------------------------------------------------------------------------------- command line
def test_train_without_a_config_is_an_error_naming_the_fix(image_folder, tmp_path):
    args = ["train", "--set", f"data.root={image_folder}", "--set", f"run.output_dir={tmp_path / 'runs'}",
            "--set", f"cache.root={tmp_path / 'cache'}", "--no-progress"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "-c PRESET" in result.output and "backbone.name=tiny-test" in result.output
    assert not (tmp_path / "runs").exists()  # nothing ran
    # the explicit opt-in runs
    ok = runner.invoke(app, [*args, "--set", "backbone.name=tiny-test", "--set", "data.init_cls=2",
                             "--set", "data.increment=2", "--set", "backbone.num_workers=0",
                             "--set", "method.name=simplecil"])
    assert ok.exit_code == 0, ok.output


@pytest.mark.parametrize("flag", ["-v", "--verbose", "-q"])
def test_verbosity_flags_work_after_the_command(flag):
    result = runner.invoke(app, ["info", flag])
    assert result.exit_code == 0, result.output
    assert "presets" in result.output


def test_verbose_after_the_command_sets_debug_logging():
    result = runner.invoke(app, ["info", "-v"])
    assert result.exit_code == 0 and logging.getLogger().level == logging.DEBUG
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0 and logging.getLogger().level == logging.INFO


def test_no_progress_bar_carriage_returns_off_a_terminal(image_folder, tmp_path):
    result = runner.invoke(app, ["train", *_common(image_folder, tmp_path), "--set", "backbone.name=tiny-test"])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output  # no --progress given and CliRunner's stderr is not a terminal
    forced = runner.invoke(app, ["data", "check", str(image_folder), "--progress"])
    assert forced.exit_code == 0 and "\r" in forced.output  # asked for: drawn anyway


def test_train_summary_prints_forgetting(image_folder, tmp_path):
    result = runner.invoke(app, ["train", *_common(image_folder, tmp_path), "--set", "backbone.name=tiny-test",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    line = next(l for l in result.output.splitlines() if l.startswith("average accuracy"))
    assert f"forgetting {summary['forgetting']:.2f}" in line


def test_eval_works_from_another_directory(image_folder, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    relative = Path("..") / image_folder.relative_to(tmp_path)
    args = ["--set", f"data.root={relative}", "--set", "cache.root=cache", "--set", "run.output_dir=runs",
            "--set", "data.init_cls=2", "--set", "data.increment=2", "--set", "backbone.name=tiny-test",
            "--set", "backbone.num_workers=0", "--set", "method.name=simplecil", "--set", "run.name=r"]
    assert runner.invoke(app, ["train", *args, "--no-progress"]).exit_code == 0
    assert f"root: {image_folder}\n" in (work / "runs" / "r" / "config.yaml").read_text()  # stored absolute
    monkeypatch.chdir(tmp_path.parent)
    result = runner.invoke(app, ["eval", str(work / "runs" / "r"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "stage 1: accuracy" in result.output
    assert not (tmp_path.parent / "cache").exists()  # the features came from the run's own cache


def test_config_paths_are_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.root=data/x", "cache.root=c"])
    assert cfg.data.root == tmp_path / "data" / "x" and cfg.cache.root == tmp_path / "c"
    assert str(load_config(None, ["cache.root=~/feats"]).cache.root) == "~/feats"  # kept for other machines


# ---------------------------------------------------------------------------------------- fail before the backbone
@pytest.fixture
def no_backbone(monkeypatch):
    import spacil.backbone
    import spacil.training.harness

    def refuse(*args, **kwargs):
        raise AssertionError("the backbone was loaded before a check that needs none")

    monkeypatch.setattr(spacil.training.harness, "load_backbone", refuse)
    monkeypatch.setattr(spacil.backbone, "load_backbone", refuse)


def test_unknown_dataset_fails_before_the_backbone(no_backbone, image_folder, tmp_path):
    from spacil.training.harness import run_experiment

    cfg = load_config(None, [f"data.root={image_folder}", "data.dataset=image_foldr", f"cache.root={tmp_path}"])
    with pytest.raises(SpacilError, match="did you mean 'image_folder'"):
        run_experiment(cfg, progress=False)
    result = runner.invoke(app, ["extract", "-c", "default", "--set", "data.dataset=cifar10", "--no-progress"])
    assert result.exit_code == 2 and "unknown dataset 'cifar10'" in result.output


def test_split_larger_than_the_dataset_fails_before_the_backbone_naming_the_fix(no_backbone, image_folder,
                                                                                  tmp_path):
    from spacil.training.harness import run_experiment

    cfg = load_config(None, [f"data.root={image_folder}", "data.init_cls=10", f"cache.root={tmp_path}"])
    with pytest.raises(SpacilError, match=r"exceeds the dataset's 4 classes.*at most 4.*data\.init_cls=2"):
        run_experiment(cfg, progress=False)


# ---------------------------------------------------------------------------------------- did you mean
@pytest.mark.parametrize("overrides, hint", [
    (["train.epoch=1"], "did you mean 'train.epochs'?"),
    (["trian.epochs=1"], "did you mean 'train'?"),
    (["method.spa.ot.epz=0.1"], "did you mean 'method.spa.ot.eps'?"),
    (["method.name=simplecl"], "did you mean 'simplecil'?"),
])
def test_unknown_config_keys_and_values_suggest_the_closest(overrides, hint):
    with pytest.raises(SpacilError) as info:
        load_config(None, overrides)
    assert hint in str(info.value)


def test_unknown_preset_method_and_variant_suggest_the_closest():
    from spacil.methods import get_method
    from spacil.training.compare import variant_config

    with pytest.raises(SpacilError, match="did you mean 'cifar100_b0_inc10'"):
        load_config("cifar100_b0_inc1")
    with pytest.raises(SpacilError, match="did you mean 'spa'"):
        get_method("spaa")
    with pytest.raises(SpacilError, match="did you mean 'spa_no_ot'"):
        variant_config(load_config("default").model_dump(mode="json"), "spa_no_ott", 1993, Path("runs"))


def test_a_missing_config_file_is_reported_as_a_missing_file(tmp_path):
    for given in (str(tmp_path / "configs" / "mine"), "configs/mine", "mine.yaml"):
        with pytest.raises(MissingFileError, match="config file not found") as info:
            load_config(given)
        assert "unknown preset" not in str(info.value)


# ---------------------------------------------------------------------------------------- one warning
def test_description_fallback_warns_once(image_folder, tmp_path, caplog):
    from spacil.training.harness import run_experiment

    cfg = load_config("default", [f"data.root={image_folder}", "data.init_cls=2", "data.increment=2",
                                  f"cache.root={tmp_path / 'c'}", f"run.output_dir={tmp_path / 'r'}",
                                  "backbone.num_workers=0", "train.epochs=1"])
    assert cfg.method.name == "spa"  # the method that reads descriptions
    with caplog.at_level(logging.WARNING):
        run_experiment(cfg, progress=False)
    said = [r.getMessage() for r in caplog.records if "prompt templates" in r.getMessage()]
    assert len(said) == 1, said


# ---------------------------------------------------------------------------------------- public API
def test_import_spacil_gives_a_small_api_without_side_effects():
    code = ("import logging, sys, warnings\n"
            "filters = list(warnings.filters)\n"
            "import spacil\n"
            "assert 'torch' not in sys.modules, 'import spacil loaded torch'\n"
            "assert logging.getLogger().handlers == [] and warnings.filters == filters\n"
            "import numpy as np\n"
            "m = np.array([[90.0, np.nan], [70.0, 80.0]])\n"
            "s = spacil.summarize(m, [90.0, 75.0])\n"
            "assert abs(s['forgetting'] - 20.0) < 1e-9 and s['average_accuracy'] == 82.5, s\n"
            "cfg = spacil.load_config('default', ['train.epochs=2'])\n"
            "assert isinstance(cfg, spacil.Config) and cfg.train.epochs == 2\n"
            "assert 'spa' in [m.name for m in spacil.list_methods()] and callable(spacil.run_experiment)\n"
            "assert issubclass(spacil.SpacilError, Exception) and callable(spacil.evaluate_run)\n"
            "assert set(spacil.__all__) <= set(dir(spacil))\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# ---------------------------------------------------------------------------------------- own descriptions
def test_demo_with_own_descriptions_reports_the_mechanism(tmp_path):
    """Phrases that name no part (a user's own file) count as no part; the share of part phrases is reported."""
    from spacil.descriptions.fileformat import compute_checksum
    from spacil.partsworld import class_descriptions, descriptions_document, make_class_specs

    specs = make_class_specs(6, 3)
    doc = descriptions_document(specs)
    filler = ["seen from the side", "a small creature", "on a plain backdrop", "drawn in flat colours"]
    n_part = n_all = 0
    for entry, spec in zip(doc["classes"], specs):
        parts = class_descriptions(spec)[2:]  # the ground-truth part phrases (shape and colour left out)
        entry["phrases"] = parts + filler  # more phrases than the class has ground-truth ones
        n_part, n_all = n_part + len(parts), n_all + len(parts) + len(filler)
    doc["checksum"] = compute_checksum(doc["classes"])
    own = tmp_path / "mine.json"
    own.write_text(json.dumps(doc))
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--output", str(out), "--n-classes", "6", "--world-seed", "3",
                                 "--n-train", "12", "--n-test", "6", "--variants", "spa",
                                 "--set", "train.epochs=1", "--set", "data.init_cls=3", "--set", "data.increment=3",
                                 "--set", "descriptions.source=file", "--set", f"descriptions.path={own}",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    mech = json.loads((out / "mechanism.json").read_text())["spa"]
    assert mech["part_phrase_share"] == pytest.approx(n_part / n_all)
    assert 0 <= mech["phrase_assignment"] <= 1
    assert "phrases naming a part" in (out / "mechanism.md").read_text()
    assert "Phrases naming a part" in (out / "report.md").read_text()


def test_phrases_map_to_parts_by_text():
    from spacil.partsworld import class_descriptions, make_class_specs
    from spacil.partsworld.mechanism import phrase_component

    spec = make_class_specs(4, 1)[2]
    truth = class_descriptions(spec)
    kinds = ["body", "body", *[kind for kind, _ in spec.parts.present_parts()]]
    assert [phrase_component(p) for p in truth] == kinds  # shipped phrases: as before
    own = ["a small creature", truth[-1].upper(), "seen from the side"]
    assert [phrase_component(p) for p in own] == [None, kinds[-1], None]


# ---------------------------------------------------------------------------------------- Cars label order
# The first 25 labels of Cars in the LAMDA label list: the 100 protocol classes sorted by their
# underscore-joined folder names ('Audi_TTS_Coupe_2012' < 'Audi_TT_Hatchback_2011' because 'S' < '_').
CARS_FIRST_25 = [
    "AM General Hummer SUV 2000", "Acura Integra Type R 2001", "Acura RL Sedan 2012", "Acura TL Sedan 2012",
    "Acura TL Type-S 2008", "Acura TSX Sedan 2012", "Acura ZDX Hatchback 2012",
    "Aston Martin V8 Vantage Convertible 2012", "Aston Martin V8 Vantage Coupe 2012",
    "Aston Martin Virage Convertible 2012", "Aston Martin Virage Coupe 2012", "Audi 100 Sedan 1994",
    "Audi 100 Wagon 1994", "Audi A5 Coupe 2012", "Audi R8 Coupe 2012", "Audi RS 4 Convertible 2008",
    "Audi S4 Sedan 2007", "Audi S4 Sedan 2012", "Audi S5 Convertible 2012", "Audi S5 Coupe 2012",
    "Audi S6 Sedan 2011", "Audi TTS Coupe 2012", "Audi TT Hatchback 2011", "Audi TT RS Coupe 2012",
    "Audi V8 Sedan 1994",
]


def test_cars_labels_follow_the_lamda_list(tmp_path):
    from torchvision.datasets import ImageFolder

    from spacil.data.catalog import load_split
    from spacil.data.protocol import protocol_class_names, release_folder_names, shipped_class_names

    devkit_first_100 = shipped_class_names("cars")[:100]
    assert sorted(devkit_first_100, key=lambda n: n.replace(" ", "_"))[:25] == CARS_FIRST_25
    assert protocol_class_names("cars")[:25] == CARS_FIRST_25
    assert release_folder_names("cars")[13] == "Audi_TTS_Coupe_2012"  # devkit class 14, as the converter names it
    # a release laid out that way loads with ImageFolder's labels
    for name in devkit_first_100:
        folder = tmp_path / "train" / name.replace(" ", "_")
        folder.mkdir(parents=True)
        (tmp_path / "test" / name.replace(" ", "_")).mkdir(parents=True)
        from PIL import Image
        for split in ("train", "test"):
            Image.new("RGB", (4, 4)).save(tmp_path / split / name.replace(" ", "_") / "a.png")
    oracle = ImageFolder(str(tmp_path / "train")).classes
    assert [c.replace("_", " ") for c in oracle[:25]] == CARS_FIRST_25
    assert load_split("cars", "train", tmp_path).class_names[:25] == CARS_FIRST_25


def test_cars_folders_spelt_with_spaces_are_refused(tmp_path):
    from spacil.data.catalog import load_split
    from spacil.data.protocol import shipped_class_names
    from PIL import Image

    for name in shipped_class_names("cars")[:100]:
        for split in ("train", "test"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / split / name / "a.png")
    with pytest.raises(SpacilError, match=r"another label order.*Audi_TTS_Coupe_2012"):
        load_split("cars", "train", tmp_path)


# ---------------------------------------------------------------------------------------- the README
ROOT = Path(__file__).resolve().parents[1]
PAGES_WRITTEN_ELSEWHERE = {"docs/gpu.md", "docs/methods.md", "docs/matrix.md", "docs/performance.md"}


def test_readme_is_short_with_setup_and_caveats_first_and_links_that_resolve():
    import re

    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    first = "\n".join(lines[:60])
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    test_command = ci.split("&&", 1)[1].strip() if ci.startswith("cd ") else ci
    assert test_command in first  # CI runs exactly the README's test command
    assert "python -m pip install -e . && spa-cil demo" in first and "git clone" in first
    for caveat in ("No real-protocol numbers yet", "written by hand", "Exemplars", "synthetic"):
        assert caveat in first, caveat
    assert "<!-- partsworld-results:start -->" in first  # the block scripts/partsworld_results.py rewrites
    links = set(re.findall(r"\]\(((?:docs/)[^)#]+)", "\n".join(lines)))
    assert {"docs/method.md", "docs/results.md", "docs/protocol.md", "docs/layout.md", "docs/performance.md"} <= links
    missing = sorted(l for l in links if not (ROOT / l).is_file() and l not in PAGES_WRITTEN_ELSEWHERE)
    assert not missing, missing
