"""The memory-lean patch scoring (gather similarities ``[B, C, k, N]``) against the old formulation
(relevance on features, gather features ``[B, C, k, D]``, einsum, same OT): same scores, plans, selections
and gradients w.r.t. the patch features, on small sizes with ragged token masks."""

import pytest
import torch
import torch.nn.functional as F

from spacil.config import TrainConfig
from spacil.methods.spa import SPAConfig
from spacil.methods.spa.learner import SPALearner
from spacil.methods.spa.patch_selection import patch_relevance, select_top_k
from spacil.ot import ot_score, uniform_masses

B, C, P, N, D, K = 3, 5, 11, 4, 6, 4


def old_patch_scores(patches, side, cfg):
    """Reference: the formulation before issue 13, written out from its pieces."""
    rel = patch_relevance(patches, cfg.selection.rule, side["description"], side["tokens"], side["token_mask"],
                          cfg.selection.context_weight)
    selected, index = select_top_k(patches, rel, P if cfg.selection.rule == "all" else cfg.selection.k)
    sim = torch.einsum("bckd,cnd->bckn", selected, side["tokens"])
    a = torch.full(sim.shape[:3], 1.0 / sim.shape[2])
    b = uniform_masses(side["token_mask"])[None]
    score, plan = ot_score(sim, a, b, cfg.ot.eps, cfg.ot.iterations, detach_plan=cfg.ot.detach_plan,
                           domain=cfg.ot.domain, check_convergence="off")
    return score, plan, index


def _inputs(seed: int = 0):
    """Unit patches ``[B, P, D]`` (leaf, requires grad), ragged tokens ``[C, N, D]`` (padding zeroed, as
    ``class_side`` gives them), their mask and unit descriptions."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(B, P, D, generator=g, requires_grad=True)
    mask = torch.arange(N)[None] < torch.tensor([4, 1, 3, 2, 4])[:, None]  # ragged, one class with 1 token
    tokens = F.normalize(torch.randn(C, N, D, generator=g), dim=-1) * mask[..., None]
    description = F.normalize(torch.randn(C, D, generator=g), dim=-1)
    return raw, {"tokens": tokens, "token_mask": mask, "description": description}


def _config(rule: str, context_weight: float, detach_plan: bool = True, domain: str = "auto") -> SPAConfig:
    return SPAConfig(selection={"rule": rule, "k": K, "context_weight": context_weight},
                     ot={"detach_plan": detach_plan, "domain": domain, "check_convergence": "off"})


def _sorted(plan, index):
    """Selections in increasing patch order, plan rows permuted alike (top-k order is unspecified)."""
    order = index.argsort(dim=-1)
    return plan.gather(2, order[..., None].expand_as(plan)), index.gather(2, order)


def _both(rule: str, context_weight: float, detach_plan: bool = True, domain: str = "auto", seed: int = 0):
    """(new, old) results and the gradients of a fixed random weighting of the scores w.r.t. the patches."""
    cfg = _config(rule, context_weight, detach_plan, domain)
    learner = SPALearner(cfg, TrainConfig(epochs=0))
    out = []
    for fn in (lambda p, s: learner.patch_scores(p, s), lambda p, s: old_patch_scores(p, s, cfg)):
        raw, side = _inputs(seed)
        score, plan, index = fn(F.normalize(raw, dim=-1), side)
        weights = torch.randn(score.shape, generator=torch.Generator().manual_seed(9))
        (score * weights).sum().backward()
        out.append((score.detach(), *_sorted(plan.detach(), index), raw.grad))
    return out


@pytest.mark.parametrize("rule", ["description", "token_max", "all"])
@pytest.mark.parametrize("context_weight", [0.0, 1.0])
def test_new_formulation_matches_old(rule, context_weight):
    (s_new, p_new, i_new, g_new), (s_old, p_old, i_old, g_old) = _both(rule, context_weight)
    assert torch.equal(i_new, i_old)
    torch.testing.assert_close(s_new, s_old, atol=1e-5, rtol=0)
    torch.testing.assert_close(p_new, p_old, atol=1e-5, rtol=0)
    torch.testing.assert_close(g_new, g_old, atol=1e-5, rtol=0)
    assert g_new.abs().sum() > 0  # the gradient reaches the patches


@pytest.mark.parametrize("domain", ["log", "exp"])
@pytest.mark.parametrize("rule", ["description", "token_max"])
def test_same_gradients_through_unrolled_plan(rule, domain):
    """detach_plan=False: the gradient also runs through the Sinkhorn iterations, in both domains."""
    (s_new, p_new, i_new, g_new), (s_old, p_old, i_old, g_old) = _both(rule, 1.0, detach_plan=False, domain=domain,
                                                                       seed=1)
    assert torch.equal(i_new, i_old)
    torch.testing.assert_close(s_new, s_old, atol=1e-5, rtol=0)
    torch.testing.assert_close(p_new, p_old, atol=1e-5, rtol=0)
    torch.testing.assert_close(g_new, g_old, atol=1e-5, rtol=0)


def test_same_gradients_through_projectors_scope_all():
    """scope=all: patches and tokens adapted by (perturbed) projectors; same loss gradients on both the
    patch features and the projector weights under either formulation."""
    from spacil.methods.base import TaskContext
    from spacil.text.class_texts import ClassTexts
    from spacil.text.semantic_tokens import SemanticTokens

    cfg = SPAConfig(projector={"scope": "all", "hidden_dim": 3}, selection={"k": K, "rule": "token_max"},
                    ot={"check_convergence": "off"})
    raw, side0 = _inputs(2)
    mask = side0["token_mask"]
    sem = SemanticTokens(side0["tokens"], mask, side0["description"], [["p"] * N] * C,
                         torch.zeros(C, N, dtype=torch.long))
    texts = ClassTexts([str(c) for c in range(C)], F.normalize(torch.randn(C, D, generator=torch.Generator()
                                                                            .manual_seed(3)), dim=-1), semantic=sem)
    labels = torch.tensor([0, 3, 4])
    grads = []
    for form in ("new", "old"):
        learner = SPALearner(cfg, TrainConfig(epochs=0))
        learner._attach(TaskContext(0, range(C), C, texts, torch.device("cpu"), 0))
        learner._add_projectors(0)
        with torch.no_grad():  # move off the zero-initialised identity so the projectors matter
            for stack in (learner.visual, learner.text):
                stack.adapters[0].up.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(4))
        learner.prototypes = {c: F.normalize(torch.ones(D), dim=0) for c in range(C)}
        x = raw.detach().clone().requires_grad_(True)
        side = learner.class_side(C)
        patches = learner._patch_input(x)
        score = (learner.patch_scores(patches, side) if form == "new" else old_patch_scores(patches, side, cfg))[0]
        F.cross_entropy(20 * score, labels).backward()
        grads.append([x.grad] + [p.grad for p in learner.visual.parameters()] + [p.grad for p in learner.text.parameters()])
    for new, old in zip(*grads):
        torch.testing.assert_close(new, old, atol=1e-5, rtol=0)
