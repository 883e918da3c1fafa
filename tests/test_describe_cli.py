"""`spa-cil describe` end to end: dataset -> guidance images -> local OpenAI-compatible server -> file."""

import json

from typer.testing import CliRunner

from spacil.cli import app
from spacil.descriptions import load_description_file
from test_generator import fake_key, server  # noqa: F401  (pytest fixtures)

runner = CliRunner()


def test_describe_writes_a_valid_file_from_guidance_images(image_folder, tmp_path, server):  # noqa: F811
    out = tmp_path / "desc.json"
    args = ["describe", "--model", "fake-vlm", "--base-url", server.base_url, "--output", str(out),
            "--n-representative", "2", "--n-diverse", "1", "--no-progress", "--max-attempts", "2",
            "--set", f"data.root={image_folder}", "--set", f"cache.root={tmp_path / 'cache'}",
            "--set", "backbone.num_workers=0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "[1/4] class_00: done" in result.output and "done 4, from cache 0, failed 0" in result.output
    described = load_description_file(out)
    assert described.names == [f"class_{c:02d}" for c in range(4)]
    doc = json.loads(out.read_text())
    for entry in doc["classes"]:
        ids = entry["provenance"]["image_ids"]
        assert len(ids) == 3 and len(set(ids)) == 3
        assert all(i.startswith(f"train/{entry['name']}/") for i in ids)
    # every request carried the 3 guidance images of its class
    for body in server.bodies:
        parts = body["messages"][0]["content"]
        assert sum(p["type"] == "image_url" for p in parts) == 3

    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "done 0, from cache 4" in again.output
    assert sum(server.requests.values()) == 4, "a rerun must not ask the model again"


def test_describe_finishes_against_a_server_without_json_modes(image_folder, tmp_path, server):  # noqa: F811
    """Local servers reject response_format and answer in their own shapes: every class still gets described."""
    server.rejected_formats = {"json_schema", "json_object"}
    server.scripts.update({"class 00": ["descriptions"], "class 01": ["bare_list"], "class 02": ["bullets"]})
    out = tmp_path / "desc.json"
    args = ["describe", "--model", "fake-vlm", "--base-url", server.base_url, "--output", str(out),
            "--n-representative", "1", "--n-diverse", "1", "--no-progress", "--max-attempts", "1",
            "--set", f"data.root={image_folder}", "--set", f"cache.root={tmp_path / 'cache'}",
            "--set", "backbone.num_workers=0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "done 4, from cache 0, failed 0" in result.output
    assert load_description_file(out).names == [f"class_{c:02d}" for c in range(4)]
    assert sum(server.requests.values()) == 6  # 2 rejected formats, then one request per class

    again = runner.invoke(app, args + ["--no-json-mode"])  # the old flag still parses; the format is not in the key
    assert again.exit_code == 0 and "done 0, from cache 4" in again.output
    assert sum(server.requests.values()) == 6, "a rerun must not ask the model again"

    fresh = runner.invoke(app, args + ["--response-format", "none", "--cache", str(tmp_path / "fresh.jsonl")])
    assert fresh.exit_code == 0 and "done 4" in fresh.output
    assert sum(server.requests.values()) == 10 and all("response_format" not in b for b in server.bodies[6:])

    for bad in (["--response-format", "xml"], ["--response-format", "none", "--json-mode"]):
        failed = runner.invoke(app, args + bad)
        assert failed.exit_code != 0 and "Traceback" not in failed.output
        assert len(failed.output.strip().splitlines()) == 1, failed.output
    assert sum(server.requests.values()) == 10


def test_guidance_images_skip_the_validation_rows(image_folder, tmp_path):
    """Validation accuracy must not score images the descriptions were written from."""
    from spacil.config import load_config
    from spacil.data.validation import validation_mask
    from spacil.descriptions.pipeline import DescribeSettings, guidance_requests
    from spacil.features import FeatureCache, get_features
    from spacil.backbone import load_backbone
    from spacil.data.catalog import load_split

    overrides = [f"data.root={image_folder}", f"cache.root={tmp_path / 'cache'}", "backbone.num_workers=0",
                 "data.validation_fraction=0.5"]
    config = load_config(None, overrides)
    settings = DescribeSettings(model="unused", output=tmp_path / "d.json", cache=tmp_path / "c.jsonl",
                                n_representative=1, n_diverse=1)
    requests = guidance_requests(config, settings, progress=False)
    source = load_split(config.data.dataset, "train", config.data.root, False)
    backbone = load_backbone(config.backbone.name, config.backbone.checkpoint, "cpu", "fp32", config.data.resize)
    feats = get_features(source, backbone, FeatureCache(config.cache.root, config.cache.verify, config.cache.dtype),
                         8, 0, progress=False)
    held = validation_mask(feats.labels, feats.sample_ids, 0.5, config.data.validation_seed)
    validation_ids = {sid for sid, h in zip(feats.sample_ids, held) if h}
    assert len(validation_ids) == 12  # 3 of each class's 6 training images
    assert all(len(r.image_ids) == 2 for r in requests)
    assert not {i for r in requests for i in r.image_ids} & validation_ids
