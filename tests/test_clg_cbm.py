"""CLG-CBM's mechanisms: concept bank from description phrases, gate and concept selection, concept head,
alignment loss, Gaussian and shifted old-class samples."""

import torch
import torch.nn.functional as F

from baseline_toys import N_CLASSES, learn, toy_ctx, toy_features, toy_texts
from spacil.methods.clg_cbm import CLGCBM, CLGCBMConfig, alignment_loss, concept_bank, select_concepts
from spacil.methods.seeded import make_generator


def test_concept_bank_is_the_distinct_phrases_of_the_task_classes():
    table = toy_texts().extras["clg_cbm.concepts"]
    bank, phrases = concept_bank(table.embeddings, table.mask, table.phrases, range(0, 4))
    assert phrases == ["part 0", "shape 0", "common", "part 1", "shape 1", "part 2", "part 3"]
    assert torch.equal(bank[3], table.embeddings[1, 0]) and torch.equal(bank[2], table.embeddings[0, 2])


def test_each_gate_row_takes_its_nearest_free_concept():
    concepts = torch.eye(4)
    centres = torch.tensor([[1.0, 0.1, 0, 0], [0.9, 0.2, 0, 0], [0, 0, 0, 3.0]])
    assert select_concepts(centres, concepts, 3) == [0, 1, 3]  # row 1's nearest (0) is taken: next is 1
    assert select_concepts(centres, concepts, 2) == [0, 1]


def test_alignment_loss_is_minus_one_when_concept_scores_equal_the_image_concept_cosines():
    g = torch.Generator().manual_seed(0)
    x, concepts = torch.randn(10, 6, generator=g), F.normalize(torch.randn(4, 6, generator=g), dim=-1)
    assert torch.allclose(alignment_loss(x, concepts, x @ concepts.T), torch.tensor(-1.0), atol=1e-6)
    other = torch.randn(10, 4, generator=g)
    t = F.normalize((x @ concepts.T) ** 3, dim=0)
    c = F.normalize(other ** 3, dim=0)
    expected = -sum(float(t[:, j] @ c[:, j]) for j in range(4)) / 4
    assert abs(float(alignment_loss(x, concepts, other)) - expected) < 1e-6


def test_gate_shape_and_concept_head_growth():
    texts, train = toy_texts(), toy_features(1)
    learner = CLGCBM(CLGCBMConfig(gate_epochs=2, head_epochs=2, pool_per_class=1))
    x = F.normalize(train.global_[train.labels < 4], dim=-1)
    table = texts.extras["clg_cbm.concepts"]
    bank, _ = concept_bank(table.embeddings, table.mask, table.phrases, range(0, 4))
    gate = learner.train_gate(x, train.labels[train.labels < 4], bank, make_generator(0))
    assert gate[0].weight.shape == (len(bank), 16) and gate[0].bias is None
    assert isinstance(gate[1], torch.nn.BatchNorm1d) and gate[2].weight.shape == (4, len(bank))
    learn(learner, train, texts, tasks=(0,))
    assert learner.explainer.weight.shape == (4, 16) and len(learner.concepts) == 4
    learn(learner, train, texts, tasks=(1,))
    assert learner.bottleneck.shape == (8, 16) and [h.weight.shape for h in learner.heads] == [(4, 8), (4, 8)]
    logits, csv = learner.forward(train.global_)
    assert logits.shape == (len(train), N_CLASSES) and csv.shape == (len(train), 8)
    assert torch.allclose(csv, F.normalize(train.global_, dim=-1) @ learner.explainer.weight.T, atol=1e-6)


def test_shifted_sets_move_the_related_new_class_onto_the_old_class_mean():
    texts, train = toy_texts(), toy_features(1)
    learner = CLGCBM(CLGCBMConfig(gate_epochs=1, head_epochs=1))
    learn(learner, train, texts, tasks=(0,))
    x, y = F.normalize(train.global_, dim=-1), train.labels
    learner.gaussians.add(x[y >= 4], y[y >= 4], range(4, 8))
    names = texts.prompt_embeddings
    sx, sy = learner.shifted_sets(x[y >= 4], y[y >= 4], toy_ctx(1, texts), names)
    means = learner.gaussians.means
    related = (names[:4] @ F.normalize(means[4:], dim=-1).T).argmax(-1) + 4
    for k in range(4):
        shifted = sx[sy == k]
        assert len(shifted) == int((y == related[k]).sum())
        assert torch.allclose(shifted.mean(0), means[k], atol=1e-5)
        assert torch.allclose(shifted - means[k], x[y == related[k]] - means[related[k]], atol=1e-5)
