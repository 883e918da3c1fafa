"""RAPF's mechanisms against hand-computed references: SVD fusion, hard pairs and their hinge, Gaussians."""

import torch
import torch.nn.functional as F

from baseline_toys import learn, toy_ctx, toy_features, toy_texts
from spacil.methods.class_gaussians import ClassGaussians
from spacil.methods.rapf import RAPF, RAPFConfig, hard_pairs, svd_fusion


def test_svd_fusion_equals_its_formula_on_a_hand_built_case():
    old = torch.diag(torch.tensor([2.0, 1.0]))  # U = V = I, S = diag(2, 1)
    new = torch.tensor([[2.0, 0.5], [0.0, 3.0]])
    # |P - S V^T| = [[0, .5], [0, 2]] -> /2 + .6 -> [[.6, .85], [.6, 1]] (clamped); fused = M*P + (1-M)*S V^T
    expected = torch.tensor([[0.6 * 2 + 0.4 * 2, 0.85 * 0.5], [0.0, 3.0]])
    assert torch.allclose(svd_fusion(old, new, 0.6), expected, atol=1e-6)
    assert torch.allclose(svd_fusion(old, new, 1.0), new, atol=1e-6)  # mask all ones: the new weights


def test_svd_fusion_does_not_depend_on_the_basis():
    g = torch.Generator().manual_seed(0)
    old, new = torch.randn(5, 5, generator=g), torch.randn(5, 5, generator=g)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    assert torch.allclose(svd_fusion(q @ old, q @ new, 0.6), q @ svd_fusion(old, new, 0.6), atol=1e-5)


def test_hard_pairs_are_old_new_pairs_with_close_texts():
    texts = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.95, 0.3, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    # old 0, 1; new 2 (close to 0: distance ~0.30), 3 (far from both: sqrt 2)
    assert hard_pairs(texts, 2, 0.55).tolist() == [[0, 2]]
    assert hard_pairs(texts, 2, 1.5).tolist() == [[0, 2], [0, 3], [1, 2], [1, 3]]


def test_hinge_pushes_old_samples_from_the_close_new_text():
    learner = RAPF(RAPFConfig())
    learner.texts = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    learner.adapter = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        learner.adapter.weight.copy_(torch.eye(2))
    feats = torch.tensor([[1.0, 1.0], [1.2, 0.9], [0.8, 1.1]])
    learner.gaussians = ClassGaussians(1e-8)
    learner.gaussians.add(feats, torch.zeros(3, dtype=torch.long), range(1))
    learner.gaussians.chol.zero_()  # every sample is the mean (1, 1)
    f = F.normalize(torch.tensor([1.0, 1.0]), dim=0)
    expected = torch.relu(f @ learner.texts[1] - f @ learner.texts[0] + 0.1)
    got = learner._hinge(torch.tensor([[0, 1]]), 4, torch.Generator().manual_seed(0))
    assert torch.allclose(got, expected)


def test_gaussian_samples_follow_the_class_statistics():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 3, generator=g) @ torch.tensor([[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, 0.3, 0.5]]) + 4.0
    bank = ClassGaussians(1e-4)
    bank.add(x, torch.zeros(400, dtype=torch.long), range(1))
    s = bank.sample(torch.zeros(20000, dtype=torch.long), torch.Generator().manual_seed(2))
    assert torch.allclose(s.mean(0), x.mean(0), atol=0.05)
    assert torch.allclose(torch.cov(s.T), torch.cov(x.T), atol=0.1)


def test_adapter_weights_after_a_task_are_the_svd_fusion_of_before_and_trained(monkeypatch):
    import spacil.methods.rapf as rapf

    texts, train = toy_texts(), toy_features(1)
    learner = RAPF(RAPFConfig(epochs=2))
    learn(learner, train, texts, tasks=(0,))
    before = learner.adapter.weight.detach().clone()
    trained = {}

    def spy(old, new, mix_bias):
        trained["new"] = new.detach().clone()
        return svd_fusion(old, new, mix_bias)

    monkeypatch.setattr(rapf, "svd_fusion", spy)
    stats = learner.learn_task(toy_ctx(1, texts), train.index(train.labels >= 4))
    assert torch.allclose(learner.adapter.weight, svd_fusion(before, trained["new"], 0.6), atol=1e-6)
    assert stats["hard_pairs"] == len(hard_pairs(learner.texts[:8], 4, 0.55))
    assert len(learner.gaussians) == 8


def test_replay_visits_every_old_class_each_epoch_whatever_the_task_size():
    from spacil.methods.rapf import replay_classes_per_batch

    assert replay_classes_per_batch(90, 50, None) == 2  # CIFAR 10-10, last task: the authors' hand-set 2
    assert replay_classes_per_batch(40, 5, None) == 8  # parts world, last task: 5 batches must cover 40 classes
    assert replay_classes_per_batch(40, 5, 3) == 3  # a fixed value wins
    texts, train = toy_texts(), toy_features(1)
    learner = RAPF(RAPFConfig(epochs=1, batch_size=10_000, beta=0.1))  # one batch per epoch, 4 old classes
    learn(learner, train, texts, tasks=(0,))
    seen = []
    sample = learner.gaussians.sample
    learner.gaussians.sample = lambda labels, generator: (seen.append(labels.clone()), sample(labels, generator))[1]
    learner.learn_task(toy_ctx(1, texts), train.index(train.labels >= 4))
    assert set(seen[0].tolist()) == {0, 1, 2, 3}  # the first draw of the epoch is the cross-entropy replay
