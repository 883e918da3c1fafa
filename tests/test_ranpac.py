"""The RanPAC-style baseline: learns incrementally above chance, resumes exactly, and is registered."""

import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from spacil.cli import app
from spacil.config import load_config
from spacil.methods import FeatureBatch, RanPAC, TaskContext, all_variants, default_variants, get_method
from spacil.methods.ranpac import RanPACConfig
from spacil.text.class_texts import ClassTexts

from baseline_toys import DIM, N_CLASSES, toy_features as _data

def _ctx(task: int, texts: ClassTexts) -> TaskContext:
    return TaskContext(task, range(4 * task, 4 * task + 4), 4 * task + 4, texts, torch.device("cpu"), seed=10 + task)


def _learn(learner: RanPAC, train: FeatureBatch, texts: ClassTexts, tasks=(0, 1)) -> None:
    for task in tasks:
        rows = torch.isin(train.labels, torch.tensor(list(_ctx(task, texts).new_classes)))
        learner.learn_task(_ctx(task, texts), train.index(rows))


def _accuracy(learner: RanPAC, batch: FeatureBatch, n_seen: int) -> float:
    keep = batch.labels < n_seen
    return float((learner.logits(batch.index(keep), n_seen).argmax(-1) == batch.labels[keep]).float().mean())


def test_learns_every_task_far_above_chance_and_keeps_old_classes():
    texts = ClassTexts([f"c{i}" for i in range(N_CLASSES)], F.normalize(torch.randn(N_CLASSES, DIM), dim=-1))
    train, test = _data(1), _data(2)
    learner = RanPAC(RanPACConfig(projection_dim=256))
    _learn(learner, train, texts, tasks=(0,))
    assert _accuracy(learner, test, 4) > 0.8  # chance: 0.25
    _learn(learner, train, texts, tasks=(1,))
    assert _accuracy(learner, test, 8) > 0.7  # chance: 0.125
    old = test.index(test.labels < 4)
    assert float((learner.logits(old, 8).argmax(-1) == old.labels).float().mean()) > 0.6
    assert all(lam in learner.config.ridge_grid for lam in learner.ridges)


def test_checkpoint_restores_the_same_scores():
    texts = ClassTexts([f"c{i}" for i in range(N_CLASSES)], F.normalize(torch.randn(N_CLASSES, DIM), dim=-1))
    learner = RanPAC(RanPACConfig(projection_dim=64, ridge=1.0))
    _learn(learner, _data(1), texts)
    restored = RanPAC(RanPACConfig(projection_dim=64, ridge=1.0))
    restored.load_trainable_state(learner.trainable_state(), _ctx(1, texts))
    assert torch.equal(restored.logits(_data(2), 8), learner.logits(_data(2), 8))


def test_registered_in_config_compare_and_info():
    entry = get_method("ranpac")
    assert entry.learner is RanPAC and entry.config is RanPACConfig
    assert "ranpac" in default_variants() and all_variants()["ranpac"].overrides == ("method.name=ranpac",)
    cfg = load_config(None, ["method.name=ranpac", "method.ranpac.projection_dim=32"])
    assert cfg.method.ranpac.projection_dim == 32
    result = CliRunner().invoke(app, ["info"])
    assert result.exit_code == 0 and "ranpac" in result.output and "method.name=ranpac" in result.output


def test_runs_in_compare_and_resumes_from_its_checkpoints(image_folder, tmp_path):
    from spacil.training.compare import run_comparison
    from spacil.training.harness import evaluate_run

    base = load_config(None, [f"data.root={image_folder}", "data.init_cls=2", "data.increment=2",
                              f"cache.root={tmp_path / 'cache'}", "backbone.num_workers=0", "run.plots=false",
                              "method.ranpac.projection_dim=64"])
    rows = run_comparison(base, ["simplecil", "ranpac"], [1993], tmp_path / "cmp", progress=False)
    assert [r.variant for r in rows] == ["simplecil", "ranpac"]
    ranpac = rows[1]
    assert ranpac.last[0] > 25  # 4 colour classes: chance is 25%
    again = evaluate_run(ranpac.folders[0], progress=False)
    assert again.stage_accuracies == ranpac.stage_accuracies[0]
