"""One contract suite over every registered attack (in the spirit of scikit-learn's estimator checks).

Each check is a plain function ``check_x(name, kind, model, x, y)``; the test ids read
``test_contract[pgd-tabular-check_budget]``. A new attack is covered by registering it.
Heavy attacks run with lighter settings here (SPEED) so the suite stays within minutes;
their defaults are exercised by the audit profiles.
"""

from __future__ import annotations

import math

import pytest
import torch

from attacks import ATTACKS, ATTENTION_ATTACKS, Domain, is_minimum_norm, make_attack

SPEED = {"autoattack": {"apgd_steps": 20, "square_queries": 300},
         "autoattack-fast": {"apgd_steps": 20, "square_queries": 300}, "square": {"n_queries": 300},
         "cw": {"steps": 30, "search_steps": 3}, "deepfool": {"steps": 10},
         "attention-shift": {"steps": 20, "restarts": 2},
         # three restarts still exercise the restart logic (a later restart only on the rows not yet fooled)
         "pgd": {"restarts": 3}, "pgd-l2": {"restarts": 3}, "pgd-categorical": {"restarts": 3}}
CHUNKED = {"square", "autoattack", "autoattack-fast", "cw", "deepfool"}  # run over the fixed 64-sample chunk grid
EXPECTED_REGISTRY = {"fgsm", "pgd", "pgd-l2", "cw", "deepfool", "autoattack", "autoattack-fast", "square",
                     "attention-shift", "attention-hijack", "attention-guided", "stealth", "pgd-categorical"}


