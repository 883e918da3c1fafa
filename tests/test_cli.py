"""The command line: info, one-line errors, a real train + eval."""

from typer.testing import CliRunner

from spacil.cli import app

runner = CliRunner()


def test_info_lists_what_exists():
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0
    for word in ("laion400m/ViT-B-16", "openai/ViT-B-16", "tiny-test", "cifar100", "image_folder", "default"):
        assert word in result.output


def test_bad_config_key_is_one_line_error():
    result = runner.invoke(app, ["train", "--set", "train.epochz=3"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: invalid config: unknown key 'train.epochz' (did you mean 'train.epochs'?)"]


def test_bad_dataset_path_is_one_line_error(tmp_path):
    result = runner.invoke(app, ["train", "--set", f"data.root={tmp_path / 'nowhere'}", "--set", "backbone.name=tiny-test"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: image_folder: dataset folder") and "nowhere" in lines[0]


def test_describe_without_api_key_is_one_line_error(image_folder, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = runner.invoke(app, ["describe", "--model", "m", "--output", str(tmp_path / "d.json"), "--no-progress",
                                 "--set", f"data.root={image_folder}", "--set", f"cache.root={tmp_path / 'c'}",
                                 "--set", "backbone.num_workers=0"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "OPENAI_API_KEY" in lines[0]


def test_train_then_eval(image_folder, tmp_path):
    common = ["--set", "backbone.name=tiny-test", "--set", f"data.root={image_folder}", "--set", "data.init_cls=2",
              "--set", "data.increment=2",
              "--set", f"cache.root={tmp_path / 'cache'}", "--set", "backbone.num_workers=0"]
    result = runner.invoke(app, ["train", *common, "--set", "method.name=simplecil",
                                 "--set", f"run.output_dir={tmp_path / 'runs'}",
                                 "--set", "run.name=cli", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "average accuracy" in result.output
    result = runner.invoke(app, ["eval", str(tmp_path / "runs" / "cli"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "stage 1: accuracy" in result.output
    extract = runner.invoke(app, ["extract", *common, "--no-progress"])
    assert extract.exit_code == 0 and "images encoded in this call: 0" in extract.output


def test_data_check_reports_problems_on_one_screen(image_folder):
    result = runner.invoke(app, ["data", "check", str(image_folder), "--dataset", "food101", "--no-progress"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert 1 < len(lines) <= 25 and "PROBLEM" in lines[0]
