"""Selection modes (DESIGN.md 1.5), as weights and through a planned LM on three architectures."""

from __future__ import annotations

import pytest
import torch
from helpers import ARCHS, random_lm, sentence_batch

from planlm.errors import PlanlmError
from planlm.models.planned_lm import PlannedLM, PlannedLMConfig
from planlm.models.selection import action_weights, draw_predicted_mask

K = 6


def planned(arch, selection, **kw):
    return PlannedLM(random_lm(arch), PlannedLMConfig(num_actions=K, action_dim=8, selection=selection, **kw))


def run(model, input_ids, token_slot, **kw):
    return model(input_ids, token_slot=token_slot, **kw).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_hard_equals_fixed_and_soft_with_large_logits_equals_hard(arch):
    input_ids, token_slot, logits = sentence_batch(N=5, K=K)
    a = 3
    fixed = planned(arch, "fixed", fixed_action=a)
    out_fixed = run(fixed, input_ids, None)
    hard = planned(arch, "hard", fixed_action=a)
    hard.adapters.load_state_dict(fixed.adapters.state_dict())
    onehot_logits = 1000.0 * torch.nn.functional.one_hot(torch.full((5,), a), K).float()
    # hard from oracle actions a, and from planner logits whose argmax is a
    torch.testing.assert_close(run(hard, input_ids, token_slot, oracle_actions=torch.full((5,), a)), out_fixed)
    noisy = logits.clone()
    noisy[:, a] = 50.0
    torch.testing.assert_close(run(hard, input_ids, token_slot, planner_logits=noisy), out_fixed)
    hard.config.selection = "soft"
    torch.testing.assert_close(run(hard, input_ids, token_slot, planner_logits=onehot_logits), out_fixed)


@pytest.mark.parametrize("arch", ARCHS)
def test_uniform_is_the_mean_embedding(arch):
    input_ids, token_slot, _ = sentence_batch(N=5, K=K)
    uniform = planned(arch, "uniform")
    out = run(uniform, input_ids, None)
    # soft over all-zero logits weighs every action 1/K
    uniform.config.selection = "soft"
    torch.testing.assert_close(run(uniform, input_ids, token_slot, planner_logits=torch.zeros(5, K)), out)
    with uniform.adapters.capturing() as captured:
        uniform.config.selection = "uniform"
        run(uniform, input_ids, None)
    for l in uniform.adapters.layers:
        ad = uniform.adapters.adapters[str(l)]
        torch.testing.assert_close(captured[l]["pre"][0, 0], ad.proj(ad.action_embeddings.mean(0)).detach())


def test_straight_through_forward_is_hard_and_gradient_is_softs():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, K, generator=g)
    upstream = torch.randn(7, K, generator=g)
    grads = {}
    for mode in ("straight-through", "soft", "hard"):
        leaf = logits.clone().requires_grad_(mode != "hard")
        w = action_weights(mode, K, planner_logits=leaf, temperature=0.7)
        if mode == "hard":
            hard = w
            continue
        if mode == "straight-through":
            st = w.detach()
        (w * upstream).sum().backward()
        grads[mode] = leaf.grad
    assert torch.equal(st, hard) and torch.all(hard.sum(-1) == 1)
    torch.testing.assert_close(grads["straight-through"], grads["soft"])


@pytest.mark.parametrize("arch", ARCHS)
def test_straight_through_through_the_lm(arch):
    """ST's gradient w.r.t. logits = softmax Jacobian^T (dLoss/dweights at the hard point); its loss = hard's."""
    input_ids, token_slot, logits = sentence_batch(N=5, K=K)
    model = planned(arch, "straight-through", temperature=2.0)
    leaf = logits.clone().requires_grad_(True)
    out = model(input_ids, token_slot=token_slot, planner_logits=leaf, labels=input_ids)
    out.loss.backward()
    # the same loss as a function of the weights, evaluated at the hard weights
    hard_w = action_weights("hard", K, planner_logits=logits).requires_grad_(True)
    with model.adapters.conditioned(hard_w, token_slot):
        loss_hard = model.lm(input_ids, labels=input_ids).loss
    loss_hard.backward()
    torch.testing.assert_close(out.loss, loss_hard)
    soft_leaf = logits.clone().requires_grad_(True)
    (torch.softmax(soft_leaf / 2.0, -1) * hard_w.grad).sum().backward()
    torch.testing.assert_close(leaf.grad, soft_leaf.grad)
    assert leaf.grad.abs().sum() > 0


def test_hard_has_no_gradient_and_soft_does():
    logits = torch.randn(4, K, requires_grad=True)
    assert not action_weights("hard", K, planner_logits=logits).requires_grad
    assert action_weights("soft", K, planner_logits=logits).requires_grad
    w = action_weights("soft", K, planner_logits=logits, temperature=0.5)
    torch.testing.assert_close(w, torch.softmax(logits / 0.5, -1))


