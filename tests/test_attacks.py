"""Attack specifics; the properties every attack shares are in test_attack_contract.py."""

import pytest
import torch
import torchattacks

from attacks import ATTACKS, Domain, ImageView, make_attack


def _inputs(n=32, f=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, f, generator=g), torch.randint(0, 2, (n,), generator=g)


def test_pgd_random_start_depends_on_seed(tiny_detector):
    x, y = _inputs()
    domain = Domain.unit((6,))
    pgd = make_attack("pgd", steps=1)
    a = pgd(tiny_detector, x, y, eps=0.1, domain=domain, seed=0, index=torch.arange(len(x)))
    b = pgd(tiny_detector, x, y, eps=0.1, domain=domain, seed=1, index=torch.arange(len(x)))
    assert not torch.equal(a, b)


def test_pgd_l2_without_random_start_matches_torchattacks(tiny_detector):
    x, y = _inputs()
    ours = make_attack("pgd-l2", steps=10, restarts=1, random_start=False, schedule="constant")(
        tiny_detector, x, y, eps=0.5, domain=Domain.unit((6,)), seed=0, index=torch.arange(len(x)))
    view = ImageView(tiny_detector, (6,), Domain.unit((6,)))  # torchattacks' PGDL2 assumes 4-D input
    reference = view.from_4d(torchattacks.PGDL2(view, eps=0.5, alpha=0.125, steps=10, random_start=False)(
        view.to_4d(x), y))
    assert torch.allclose(ours, reference, atol=1e-5)


def test_pgd_without_random_start_matches_torchattacks(tiny_detector):
    x, y = _inputs()
    ours = make_attack("pgd", steps=10, restarts=1, random_start=False, schedule="constant")(
        tiny_detector, x, y, eps=0.1, domain=Domain.unit((6,)), seed=0, index=torch.arange(len(x)))
    reference = torchattacks.PGD(tiny_detector, eps=0.1, alpha=0.025, steps=10, random_start=False)(x, y)
    assert torch.allclose(ours, reference, atol=1e-6)


@pytest.mark.parametrize("name", ["pgd", "pgd-l2"])
def test_later_restarts_attack_only_the_unfooled_rows_and_give_what_restarting_every_row_gives(name, tiny_detector,
                                                                                               pass_sizes):
    x, y = _inputs(n=48)
    y = tiny_detector(x).argmax(1)  # every row starts correct, so fooling is the attack's doing
    domain, index, eps = Domain.unit((6,)), torch.arange(48), (0.08 if name == "pgd" else 0.25)
    attack = make_attack(name, steps=3, restarts=4)
    with pass_sizes(tiny_detector) as sizes:
        ours = attack(tiny_detector, x, y, eps=eps, domain=domain, seed=0, index=index)
    # the reference restarts every row and keeps, per row, the first restart that fools it
    best, fooled = x.clone(), torch.zeros(48, dtype=torch.bool)
    for restart in range(4):
        single = make_attack(name, steps=3, restarts=1)
        single._start = lambda xs, e, s, i, r, restart=restart: type(single)._start(single, xs, e, s, i, restart)
        adv = single(tiny_detector, x, y, eps=eps, domain=domain, seed=0, index=index)
        now = tiny_detector(adv).argmax(1) != y
        take = now & ~fooled if restart else torch.ones_like(fooled)
        best[take], fooled = adv[take], fooled | now
    assert 0 < int(fooled.sum()) < 48  # some rows fooled, some not: the subset path ran
    assert torch.allclose(ours, best, atol=1e-6)
    assert min(sizes) < 48  # a later restart ran on fewer rows than the first


def test_pgd_is_at_least_as_strong_as_fgsm(tiny_detector):
    x, y = _inputs(n=128)
    y = tiny_detector(x).argmax(1)  # start from correct predictions
    domain, index = Domain.unit((6,)), torch.arange(128)
    acc = {}
    for name in ("fgsm", "pgd"):
        x_adv = make_attack(name)(tiny_detector, x, y, eps=0.3, domain=domain, seed=0, index=index)
        acc[name] = (tiny_detector(x_adv).argmax(1) == y).float().mean().item()
    assert acc["pgd"] <= acc["fgsm"]
    assert acc["pgd"] < 0.5


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_model_mode_is_restored_even_when_the_model_raises(name, tiny_detector):
    x, y = _inputs()
    tiny_detector.train()
    calls = {"n": 0}

    def boom(module, args):
        calls["n"] += 1
        raise RuntimeError("mid-forward failure")

    handle = tiny_detector.head.register_forward_pre_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="mid-forward"):
            make_attack(name)(tiny_detector, x, y, eps=0.1, domain=Domain.unit((6,)), seed=0,
                              index=torch.arange(len(x)))
    finally:
        handle.remove()
    assert tiny_detector.training and calls["n"] >= 1


def test_image_view_lets_torchattacks_apgd_run_on_flat_inputs(tiny_detector):
    """torchattacks' APGD unsqueezes non-4-D input; through the view it runs on (N, F) data."""
    x, y = _inputs(n=16)
    view = ImageView(tiny_detector, (6,), Domain.unit((6,)))
    attack = torchattacks.APGD(view, eps=0.1, steps=5, n_restarts=1, seed=0)
    x_adv = view.from_4d(attack(view.to_4d(x), y))
    assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= 0.1 + 1e-6


def test_domain_l2_projection():
    domain = Domain.unit((4,))
    x = torch.full((2, 4), 0.5)
    projected = domain.project(x + torch.tensor([[0.3, 0.4, 0.0, 0.0], [0.01, 0.0, 0.0, 0.0]]), x, eps=0.25, norm="l2")
    assert torch.allclose((projected - x).norm(dim=1), torch.tensor([0.25, 0.01]), atol=1e-6)


def test_image_view_keeps_the_detector_in_eval_mode_through_torchattacks():
    """torchattacks restores the mode it found on the view; a view made in training mode would switch the
    detector's dropout on for everything after the first call (a real bug this test pins down)."""
    from detectors.tabular import FeatureTokenTransformer
    torch.manual_seed(0)
    model = FeatureTokenTransformer(6, 2, dim=8, depth=1, heads=2, mlp_dim=16, dropout=0.5).eval()
    x, y = _inputs()
    view = ImageView(model, (6,), Domain.unit((6,)))
    torchattacks.FGSM(view, eps=0.1)(view.to_4d(x), y)
    assert not model.training and not view.training
