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
