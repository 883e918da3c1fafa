"""ENGINE's mechanisms: its LDA equals scikit-learn's, description re-ranking, description draws."""

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from baseline_toys import N_CLASSES, learn, toy_features, toy_texts
from spacil.methods.engine import ENGINE, EngineConfig
from spacil.methods.lda import IncrementalLDA


def test_incremental_lda_equals_scikit_learn_over_two_tasks():
    g = torch.Generator().manual_seed(0)
    d, per, n_classes = 5, 12, 6
    labels = torch.arange(n_classes).repeat_interleave(per)
    x = torch.randn(n_classes, d, generator=g)[labels] + 0.7 * torch.randn(len(labels), d, generator=g)
    lda = IncrementalLDA()
    lda.add(x[labels < 3], labels[labels < 3], range(0, 3))
    lda.add(x[labels >= 3], labels[labels >= 3], range(3, 6))
    n = len(labels)
    ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=d / (n - 1 + d), priors=np.full(n_classes, 1 / n_classes))
    ref.fit(x.double().numpy(), labels.numpy())
    probe = torch.randn(40, d, generator=g)
    ours, theirs = lda.logits(probe).double().numpy(), ref.decision_function(probe.double().numpy())
    k = (n - 1) / (n * (n - 1 + d))  # our covariance is d * k times scikit-learn's inverse scale
    prior = math.log(1 / n_classes)
    assert np.allclose(ours - prior, d * k * (theirs - prior), atol=1e-4)
    assert (ours.argmax(1) == ref.predict(probe.double().numpy())).all()


def test_rerank_rescores_only_the_top_candidates_by_their_descriptions():
    texts, train, test = toy_texts(), toy_features(1), toy_features(2)
    learner = ENGINE(EngineConfig(epochs=1, rerank_top=3))
    learn(learner, train, texts)
    s = learner.scores(test, N_CLASSES)
    top = s["adapted"].topk(3, dim=-1).indices
    frozen = F.normalize(test.global_, dim=-1)
    desc = texts.extras["engine.descriptions"].mean()
    expected = torch.zeros_like(s["adapted"])
    for i in range(len(test)):
        for c in top[i].tolist():
            expected[i, c] = frozen[i] @ desc[c]
    assert torch.allclose(s["rerank"], expected, atol=1e-6)
    mixed = 0.99 * s["lda"] + 0.01 * (0.8 * s["rerank"] + 0.2 * s["adapted"])
    assert torch.allclose(learner.logits(test, N_CLASSES), mixed, atol=1e-6)
    assert torch.allclose(s["lda"].norm(dim=-1), torch.ones(len(test)))


def test_description_draws_come_from_the_sample_s_own_class():
    texts = toy_texts()
    table = texts.extras["engine.descriptions"]
    table.mask[2, 2] = False  # class 2 has two phrases only
    learner = ENGINE(EngineConfig())
    learner.descriptions = table
    labels = torch.tensor([2] * 300 + [5] * 300)
    drawn = learner._draw_descriptions(labels, torch.Generator().manual_seed(0))
    own = [{tuple(e.tolist()) for e in table.embeddings[c][table.mask[c]]} for c in (2, 5)]
    assert {tuple(e.tolist()) for e in drawn[:300]} == own[0]
    assert {tuple(e.tolist()) for e in drawn[300:]} == own[1]


def test_old_adapters_freeze_and_prototypes_are_class_means():
    texts, train = toy_texts(), toy_features(1)
    learner = ENGINE(EngineConfig(epochs=1))
    learn(learner, train, texts, tasks=(0,))
    first = learner.adapt_img[0].weight.clone()
    learn(learner, train, texts, tasks=(1,))
    assert torch.equal(learner.adapt_img[0].weight, first) and len(learner.adapt_text) == 2
    means = torch.stack([train.global_[train.labels == c].mean(0) for c in range(N_CLASSES)])
    assert torch.allclose(learner.prototypes, means, atol=1e-5)
