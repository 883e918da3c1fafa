"""PROOF's mechanisms against independent references: herding, fusion attention, CLIP loss, exemplar memory."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from baseline_toys import N_CLASSES, learn, toy_ctx, toy_features, toy_texts
from spacil.methods.proof import PROOF, PROOFConfig
from spacil.methods.proof_parts import FusionAttention, clip_loss, herding
from spacil.methods.seeded import make_generator


def _herding_by_hand(x: np.ndarray, m: int) -> list[int]:
    """Plain-loop herding: each step tries every unpicked sample and keeps the one whose addition brings the
    mean of the picked set closest to the class mean."""
    v = [row / np.linalg.norm(row) for row in x]
    mu = sum(v) / len(v)
    picked: list[int] = []
    for _ in range(m):
        best, best_d = None, math.inf
        for i in range(len(v)):
            if i in picked:
                continue
            mean = (sum(v[j] for j in picked) + v[i]) / (len(picked) + 1)
            d = float(np.sqrt(((mu - mean) ** 2).sum()))
            if d < best_d:
                best, best_d = i, d
        picked.append(best)
    return picked


def test_herding_picks_what_a_brute_force_loop_picks():
    x = torch.randn(25, 6, generator=torch.Generator().manual_seed(3)) + 2.0
    assert herding(x, 8).tolist() == _herding_by_hand(x.numpy().astype(np.float64), 8)
    assert herding(x, 40).tolist() == _herding_by_hand(x.numpy().astype(np.float64), 25)  # capped at n


def test_herding_means_approach_the_class_mean_faster_than_random_subsets():
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(4))
    v = F.normalize(x, dim=-1)
    picked = herding(x, 10)
    err = (v[picked].mean(0) - v.mean(0)).norm()
    g = torch.Generator().manual_seed(0)
    random_err = torch.stack([(v[torch.randperm(200, generator=g)[:10]].mean(0) - v.mean(0)).norm()
                              for _ in range(200)])
    assert err < random_err.min()


def test_fusion_attention_shape_formula_and_seeded_dropout():
    g = make_generator(0)
    attn = FusionAttention(8, dropout_p=0.1, generator=g).eval()
    tokens = torch.randn(3, 6, 8, generator=torch.Generator().manual_seed(1))
    out = attn(tokens)
    assert out.shape == (3, 6, 8)
    # independent formula: torch's scaled-dot-product attention, residual, LayerNorm
    with torch.no_grad():
        mixed = F.scaled_dot_product_attention(attn.q(tokens), attn.k(tokens), attn.v(tokens))
        expected = F.layer_norm(attn.out(mixed) + tokens, (8,), attn.norm.weight, attn.norm.bias)
    assert torch.allclose(out, expected, atol=1e-5)
    # training mode draws its dropout masks from the generator: same seed, same output
    attn.train()
    first, second = (attn(tokens, make_generator(7)) for _ in range(2))
    assert torch.equal(first, second) and not torch.allclose(first, out)


def test_clip_loss_matches_a_numpy_reference():
    g = torch.Generator().manual_seed(2)
    img, txt = F.normalize(torch.randn(5, 4, generator=g), dim=-1), F.normalize(torch.randn(5, 4, generator=g), dim=-1)
    logits = 10.0 * img.numpy() @ txt.numpy().T

    def ce(rows):
        return float(np.mean([np.log(np.exp(r).sum()) - r[i] for i, r in enumerate(rows)]))

    assert abs(float(clip_loss(img, txt, 10.0)) - 0.5 * (ce(logits) + ce(logits.T))) < 1e-5


def test_memory_holds_the_herding_exemplars_of_each_class_as_features():
    texts, train = toy_texts(), toy_features(1)
    learner = PROOF(PROOFConfig(epochs=1, memory_per_class=7))
    learn(learner, train, texts)
    assert torch.bincount(learner.memory_y).tolist() == [7] * N_CLASSES
    for c in range(N_CLASSES):
        rows = torch.nonzero(train.labels == c).flatten()
        picks = rows[herding(train.global_[rows], 7)]
        assert torch.equal(learner.memory_x[learner.memory_y == c], train.global_[picks])
    none = PROOF(PROOFConfig(epochs=1, memory_per_class=0))
    learn(none, train, texts)
    assert none.memory_y is None


def test_classes_not_seen_yet_do_not_change_the_scores():
    texts, train, test = toy_texts(), toy_features(1), toy_features(2)
    learner = PROOF(PROOFConfig(epochs=2))
    learn(learner, train, texts, tasks=(0,))
    before = learner.logits(test, 4)
    learner.prompts = learner.prompts.clone()
    learner.prompts[4:] = torch.randn(N_CLASSES - 4, learner.prompts.shape[1])  # the future classes' texts
    assert before.shape == (len(test), 4)
    assert torch.allclose(learner.logits(test, 4), before, atol=1e-6)


def test_old_image_projections_and_context_prompts_freeze_text_projections_train_on():
    texts, train = toy_texts(), toy_features(1)
    learner = PROOF(PROOFConfig(epochs=1))
    learn(learner, train, texts, tasks=(0,))
    img0, txt0, ctx0 = (learner.proj_img[0].weight.clone(), learner.proj_text[0].weight.clone(),
                        learner.context[0].detach().clone())
    learner.learn_task(toy_ctx(1, texts), train.index(train.labels >= 4))
    assert torch.equal(learner.proj_img[0].weight, img0) and torch.equal(learner.context[0], ctx0)
    assert not torch.equal(learner.proj_text[0].weight, txt0)
    assert len(learner.proj_img) == 2 and sum(c.shape[0] for c in learner.context) == 6
