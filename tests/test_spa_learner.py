"""SPA's learner on synthetic features built so that the right answer is known."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spacil.config import TrainConfig
from spacil.methods.spa import SPAConfig
from spacil.methods.base import FeatureBatch, TaskContext
from spacil.methods.spa.learner import SPALearner
from spacil.text.class_texts import ClassTexts
from spacil.text.semantic_tokens import SemanticTokens

DIM, PATCHES = 24, 9


def _world(n_classes, seed=0):
    """Classes share one global look; each has its own 'part' direction that shows in a single patch."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(DIM, DIM, generator=g))[0]
    body, parts = basis[0], basis[1:n_classes + 1]
    prompts = F.normalize(body + 0.05 * torch.randn(n_classes, DIM, generator=g), dim=-1)
    tokens = torch.stack([torch.stack([parts[c], F.normalize(parts[c] + 0.3 * body, dim=0)]) for c in range(n_classes)])
    sem = SemanticTokens(tokens=F.normalize(tokens, dim=-1), mask=torch.ones(n_classes, 2, dtype=torch.bool),
                         description=F.normalize(tokens.mean(1), dim=-1), phrases=[["p", "q"]] * n_classes,
                         token_phrase=torch.tensor([[0, 1]] * n_classes))
    texts = ClassTexts([f"c{i}" for i in range(n_classes)], prompts, semantic=sem)
    return body, parts, texts


def _images(body, parts, labels, seed):
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    glob = body + 0.3 * torch.randn(n, DIM, generator=g)
    patches = body + 0.3 * torch.randn(n, PATCHES, DIM, generator=g)
    where = torch.randint(0, PATCHES, (n,), generator=g)
    patches[torch.arange(n), where] = parts[labels] * 2 + 0.2 * torch.randn(n, DIM, generator=g)
    return FeatureBatch(glob, patches.half(), torch.as_tensor(labels))


def _ctx(task, classes, n_seen, texts):
    return TaskContext(task, classes, n_seen, texts, torch.device("cpu"), seed=100 + task)


def _accuracy(learner, batch, n_seen):
    return float((learner.logits(batch, n_seen).argmax(-1) == batch.labels).float().mean())


def _spa(**overrides):
    cfg = SPAConfig.model_validate({"selection": {"k": 2}, "ot": {"eps": 0.05, "iterations": 30}, **overrides})
    return cfg


def test_patch_branch_finds_local_parts_that_global_features_miss():
    body, parts, texts = _world(6)
    labels = np.repeat(np.arange(6), 20)
    train, test = _images(body, parts, labels, 1), _images(body, parts, labels, 2)
    train_cfg = TrainConfig(epochs=0)
    spa = SPALearner(_spa(), train_cfg)
    spa.learn_task(_ctx(0, range(0, 6), 6, texts), train)
    cls_only = SPALearner(_spa(patch_branch=False), train_cfg)
    cls_only.learn_task(_ctx(0, range(0, 6), 6, texts), train)
    assert _accuracy(spa, test, 6) > 0.9
    assert _accuracy(cls_only, test, 6) < 0.5  # chance is 1/6


