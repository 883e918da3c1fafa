"""Which phrases a run uses: dataset file, shipped file, or templates with a warning naming the classes."""

from spacil.config import load_config
from spacil.descriptions import DescriptionSet, save_description_file
from spacil.text.class_phrases import resolve_class_phrases


def test_shipped_file_and_template_fallback(caplog):
    cfg = load_config(None, ["data.dataset=cifar100", "text.templates=['a photo of a {}.']"])
    with caplog.at_level("WARNING"):
        got = resolve_class_phrases(cfg, ["apple", "made_up_thing", "made-up thing"])
    assert got.source == "shipped:cifar100"
    assert 5 <= len(got.phrases[0]) <= 10
    assert got.fallback_classes == ["made_up_thing", "made-up thing"]
    assert got.phrases[1] == ["a photo of a made up thing."] and got.phrases[2] == ["a photo of a made-up thing."]
    assert "made_up_thing" in caplog.text or "made up thing" in caplog.text


def test_dataset_folder_file_wins_over_shipped(tmp_path):
    save_description_file(DescriptionSet("mine", {"apple": ["a", "b", "c", "d", "e"]}, produced_by="test"),
                          tmp_path / "descriptions.json")
    cfg = load_config(None, ["data.dataset=cifar100", f"data.root={tmp_path}"])
    got = resolve_class_phrases(cfg, ["apple"])
    assert got.phrases == [["a", "b", "c", "d", "e"]] and got.source.endswith("descriptions.json")
    only_templates = load_config(None, ["descriptions.source=templates"])
    assert resolve_class_phrases(only_templates, ["apple"]).source == "templates"