def build(name: str, *, defaults: bool = False):
    """The attack with the suite's lighter settings, or its defaults (``check_effective`` tests those)."""
    return make_attack(name) if defaults else make_attack(name, **SPEED.get(name, {}))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Undefended detectors of each input kind, briefly trained on the bundled data, with their test rows
    (trained once per run: the other xdist worker loads the weights the first one saved)."""
    from workers import built_once
    from detectors.data import load_table, split_table
    from detectors.registry import detector_for_data
    from auditor.training.config import TrainConfig
    from auditor.training.loop import train_detector

    out = {}
    with built_once(tmp_path_factory, "contract-models") as folder:
        for kind, detector, data, epochs in (("tabular", "tabular", "breast-cancer", 30),
                                             ("image", "vit", "digits", 8),
                                             ("sequence", "sequence", "sequences:1200", 12)):
            splits = split_table(load_table(data), seed=0)
            torch.manual_seed(0)
            model = detector_for_data(detector, splits.train.input_shape, len(splits.train.class_names), data)
            weights = folder / f"{kind}.pt"
            if weights.is_file():
                model.load_state_dict(torch.load(weights, weights_only=True))
            else:
                train_detector(model, splits, TrainConfig(epochs=epochs, patience=epochs),
                               device=torch.device("cpu"), progress=False)
                torch.save(model.state_dict(), weights)
            out[kind] = (model.eval(), torch.as_tensor(splits.test.x), torch.as_tensor(splits.test.y))
    return out


def _run(name, model, x, y, *, eps, domain=None, seed=0, index=None, defaults=False):
    domain = domain or Domain.unit(tuple(x.shape[1:]))
    index = torch.arange(len(x)) if index is None else index
    attack = build(name, defaults=defaults and name in ATTENTION_ATTACKS)
    return attack(model, x, y, eps=math.inf if is_minimum_norm(attack) else eps, domain=domain, seed=seed,
                  index=index)


def check_budget(name, kind, model, x, y):
    if is_minimum_norm(build(name)):
        _check_minimum_norm_budget(name, model, x[:32], y[:32])
        return
    x_adv = _run(name, model, x[:32], y[:32], eps=0.1)
    delta = (x_adv - x[:32]).flatten(1)
    if build(name).norm == "linf":
        assert delta.abs().max() <= 0.1 + 1e-6
    else:
        assert delta.norm(dim=1).max() <= 0.1 + 1e-6


def _check_minimum_norm_budget(name, model, x, y):
    """No budget of its own: the auditor counts a sample broken at eps only when its ‖δ‖₂ <= eps, so every
    example it evaluates at eps is within eps, and robust accuracy is that of those examples."""
    from auditor.metrics import format_eps
    from auditor.stages.robustness import run_attacks

    with torch.no_grad():
        clean = model(x).argmax(1)
    grid = [0.05, 0.5, 2.0]
    outcome = run_attacks(model, x, y, clean, {name: build(name)}, grid, domain=Domain.unit(tuple(x.shape[1:])),
                          seed=0, batch_size=64, keep_examples=True, progress=False, positive=None,
                          n_classes=int(model(x[:1]).shape[1]))
    broken = []
    for eps in grid:
        x_adv = outcome.adversarial[f"adv/{name}@{format_eps(eps)}"]
        assert torch.isfinite(x_adv).all()
        assert ((x_adv - x).flatten(1).norm(dim=1) <= eps + 1e-6).all()
        with torch.no_grad():
            correct = (model(x_adv).argmax(1) == y).numpy().astype(float)
        assert (outcome.per_sample[f"robust.accuracy.{name}@{format_eps(eps)}"] == correct).all()
        broken.append(1 - correct.mean())
    assert broken == sorted(broken) and broken[-1] > broken[0]  # a larger budget admits more of its examples


def check_domain(name, kind, model, x, y):
    x_adv = _run(name, model, x[:32], y[:32], eps=0.3)
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and x_adv.shape == x[:32].shape


def check_frozen(name, kind, model, x, y):
    frozen = torch.zeros(x.shape[1:], dtype=torch.bool)
    frozen.view(-1)[::2] = True
    x_adv = _run(name, model, x[:32], y[:32], eps=0.3, domain=Domain.unit(tuple(x.shape[1:]), frozen=frozen))
    assert torch.equal(x_adv[:, frozen], x[:32][:, frozen])


def check_seeded(name, kind, model, x, y):
    a = _run(name, model, x[:32], y[:32], eps=0.1, seed=5)
    b = _run(name, model, x[:32], y[:32], eps=0.1, seed=5)
    assert torch.equal(a, b)


def check_batch_size(name, kind, model, x, y):
    """Per-sample attacks: batches of 7 and 128 agree. Chunked ones: any chunk-aligned batching agrees
    (72 rows: a whole chunk and a partial one)."""
    n = 72 if name in CHUNKED else 128
    whole = _run(name, model, x[:n], y[:n], eps=0.1)
    size = 64 if name in CHUNKED else 7
    parts = torch.cat([_run(name, model, x[i:min(i + size, n)], y[i:min(i + size, n)], eps=0.1,
                            index=torch.arange(i, min(i + size, n))) for i in range(0, n, size)])
    assert torch.allclose(whole, parts, atol=1e-5)


def check_mode_restored(name, kind, model, x, y):
    model.train()
    try:
        _run(name, model, x[:8], y[:8], eps=0.1)
        assert model.training
    finally:
        model.eval()


def check_effective(name, kind, model, x, y):
    """At a large budget on an undefended model the attack does what it is for."""
    x, y = x[:64], y[:64]
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    x, y = x[keep], y[keep]
    x_adv = _run(name, model, x, y, eps=0.3, defaults=True)
    with torch.no_grad():
        accuracy = (model(x_adv).argmax(1) == y).float().mean().item()
    if name in ATTENTION_ATTACKS:
        from attacks.attention import attention_distribution
        from auditor.stages.stability import topk_intersection
        with torch.no_grad():
            p, q = attention_distribution(model, x), attention_distribution(model, x_adv)
        if name == "attention-shift":
            assert topk_intersection(p, q, k=5).mean() < 0.5 and accuracy >= 0.95
        elif name == "attention-hijack":
            # its purpose: move attention mass onto the 5 least-attended tokens (all five entering the top-5
            # at once, the reported success, is rarely reachable on a 16-token model)
            targets = torch.argsort(p, dim=1, stable=True)[:, :5]
            before, after = p.gather(1, targets).sum(1).mean(), q.gather(1, targets).sum(1).mean()
            assert after > 1.25 * before and accuracy >= 0.95
        else:
            assert accuracy < 0.9  # attention-guided and stealth flip predictions
    elif name in ("pgd", "autoattack", "autoattack-fast"):
        assert accuracy < 0.10
    else:
        assert accuracy < 0.9


def check_targeted(name, kind, model, x, y):
    """Targetable attacks aimed at one class move predictions into it; the others refuse a target."""
    if not ATTACKS[name].targetable:
        with pytest.raises(TypeError):
            make_attack(name, target_class=0)
        return
    x, y = x[:64], y[:64]
    with torch.no_grad():
        clean = model(x).argmax(1)
    target = int(torch.bincount(clean, minlength=2).argmin())  # the class predicted least often
    attack = make_attack(name, **SPEED.get(name, {}), target_class=target)
    x_adv = attack(model, x, y, eps=math.inf if is_minimum_norm(attack) else 0.3, domain=Domain.unit(tuple(x.shape[1:])),
                   seed=0, index=torch.arange(len(x)))
    with torch.no_grad():
        hit = (model(x_adv).argmax(1) == target).float().mean().item()
    assert hit >= (clean == target).float().mean().item() + 0.05, hit
    assert attack.params()["target_class"] == target


CHECKS = [check_budget, check_domain, check_frozen, check_seeded, check_batch_size, check_mode_restored,
          check_effective, check_targeted]
KNOWN_FAILURES: dict = {
    # (attack, kind, check): reason. Listed here they become strict xfails, never silent skips.
}


def _cases():
    for name in sorted(ATTACKS):
        for kind in ("tabular", "image", "sequence"):
            for check in CHECKS:
                marks = []
                reason = KNOWN_FAILURES.get((name, kind, check.__name__))
                if reason:
                    marks.append(pytest.mark.xfail(reason=reason, strict=True))
                yield pytest.param(name, kind, check, id=f"{name}-{kind}-{check.__name__}", marks=marks)


@pytest.mark.parametrize("name,kind,check", list(_cases()))
def test_contract(name, kind, check, models):
    model, x, y = models[kind]
    check(name, kind, model, x, y)


def unregistered(modules) -> set[str]:
    """Names of the Attack classes defined in ``modules`` that neither registry (ATTACKS, TEXT_ATTACKS for token
    ids) holds."""
    from attacks import TEXT_ATTACKS
    from attacks.base import Attack
    registered = set(ATTACKS.values()) | set(TEXT_ATTACKS.values())
    return {cls.name for module in modules for cls in vars(module).values()
            if isinstance(cls, type) and issubclass(cls, Attack) and cls.__module__ == module.__name__
            and getattr(cls, "name", None) and cls not in registered}


def attack_modules():
    import importlib
    import pkgutil

    import attacks
    return [importlib.import_module(f"attacks.{info.name}") for info in pkgutil.iter_modules(attacks.__path__)]


def test_registry_is_complete():
    """An attack defined in any attacks module (attention attacks included) but missing from the registry fails."""
    modules = attack_modules()
    assert {"attacks.standard", "attacks.attention", "attacks.text"} <= {m.__name__ for m in modules}
    assert set(ATTACKS) == EXPECTED_REGISTRY
    from attacks import TEXT_ATTACKS
    assert not set(ATTACKS) & set(TEXT_ATTACKS)  # a name says which threat model its numbers are under
    assert unregistered(modules) == set()


def test_registry_check_finds_an_unregistered_attack():
    import types

    from attacks.attention import AttentionShift
    module = types.ModuleType("attacks.attention_extra")
    module.Forgotten = type("Forgotten", (AttentionShift,), {"name": "forgotten", "__module__": module.__name__})
    assert unregistered([*attack_modules(), module]) == {"forgotten"}