def test_training_learns_well_above_chance_and_is_seed_deterministic():
    # prompts carry no class information here: only training can separate the classes by their global features
    g = torch.Generator().manual_seed(3)
    n_classes = 5
    centres = F.normalize(torch.randn(n_classes, DIM, generator=g), dim=-1)
    prompts = F.normalize(torch.randn(n_classes, DIM, generator=g), dim=-1)
    texts = ClassTexts([f"c{i}" for i in range(n_classes)], prompts)
    labels = torch.arange(n_classes).repeat_interleave(30)

    def sample(seed):
        gg = torch.Generator().manual_seed(seed)
        glob = centres[labels] + 0.25 * torch.randn(len(labels), DIM, generator=gg)
        return FeatureBatch(glob, torch.zeros(len(labels), PATCHES, DIM).half(), labels)

    train, test = sample(1), sample(2)
    cfg = _spa(patch_branch=False, prototype_weight=0.0)  # no class means: only training can separate them
    tc = TrainConfig(epochs=30, lr=0.01, batch_size=32)
    before = SPALearner(cfg, TrainConfig(epochs=0))
    before.learn_task(_ctx(0, range(0, n_classes), n_classes, texts), train)
    a = SPALearner(cfg, tc)
    a.learn_task(_ctx(0, range(0, n_classes), n_classes, texts), train)
    b = SPALearner(cfg, tc)
    b.learn_task(_ctx(0, range(0, n_classes), n_classes, texts), train)
    assert _accuracy(before, test, n_classes) < 0.6
    assert _accuracy(a, test, n_classes) > 0.9
    for (ka, va), (kb, vb) in zip(a.trainable_state().items(), b.trainable_state().items()):
        assert ka == kb and torch.equal(va, vb)


def _two_task_forgetting(replay: bool, patch_branch: bool, scope: str = "all", patch: str = "per_task",
                         centering: str = "task", gate: str = "task_probability") -> float:
    """Old-class accuracy after task 2 when task 2 trains hard on new classes only."""
    body, parts, texts = _world(4, seed=5)
    g = torch.Generator().manual_seed(7)
    centres = F.normalize(torch.randn(4, DIM, generator=g), dim=-1)
    texts = ClassTexts(texts.class_names, F.normalize(torch.randn(4, DIM, generator=g), dim=-1), semantic=texts.semantic)

    def sample(classes, seed):
        labels = torch.tensor(classes).repeat_interleave(40)
        gg = torch.Generator().manual_seed(seed)
        glob = centres[labels] + 0.2 * torch.randn(len(labels), DIM, generator=gg)
        batch = _images(body, parts, labels.numpy(), seed)
        return FeatureBatch(glob, batch.patches, labels)

    # calibration off: it keeps class statistics of its own and would blur what replay alone does
    cfg = _spa(patch_branch=patch_branch, replay={"enabled": replay, "samples_per_class": 40, "calibration": "none"},
               projector={"scope": scope, "patch": patch}, patch_centering=centering, patch_gate=gate)
    learner = SPALearner(cfg, TrainConfig(epochs=40, lr=0.02, batch_size=32))
    learner.learn_task(_ctx(0, range(0, 2), 2, texts), sample([0, 1], 1))
    learner.learn_task(_ctx(1, range(2, 4), 4, texts), sample([2, 3], 2))
    return _accuracy(learner, sample([0, 1], 3), 4)


@pytest.mark.parametrize("patch_branch", [False, True])
def test_gaussian_replay_reduces_forgetting(patch_branch):
    without = _two_task_forgetting(replay=False, patch_branch=patch_branch)
    with_replay = _two_task_forgetting(replay=True, patch_branch=patch_branch)
    assert with_replay > without + 0.2, (without, with_replay)


def test_frozen_patch_branch_keeps_old_classes_without_replay():
    """scope=global: projectors adapt only the global branch, so the part evidence of old classes cannot drift
    (uncentred, ungated scores: in this world every class has the same global look, only cross-task part evidence
    helps)."""
    adapted = _two_task_forgetting(replay=False, patch_branch=True, scope="all", centering="none", gate="none")
    frozen = _two_task_forgetting(replay=False, patch_branch=True, scope="global", patch="frozen", centering="none",
                                  gate="none")
    assert frozen > adapted + 0.2, (adapted, frozen)


@pytest.mark.parametrize(("scope", "patch"), [("global", "first_task"), ("global", "per_task"), ("global", "frozen"),
                                             ("all", "per_task")])
