"""PROOF, RAPF, ENGINE and CLG-CBM in the harness: learn above chance, resume exactly, are reproducible,
are registered with what they store and read, and run through `compare` on real cached features."""

import pytest
import torch
from typer.testing import CliRunner

from baseline_toys import N_CLASSES, accuracy, learn, toy_ctx, toy_features, toy_texts
from spacil.cli import app
from spacil.config import load_config
from spacil.methods import get_method, make_learner

# a toy has few batches per epoch: enough steps for methods that start from random projections
FAST = {"proof": ["epochs=30", "lr=0.01"], "rapf": ["epochs=20", "lr=0.01", "milestones=[15]", "batch_size=32"],
        "engine": ["epochs=5"], "clg_cbm": ["gate_epochs=5", "head_epochs=15", "milestones=[12]", "head_lr=0.02"]}


def _learner(name: str, extra: tuple[str, ...] = ()):
    overrides = [f"method.name={name}", *(f"method.{name}.{o}" for o in (*FAST[name], *extra))]
    return make_learner(load_config(None, overrides))


@pytest.mark.parametrize("name", sorted(FAST))
def test_learns_both_tasks_far_above_chance(name):
    texts, train, test = toy_texts(), toy_features(1), toy_features(2)
    learner = _learner(name)
    learn(learner, train, texts)
    assert accuracy(learner, test, N_CLASSES) > 0.6  # chance: 0.125
    old = test.index(test.labels < 4)
    assert accuracy(learner, old, N_CLASSES) > 0.4  # old classes kept (chance 0.125 over all 8)


@pytest.mark.parametrize("name", sorted(FAST))
def test_checkpoint_restores_the_same_scores_and_training_goes_on(name):
    texts, train, test = toy_texts(), toy_features(1), toy_features(2)
    learner = _learner(name)
    learn(learner, train, texts, tasks=(0,))
    restored = _learner(name)
    restored.load_trainable_state(learner.trainable_state(), toy_ctx(0, texts))
    assert torch.allclose(restored.logits(test, 4), learner.logits(test, 4), atol=1e-5)
    learn(learner, train, texts, tasks=(1,))
    learn(restored, train, texts, tasks=(1,))
    assert torch.allclose(restored.logits(test, N_CLASSES), learner.logits(test, N_CLASSES), atol=1e-4)


@pytest.mark.parametrize("name", sorted(FAST))
def test_same_seed_same_scores_other_seed_other_scores(name):
    texts, train, test = toy_texts(), toy_features(1), toy_features(2)
    runs = []
    for seed in (10, 10, 11):
        learner = _learner(name)
        learn(learner, train, texts, seed=seed)
        runs.append(learner.logits(test, N_CLASSES))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_registry_and_info_say_what_each_method_stores_and_reads():
    assert get_method("proof").exemplars and not any(get_method(n).exemplars for n in ("rapf", "engine", "clg_cbm"))
    assert "descriptions" in get_method("engine").features and "descriptions" in get_method("clg_cbm").features
    assert "patches" in get_method("spa").features and get_method("rapf").features == ("global", "prompts")
    out = CliRunner().invoke(app, ["info"]).output
    proof_line = out.splitlines()[out.splitlines().index(next(l for l in out.splitlines() if l.startswith("  proof ")))
                                  + 1]
    assert "exemplars: yes" in proof_line and "features: global, prompts" in proof_line
    assert out.count("exemplars: no") >= 4


def test_compare_runs_the_four_on_one_set_of_cached_features(image_folder, tmp_path):
    from spacil.training.compare import run_comparison

    overrides = [f"data.root={image_folder}", "data.init_cls=2", "data.increment=2", f"cache.root={tmp_path / 'c'}",
                 "backbone.num_workers=0", "run.plots=false"]
    overrides += [f"method.{n}.{o}" for n in FAST for o in FAST[n]]
    base = load_config(None, overrides)
    rows = run_comparison(base, ["proof", "rapf", "engine", "clg_cbm"], [1993], tmp_path / "cmp", progress=False)
    assert [r.variant for r in rows] == ["proof", "rapf", "engine", "clg_cbm"]
    assert all(len(r.stage_accuracies[0]) == 2 for r in rows)
