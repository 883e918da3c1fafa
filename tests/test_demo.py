"""A short `spa-cil demo` run: parts world rendered, encoded with the shipped tiny CLIP, report written."""

import hashlib
import json
from pathlib import Path

from typer.testing import CliRunner

from spacil.backbone import load_backbone
from spacil.cli import app

runner = CliRunner()


def test_shipped_partsworld_backbone_loads_offline():
    backbone = load_backbone("partsworld-clip", device="cpu")
    assert backbone.grid_size == (8, 8) and backbone.embed_dim == 64
    weights = Path(backbone.spec.pretrained)
    report = json.loads(weights.with_suffix(".json").read_text())
    # the shipped weights are the ones the report describes: trained the way CLIP is (no patch loss), with a
    # held-out image-caption top-1 of at least 0.6, and the report says how well its patches meet the phrases
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == report["sha256"]
    assert report["settings"]["patch_loss_weight"] == 0 and report["settings"]["captions"] == "alt_text"
    assert report["held_out"]["image_to_caption_top1"] >= 0.6 and 0 <= report["held_out"]["patch_phrase_top1"] < 1
    assert report["command"].startswith("python scripts/pretrain_partsworld_clip.py")
    upper = load_backbone("partsworld-partsup", device="cpu").spec.pretrained
    assert json.loads(Path(upper).with_suffix(".json").read_text())["held_out"]["patch_phrase_top1"] > 0.5


def test_short_demo_writes_a_readable_report(tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--output", str(out), "--n-classes", "10", "--world-seed", "3",
                                 "--variants", "simplecil,spa,spa_random_selection",
                                 "--set", "train.epochs=2", "--set", "data.init_cls=5", "--set", "data.increment=5",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "| spa |" in result.output and "report:" in result.output
    for name in ("report.md", "report.html", "comparison.csv", "comparison.md", "accuracy_per_stage.png",
                 "plots/alignment.png", "plots/accuracy_matrix_spa.png", "data/world-3/ground_truth_descriptions.json",
                 "mechanism.md", "mechanism.json", "description_ablations.md", "plots/error_rates.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    md = (out / "report.md").read_text()
    assert "plots/alignment.png" in md and "10 classes in 2 tasks" in md
    rows = {r["variant"]: r for r in json.loads((out / "comparison.json").read_text())}
    assert set(rows) == {"simplecil", "spa", "spa_random_selection"}
    manifest = json.loads((out / "data" / "world-3" / "manifest.json").read_text())
    assert manifest["seed"] == 3
    # the descriptions every row read: the simulated describer's, with the guidance images in the provenance
    described = sorted((out / "data" / "world-3").glob("descriptions-simulated-*.json"))
    assert len(described) == 4  # default, random guidance, errors x0 and x2
    doc = json.loads(max(described, key=lambda p: p.stat().st_mtime_ns).read_text())
    first = doc["classes"][0]
    assert len(first["provenance"]["image_ids"]) == 5 and all(i.startswith("train/") for i in first["provenance"]["image_ids"])
    assert "simulated" in doc["produced_by"].lower()
    ablations = json.loads((out / "description_ablations.json").read_text())
    assert [e["factor"] for e in ablations["error_rates"]] == [0.0, 1.0, 2.0] and set(ablations["guidance"]) == {
        "representative+diverse", "random"}
    # the mechanism table: guided selection lands on parts far more often than random selection
    mech = json.loads((out / "mechanism.json").read_text())
    assert set(mech) == {"spa", "spa_random_selection"} and "selection precision" in result.output
    spa, rnd = mech["spa"], mech["spa_random_selection"]
    assert 0 < spa["random_precision"] < 0.5 and abs(rnd["selection_precision"] - rnd["random_precision"]) < 0.05
    assert spa["selection_precision"] > 1.5 * spa["random_precision"]
    assert 0 <= spa["phrase_assignment"] <= 1 and 0 <= spa["patch_accuracy"] <= 100
    # another world into the same folder: new data, so new run folders (not a refusal, not stale results)
    again = runner.invoke(app, ["demo", "--output", str(out), "--n-classes", "10", "--world-seed", "4",
                                "--variants", "simplecil", "--set", "data.init_cls=5", "--set", "data.increment=5",
                                "--no-progress"])
    assert again.exit_code == 0, again.output
    assert len(list((out / "runs").glob("simplecil-seed1993-*"))) == 2
    assert (out / "data" / "world-4" / "manifest.json").is_file()
    # 10 classes: chance is 10%; both must be far above it on the shipped CLIP-like backbone
    assert rows["simplecil"]["last"][0] > 30 and rows["spa"]["last"][0] > 30