def test_patch_scores_of_old_classes_move_only_when_projectors_adapt_patches(scope, patch):
    """Per-task patch projectors learn (task 2's scores differ from frozen ones) yet never move task 1's."""
    body, parts, texts = _world(4)
    labels = np.repeat(np.arange(4), 10)
    images = _images(body, parts, labels, 1)
    learner = SPALearner(_spa(projector={"scope": scope, "patch": patch}), TrainConfig(epochs=3, lr=0.02))
    learner.learn_task(_ctx(0, range(0, 2), 2, texts), _images(body, parts, labels[:20], 2))
    before = learner.patch_evidence(images.patches, 2)[0]
    learner.learn_task(_ctx(1, range(2, 4), 4, texts), _images(body, parts, labels[20:], 3))
    after = learner.patch_evidence(images.patches, 4)[0][:, :2]
    assert torch.equal(before, after) == (scope == "global")
    if patch != "frozen" and scope == "global":  # the patch projectors did learn something
        frozen = SPALearner(_spa(projector={"patch": "frozen"}), TrainConfig(epochs=0))
        frozen.learn_task(_ctx(0, range(0, 2), 2, texts), _images(body, parts, labels[:20], 2))
        assert not torch.allclose(frozen.patch_evidence(images.patches, 2)[0], before)
def test_state_round_trip_gives_identical_logits():
    body, parts, texts = _world(4)
    labels = np.repeat(np.arange(4), 10)
    batch = _images(body, parts, labels, 1)
    learner = SPALearner(_spa(), TrainConfig(epochs=2, lr=0.01))
    learner.learn_task(_ctx(0, range(0, 2), 2, texts), _images(body, parts, labels[:20], 1))
    learner.learn_task(_ctx(1, range(2, 4), 4, texts), _images(body, parts, labels[20:], 1))
    restored = SPALearner(_spa(), TrainConfig(epochs=2, lr=0.01))
    restored.load_trainable_state(learner.trainable_state(), _ctx(1, range(2, 4), 4, texts))
    torch.testing.assert_close(restored.logits(batch, 4), learner.logits(batch, 4))