def test_oracle_predicted_mix():
    logits = torch.randn(6, K)
    oracle = torch.tensor([0, 1, 2, 3, 4, 5])
    mask = torch.tensor([True, False, True, False, False, True])
    w = action_weights("soft", K, planner_logits=logits, oracle_actions=oracle, predicted_mask=mask)
    torch.testing.assert_close(w[mask], torch.softmax(logits[mask], -1))
    assert torch.equal(w[~mask].argmax(-1), oracle[~mask]) and torch.all(w[~mask].max(-1).values == 1)
    # oracle only ("OA") needs no logits; logits only ("PA") needs no oracle
    assert torch.equal(action_weights("hard", K, oracle_actions=oracle).argmax(-1), oracle)
    assert torch.equal(action_weights("hard", K, planner_logits=logits).argmax(-1), logits.argmax(-1))


def test_predicted_mask_is_seeded_and_has_probability_p():
    a = draw_predicted_mask(4000, 0.3, torch.Generator().manual_seed(5))
    b = draw_predicted_mask(4000, 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.dtype == torch.bool
    assert abs(a.float().mean().item() - 0.3) < 0.03
    assert draw_predicted_mask(10, 1.0).all() and not draw_predicted_mask(10, 0.0).any()


def test_planned_lm_p_predicted_extremes():
    input_ids, token_slot, logits = sentence_batch(N=5, K=K)
    oracle = torch.tensor([0, 1, 2, 3, 4])
    m = planned("gpt2", "hard", p_predicted=0.0)
    oa = run(m, input_ids, token_slot, planner_logits=logits, oracle_actions=oracle)
    torch.testing.assert_close(oa, run(m, input_ids, token_slot, oracle_actions=oracle))
    m.config.p_predicted = 1.0
    pa = run(m, input_ids, token_slot, planner_logits=logits, oracle_actions=oracle)
    torch.testing.assert_close(pa, run(m, input_ids, token_slot, planner_logits=logits))


def test_selection_errors():
    with pytest.raises(PlanlmError, match="unknown selection"):
        action_weights("argmax", K)
    with pytest.raises(PlanlmError, match="needs planner logits"):
        action_weights("soft", K)
    with pytest.raises(PlanlmError, match="fixed_action"):
        action_weights("fixed", K, fixed_action=K)
    with pytest.raises(PlanlmError, match="actions"):
        action_weights("soft", K, planner_logits=torch.randn(3, K + 1))
    with pytest.raises(PlanlmError) as e:
        PlannedLM(random_lm("gpt2"), PlannedLMConfig(num_actions=K, action_dim=8, selection="nope", temperature=0))
    assert "selection" in str(e.value) and "temperature" in str(e.value)


def test_select_is_what_forward_reads_and_the_caller_says_whether_the_planner_trains():
    from planlm.models.planner import Planner, PlannerConfig

    input_ids, token_slot, _ = sentence_batch(N=5, K=K)
    torch.manual_seed(0)
    planner = Planner(PlannerConfig(num_actions=K, encoder_dim=8, d_model=16, ff=16, n_heads=2, context_sentences=2))
    model = PlannedLM(random_lm("gpt2"), PlannedLMConfig(num_actions=K, action_dim=8, layers=[2], selection="soft"),
                      planner=planner).eval()  # no dropout: two forwards of the same weights agree
    inputs = {"context_embeddings": torch.randn(5, 2, 8), "context_mask": torch.ones(5, 2, dtype=torch.bool)}
    logits, weights = model.select(planner_inputs=inputs, planner_trains=True)
    assert weights.requires_grad and torch.allclose(weights, torch.softmax(logits, -1))
    direct = model(input_ids, token_slot=token_slot, planner_inputs=inputs)  # forward selects the same way
    given = model(input_ids, token_slot=token_slot, action_weights=weights)
    torch.testing.assert_close(given.logits, direct.logits)
    frozen_logits, frozen = model.select(planner_inputs=inputs, planner_trains=False)
    assert not frozen.requires_grad and not frozen_logits.requires_grad  # the same weights, without autograd
    torch.testing.assert_close(frozen, weights.detach())
    # oracle actions alone: one-hot, no planner call
    _, oracle = model.select(oracle_actions=torch.tensor([0, 1, 2, 3, 4]))
    assert torch.equal(oracle.argmax(-1), torch.arange(5))
    # fixed and uniform: one constant row, whatever is given
    fixed = planned("gpt2", "fixed", fixed_action=2)
    none, row = fixed.select(planner_inputs=inputs, oracle_actions=torch.zeros(5, dtype=torch.long))
    assert none is None and row.shape == (1, K) and row[0, 2] == 1.0
