"""One search for every token budget (attacks.Attack.at_budgets): the text attacks' greedy and beam searches never
read their budget, so one run to the largest budget, its best taken after each budget's steps, gives budgets 1, 2
and 4 equal tensor for tensor to one run per budget, with the forward passes of the run to 4 alone. The robustness
stage and the masking check's wider search take every budget from that one run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks import TEXT_ATTACKS, make_attack
from attacks.text import TokenSearch
from auditor.stages.masking import text_masking_rows
from auditor.stages.robustness import craft, craft_each, run_attacks
from test_text_attacks import Hinge, full_table, messages, trained  # noqa: F401  (trained: a fixture)

BUDGETS = [1, 2, 4]
NESTED = sorted(name for name, family in TEXT_ATTACKS.items() if family.nested_budgets)
# every nested search, plus a beam search (the masking check's wider hotflip has beam 2)
SEARCHES = [(name, {}) for name in NESTED] + [("hotflip", {"beam": 2, "candidates": 8})]


def test_only_the_searches_that_never_read_their_budget_nest():
    # embedding-pgd's steps and random start scale with eps: one run per budget
    assert sorted(set(TEXT_ATTACKS) - set(NESTED)) == ["embedding-pgd", "embedding-pgd-l2"]
    assert not any(make_attack(name).nested_budgets for name in ("pgd", "fgsm", "square", "attention-shift"))


def _both_ways(name, params, model, x, y, index):
    domain = full_table()
    attack = make_attack(name, **params)
    apart = [attack(model, x, y, eps=budget, domain=domain, seed=0, index=index) for budget in BUDGETS]
    together = attack.at_budgets(model, x, y, budgets=BUDGETS, domain=domain, seed=0, index=index)
    return apart, together


@pytest.mark.parametrize("name, params", SEARCHES, ids=[f"{n}-beam{p.get('beam', 1)}" for n, p in SEARCHES])
def test_one_search_gives_every_budget_as_separate_runs_do(name, params):
    for model, x, y in ((Hinge(), *messages()), (Hinge(length=8), *messages(24, length=8, seed=3))):
        apart, together = _both_ways(name, params, model, x, y, torch.arange(len(x)) + 7)
        assert len(together) == len(BUDGETS)
        for budget, one, many in zip(BUDGETS, apart, together):
            assert one.dtype == many.dtype and torch.equal(one, many), (name, budget)


def test_rows_that_stop_early_and_rows_that_need_every_step_both_hold():
    """On the Hinge a positive with k ``bad`` tokens needs k substitutions: budgets 1, 2 and 4 differ, and a row
    broken at step 1 keeps its one substitution at budget 4."""
    model, (x, y) = Hinge(), messages()
    apart, together = _both_ways("hotflip", {}, model, x, y, torch.arange(len(x)))
    changed = [(adv != x).sum(1) for adv in together]
    assert not torch.equal(changed[0], changed[1]) and not torch.equal(changed[1], changed[2])
    with torch.no_grad():
        broken = model(together[0]).argmax(1) != y
    assert broken.any() and torch.equal(together[2][broken], together[0][broken])  # stopped rows hold their answer
    assert all(torch.equal(a, b) for a, b in zip(apart, together))


def _counting(model, monkeypatch) -> list[int]:
    """Rows of every forward pass the searches make (through ``forward_embeddings``)."""
    rows: list[int] = []
    forward = model.forward_embeddings

    def counted(embeddings, *args, **kwargs):
        rows.append(len(embeddings))
        return forward(embeddings, *args, **kwargs)

    monkeypatch.setattr(model, "forward_embeddings", counted)
    return rows


@pytest.mark.parametrize("name", ["hotflip", "typo", "attention-shift-sub", "hotflip-beam2"])
def test_one_search_costs_the_forward_passes_of_its_largest_budget_alone(name, trained, monkeypatch):  # noqa: F811
    model, (x, y) = trained
    x, y, index, domain = x[:48], y[:48], torch.arange(48), full_table()
    attack = make_attack("hotflip", beam=2) if name == "hotflip-beam2" else make_attack(name)
    rows = _counting(model, monkeypatch)
    for budget in BUDGETS:
        attack(model, x, y, eps=budget, domain=domain, seed=0, index=index)
    apart = sum(rows)
    rows.clear()
    attack(model, x, y, eps=max(BUDGETS), domain=domain, seed=0, index=index)
    largest = sum(rows)
    rows.clear()
    attack.at_budgets(model, x, y, budgets=BUDGETS, domain=domain, seed=0, index=index)
    assert sum(rows) == largest < apart


def test_the_stage_and_the_masking_check_take_every_budget_from_one_search(trained, monkeypatch):  # noqa: F811
    """run_attacks and the wider search give the same numbers and examples with the snapshots as with one search per
    budget (the attacks told not to nest)."""
    model, (x, y) = trained
    x, y, domain = x[:40], y[:40], full_table()
    with torch.no_grad():
        pred = model(x).argmax(1)

    def audit(nested: bool):
        attacks = {name: make_attack(name) for name in ("typo", "hotflip", "attention-shift-sub")}
        grids = {"tokens": BUDGETS}
        with monkeypatch.context() as patch:
            patch.setattr(TokenSearch, "nested_budgets", nested)  # the substitutions' and the word edits' search
            outcome = run_attacks(model, x, y, pred, attacks, [0.1], domain=domain, seed=0, batch_size=64,
                                  keep_examples=True, progress=False, positive=1, n_classes=2, grids=grids)
            masking = text_masking_rows(model, x, y, attacks, BUDGETS, domain=domain, seed=0, batch_size=64)
        return outcome, masking

    snapshots, separate = audit(True), audit(False)
    assert snapshots[0].per_sample.keys() == separate[0].per_sample.keys()
    for key, values in separate[0].per_sample.items():
        assert np.array_equal(snapshots[0].per_sample[key], values, equal_nan=True), key
    assert snapshots[0].adversarial.keys() == separate[0].adversarial.keys()
    assert all(torch.equal(snapshots[0].adversarial[k], v) for k, v in separate[0].adversarial.items())
    assert snapshots[1].keys() == separate[1].keys() == {f"wider@{b}" for b in BUDGETS}
    assert all(np.array_equal(snapshots[1][k], v) for k, v in separate[1].items())


def test_craft_each_is_craft_at_each_budget_for_every_kind_of_attack(trained):  # noqa: F811
    model, (x, y) = trained
    x, y = x[:80], y[:80]
    for name, budgets, params in (("hotflip", BUDGETS, {}), ("embedding-pgd", [0.05, 0.1], {"steps": 4})):
        attack = make_attack(name, **params)
        each = list(craft_each(model, attack, x, y, budgets=budgets, domain=full_table(), seed=0, batch_size=64))
        one = [craft(model, attack, x, y, eps=eps, domain=full_table(), seed=0, batch_size=64) for eps in budgets]
        assert all(torch.equal(a, b) for a, b in zip(each, one)), name