def _three_tasks(cfg_overrides=None, epochs=2, rotate=False, lr=0.02):
    """Three tasks of two classes; ``rotate``: patch tokens turned by a fixed random rotation, so they no longer
    meet the semantic tokens (like a CLIP whose patch tokens were never aligned with phrases)."""
    body, parts, texts = _world(6)
    labels = np.repeat(np.arange(6), 10)
    rotation = torch.linalg.qr(torch.randn(DIM, DIM, generator=torch.Generator().manual_seed(3)))[0]

    def images(rows, seed):
        batch = _images(body, parts, rows, seed)
        return FeatureBatch(batch.global_, (batch.patches.float() @ rotation).half(), batch.labels) if rotate else batch

    learner = SPALearner(_spa(**(cfg_overrides or {})), TrainConfig(epochs=epochs, lr=lr))
    for task in range(3):
        rows = labels[labels // 2 == task]
        learner.learn_task(_ctx(task, range(2 * task, 2 * task + 2), 2 * task + 2, texts), images(rows, task + 1))
    return learner, images(labels, 9)


def test_task_centred_patch_scores_have_zero_mean_within_each_task():
    learner, images = _three_tasks({"patch_centering": "task"})
    patch = learner.patch_evidence(images.patches, 6)[0]
    centred = learner._centred(patch)
    by_hand = patch.clone()
    for start in (0, 2, 4):
        by_hand[:, start:start + 2] -= patch[:, start:start + 2].mean(1, keepdim=True)
    torch.testing.assert_close(centred, by_hand)
    assert centred.reshape(len(patch), 3, 2).sum(-1).abs().max() < 1e-5


def test_calibration_pool_scores_kept_from_earlier_tasks_equal_a_fresh_scoring():
    """Each class's pseudo pool is scored against a new task's classes only; what was kept from earlier tasks
    equals scoring the regenerated pool against every class now (old classes' patch scores cannot move)."""
    learner, _ = _three_tasks()
    side = learner.class_side(6)
    kept = {c: learner._pool_patch_scores(c, 6, side).clone() for c in range(6)}
    assert all(v.shape[1] == 6 for v in kept.values())
    learner._pool_scores = {}
    for c in range(6):
        torch.testing.assert_close(learner._pool_patch_scores(c, 6, side), kept[c])


def test_patch_alignment_loss_teaches_the_patch_branch():
    """Patch tokens that do not meet the semantic tokens: the frozen branch is near chance, per-task patch
    projectors trained with the alignment loss learn to score the right class on patches alone."""
    def patch_accuracy(overrides):
        learner, images = _three_tasks(overrides, epochs=30, rotate=True, lr=0.01)
        return float((learner.patch_evidence(images.patches, 6)[0].argmax(-1) == images.labels).float().mean())

    frozen = patch_accuracy({"projector": {"patch": "frozen"}})
    learned = patch_accuracy({"projector": {"patch_lr_scale": 1.0}})
    assert frozen < 0.45 and learned > frozen + 0.2, (frozen, learned)


def test_learned_tokens_move_in_their_own_task_only_and_find_parts_the_phrases_miss():
    """Patch tokens turned away from the phrases: class tokens learned from the phrases score the right class
    on patches far better than the frozen phrases; a later task never moves an earlier task's tokens."""
    def run(tokens):
        learner, images = _three_tasks({"projector": {"tokens": tokens, "patch_lr_scale": 0.1}}, epochs=30,
                                       rotate=True, lr=0.01)
        accuracy = float((learner.patch_evidence(images.patches, 6)[0].argmax(-1) == images.labels).float().mean())
        return learner, accuracy

    frozen, frozen_accuracy = run("frozen")
    learned, learned_accuracy = run("learned")
    assert frozen.token_offsets is None and len(learned.token_offsets) == 3
    assert learned_accuracy > frozen_accuracy + 0.2, (frozen_accuracy, learned_accuracy)
    assert all(not p.requires_grad and p.abs().max() > 0 for p in learned.token_offsets)

    body, parts, texts = _world(4)
    labels = np.repeat(np.arange(4), 10)
    learner = SPALearner(_spa(), TrainConfig(epochs=3, lr=0.02))
    learner.learn_task(_ctx(0, range(0, 2), 2, texts), _images(body, parts, labels[:20], 2))
    first = learner.token_offsets[0].detach().clone()
    stats = learner.learn_task(_ctx(1, range(2, 4), 4, texts), _images(body, parts, labels[20:], 3))
    assert torch.equal(learner.token_offsets[0], first) and 0 < stats["token_phrase_cosine"] < 1


def test_task_gate_is_the_global_probability_mass_of_each_class_task():
    learner = SPALearner(_spa(logit_scale=1.0, patch_gate="task_probability"), TrainConfig(epochs=0))
    learner.task_starts = [0, 2, 3]
    score = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    p = torch.softmax(score, dim=-1)
    mass = torch.stack([p[:, :2].sum(1), p[:, 2:3].sum(1), p[:, 3:].sum(1)], dim=1)
    expected = mass[:, [0, 0, 1, 2]]
    torch.testing.assert_close(learner._task_gate(score), expected)
    learner.config.patch_gate = "none"
    assert learner._task_gate(score) == 1.0


def test_first_task_patch_projector_is_trained_once_and_shared_by_every_task():
    """projector.patch=first_task: one projector, learned in task 0 and frozen; later tasks learn only tokens."""
    learner, images = _three_tasks(epochs=3)
    assert len(learner.patch_projectors) == 1 and len(learner.token_offsets) == 3
    assert not any(p.requires_grad for p in learner.patch_projectors.parameters())
    assert learner.patch_projectors[0].up.weight.abs().max() > 0  # it did learn (its output layer starts at zero)
    per_task, _ = _three_tasks({"projector": {"patch": "per_task"}}, epochs=3)
    assert len(per_task.patch_projectors) == 3
