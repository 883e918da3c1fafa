"""SPA's building blocks checked against independent computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spacil.methods.spa.gaussian_replay import GaussianBank, safe_cholesky, shrunk_covariance
from spacil.methods.spa.patch_selection import patch_relevance, select_top_k
from spacil.methods.spa.projectors import ProjectorStack
from spacil.text.semantic_tokens import build_semantic_tokens


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_selection_matches_per_pair_loop():
    patches, desc = _unit(3, 7, 5), _unit(4, 5, seed=1)
    rel = patch_relevance(patches, "description", description=desc)
    selected, index = select_top_k(patches, rel, k=3)
    assert selected.shape == (3, 4, 3, 5)
    for b in range(3):
        for c in range(4):
            scores = [float(patches[b, p] @ desc[c]) for p in range(7)]
            expected = set(np.argsort(scores)[-3:].tolist())
            assert set(index[b, c].tolist()) == expected
            for j, p in enumerate(index[b, c].tolist()):
                assert torch.equal(selected[b, c, j], patches[b, p])


def test_token_max_relevance_ignores_padding():
    patches = _unit(2, 4, 3)
    tokens = _unit(2, 3, 3, seed=2)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    tokens_padded = tokens.clone()
    tokens_padded[~mask] = 100.0  # padding must never win the max
    rel = patch_relevance(patches, "token_max", tokens=tokens_padded, token_mask=mask)
    for c in range(2):
        valid = tokens[c][mask[c]]
        expected = (patches @ valid.T).amax(-1)
        torch.testing.assert_close(rel[:, c], expected)


def test_random_selection_is_seeded_batch_independent_and_k_is_clipped():
    from spacil.methods.spa.patch_selection import random_directions

    patches = _unit(6, 5, 4)
    directions = random_directions(3, 4, seed=5)
    assert torch.equal(directions, random_directions(3, 4, seed=5))
    assert torch.equal(directions[:2], random_directions(2, 4, seed=5))  # a new class never moves old ones
    assert not torch.equal(directions, random_directions(3, 4, seed=6))
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(3))
    whole = patch_relevance(patches, "random", description=directions, context_weight=1.0)
    halves = torch.cat([patch_relevance(patches[:2], "random", description=directions),
                        patch_relevance(patches[2:], "random", description=directions)])
    assert torch.equal(whole, halves)  # no context term, no dependence on the batch
    sel, idx = select_top_k(patches, whole, k=50)
    assert sel.shape == (6, 3, 5, 4)


def test_projector_starts_as_identity_and_freezes_old_tasks():
    stack = ProjectorStack(dim=6, hidden=4, per_task=True)
    stack.add_task(torch.Generator().manual_seed(0))
    x = torch.randn(5, 6)
    torch.testing.assert_close(stack(x), F.normalize(x, dim=-1))
    with torch.no_grad():
        stack.adapters[0].up.weight.fill_(0.1)
    stack.add_task(torch.Generator().manual_seed(1))
    assert not any(p.requires_grad for p in stack.adapters[0].parameters())
    assert all(p.requires_grad for p in stack.adapters[1].parameters())
    assert len(stack.trainable_parameters()) == 4
    shared = ProjectorStack(dim=6, hidden=4, per_task=False)
    shared.add_task(torch.Generator().manual_seed(0))
    shared.add_task(torch.Generator().manual_seed(1))
    assert len(shared.adapters) == 1 and all(p.requires_grad for p in shared.parameters())


def test_shrunk_covariance_matches_numpy():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 2.0, 0.5, 3.0])
    mean, cov = shrunk_covariance(x, 0.2)
    s = np.cov(x.numpy().astype(np.float64), rowvar=False)
    expected = 0.8 * s + 0.2 * np.trace(s) / 4 * np.eye(4)
    np.testing.assert_allclose(cov.numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(mean.numpy(), x.numpy().mean(0), rtol=1e-6)


def test_cholesky_of_singular_covariance_needs_jitter_not_nan():
    x = torch.randn(3, 10, dtype=torch.float64)  # rank 2 < 10
    _, cov = shrunk_covariance(x, 0.0)
    factor = safe_cholesky(cov)
    assert torch.isfinite(factor).all()


def test_gaussian_bank_samples_have_the_class_statistics():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(400, 3, generator=gen) * torch.tensor([0.5, 1.0, 2.0]) + torch.tensor([5.0, 0.0, -5.0])
    bank = GaussianBank(shrinkage=0.0)
    bank.add_class(7, a)
    x, y = bank.sample([7], 20000, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert y.unique().tolist() == [7]
    torch.testing.assert_close(x.mean(0), a.mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(x.T.cov(), a.T.cov(), atol=0.1, rtol=0.05)
    again, _ = bank.sample([7], 5, torch.Generator().manual_seed(1), torch.device("cpu"))
    torch.testing.assert_close(again, bank.sample([7], 5, torch.Generator().manual_seed(1), torch.device("cpu"))[0])
    tokens, ty = bank.sample([7], 4, torch.Generator().manual_seed(1), torch.device("cpu"), tokens_per_sample=3)
    assert tokens.shape == (4, 3, 3) and ty.shape == (4,)
    restored = GaussianBank(0.0)
    restored.load_state(bank.state("g"), "g")
    assert restored.classes == [7] and torch.equal(restored.factors[7], bank.factors[7])


def test_semantic_tokens_padding_and_kinds(tiny_backbone):
    names = ["cat", "dog"]
    phrases = [["pointy ears", "long whiskers", "slit pupils"], ["floppy ears"]]
    sem = build_semantic_tokens(tiny_backbone, names, phrases, kind="phrase")
    assert sem.tokens.shape == (2, 3, 32) and sem.mask.tolist() == [[True] * 3, [True, False, False]]
    expected = F.normalize(tiny_backbone.encode_texts(["floppy ears"]).eos, dim=-1)[0]
    torch.testing.assert_close(sem.tokens[1, 0], expected)
    assert torch.all(sem.tokens[1, 1:] == 0)
    words = build_semantic_tokens(tiny_backbone, names, phrases, kind="word")
    n_words = [int(tiny_backbone.encode_texts([p]).mask.sum()) for p in phrases[0]]
    assert int(words.mask[0].sum()) == sum(n_words)
    assert words.token_phrase[0, : n_words[0]].tolist() == [0] * n_words[0]
    both = build_semantic_tokens(tiny_backbone, names, phrases, kind="phrase+word")
    assert int(both.mask[0].sum()) == 3 + sum(n_words)
    with pytest.raises(ValueError, match="without phrases"):
        build_semantic_tokens(tiny_backbone, names, [["a"], []])


def test_task_of_class_and_offsets_undo_a_recency_bias():
    from spacil.methods.spa.calibration import fit_task_offsets, task_of_class

    assert task_of_class([0, 3, 5], 7).tolist() == [0, 0, 0, 1, 1, 2, 2]
    # 4 classes in 2 tasks; true logits separate classes perfectly, then task 1 gets +3 (recency bias)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(50)
    clean = torch.randn(200, 4, generator=g) * 0.5 + 2.0 * F.one_hot(labels, 4)
    task = task_of_class([0, 2], 4)
    biased = clean + 3.0 * (task == 1).float()
    assert (biased.argmax(1) == labels).float().mean() < 0.6  # old classes lose to the new task
    offsets = fit_task_offsets(biased, labels, task, 2)
    assert offsets[0] == 0 and -3.8 < float(offsets[1]) < -2.2
    assert (biased + offsets[task]).argmax(1).eq(labels).float().mean() > 0.95
