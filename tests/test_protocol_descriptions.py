"""Every protocol preset runs SPA with class-specific descriptions: no class falls back to prompt templates."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from spacil.cli import app
from spacil.config import list_presets, load_config
from spacil.data.protocol import protocol_class_names
from spacil.text.class_phrases import resolve_class_phrases

PROTOCOL_PRESETS = [p for p in list_presets() if p not in {"default", "partsworld_demo", "spa_protocol"}]


@pytest.mark.parametrize("preset", PROTOCOL_PRESETS)
def test_preset_resolves_descriptions_for_every_class(preset):
    cfg = load_config(preset)
    assert cfg.method.name == "spa"
    names = protocol_class_names(cfg.data.dataset)  # the shipped class list in label order; no images needed
    got = resolve_class_phrases(cfg, names)
    assert got.fallback_classes == []
    assert got.source == f"shipped:{cfg.data.dataset}"
    templates = {t.format(n) for n in names for t in cfg.text.templates}
    assert all(5 <= len(p) <= 10 and not set(p) & templates for p in got.phrases)


def test_info_shows_where_each_dataset_descriptions_come_from():
    out = CliRunner().invoke(app, ["info"]).output
    assert "descriptions (source=auto" in out
    assert "ucf101                 shipped spacil/descriptions/data/ucf101.json: 100 of 100 classes" in out
    assert "sun397                 shipped spacil/descriptions/data/sun397.json: 300 of 300 classes" in out
    assert "templates" not in out.split("descriptions (source=auto")[1].split("\n", 1)[1].split("methods")[0]
