"""Categorical columns: read, embedded, frozen or searched over, saved, and an unseen category counted or refused.

The known answer: on rows whose label is ``protocol == udp and rate > 0.5`` (rates never within 0.1 of 0.5),
a tcp row with a high rate becomes an attack by switching its protocol alone, which no L-inf step of 0.01 on
the numeric columns can do; a tcp row with a low rate stays benign whatever its protocol.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.numpy import load_file

from attacks import CategoryRule, Domain, make_attack
from auditor.cli import cli
from detectors.builtin_sets import AMPLIFICATION, AMPLIFICATION_RATIO, FLOW_RELEVANT_FEATURES, make_mixed_flows
from detectors.categorical import code_of, most_frequent_codes
from detectors.checkpoint import load_checkpoint
from detectors.data import align_table, load_table, read_csv, split_table
from detectors.errors import BadInputError
from detectors.tabular import FeatureTokenTransformer
from workers import built_once

PROTOCOLS = ("tcp", "udp", "icmp")


def write_mixed(path, rows: int, seed: int, *, extra_protocol: str | None = None) -> None:
    rng = np.random.default_rng(seed)
    protocol = rng.choice(PROTOCOLS, rows, p=[0.45, 0.45, 0.1])
    if extra_protocol is not None:
        protocol[3] = extra_protocol
    rate = np.where(rng.random(rows) < 0.5, rng.uniform(0.0, 0.4, rows), rng.uniform(0.6, 1.0, rows))
    state = rng.choice(["SF", "S0", "REJ"], rows)
    flag = rng.choice(["true", "false"], rows)
    noise = rng.random(rows)
    label = ((protocol == "udp") & (rate > 0.5)).astype(int)
    lines = ["protocol,rate,state,flag,noise,label"]
    lines += [f"{p},{r:.4f},{s},{f},{n:.4f},{y}" for p, r, s, f, n, y in zip(protocol, rate, state, flag, noise, label)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def mixed_model(tmp_path_factory):
    """A tabular detector trained on 600 mixed rows (category x rate), shared by the tests that only read it."""
    from auditor.training.job import train_and_save

    with built_once(tmp_path_factory, "categorical") as folder:
        data, model = folder / "mixed.csv", folder / "mixed.safetensors"
        if not model.is_file():
            write_mixed(data, 600, seed=0)
            train_and_save(detector="tabular", data_spec=str(data), epochs=15, batch_size=32, seed=0, device="cpu",
                           out_path=model, progress=False)
    return data, model


def test_mixed_csv_is_read_with_types(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("proto,port,ok,bytes,label\ntcp,80,True,10,0\nudp,53,false,12,1\ntcp,443,TRUE,7,0\n",
                    encoding="utf-8")
    table = read_csv(path)
    assert table.categories == {"proto": ["tcp", "udp"]}  # the order they first appear
    assert table.x[:, 0].tolist() == [0, 1, 0] and table.x[:, 2].tolist() == [1, 0, 1]
    coded = read_csv(path, categorical_columns=("port",))
    assert coded.categories["port"] == ["80", "53", "443"] and coded.x[:, 1].tolist() == [0, 1, 2]
    for bad in ("", "NaN", "NA"):
        path.write_text(f"proto,label\ntcp,0\n{bad},1\n", encoding="utf-8")
        with pytest.raises(BadInputError, match="line 3, column 'proto'.*not a finite number or a category"):
            read_csv(path)


def test_unseen_category_is_counted_or_refused(tmp_path):
    train, audited = tmp_path / "train.csv", tmp_path / "audit.csv"
    train.write_text("proto,rate,label\n" + "".join(f"{p},{i / 10},{i % 2}\n" for i, p in
                                                    enumerate(["tcp", "udp"] * 5)), encoding="utf-8")
    audited.write_text("rate,proto,label\n0.1,udp,0\n0.2,sctp,1\n0.3,tcp,0\n", encoding="utf-8")
    splits = split_table(load_table(str(train)), seed=0)
    known = {"proto": ["tcp", "udp"]}
    args = dict(feature_names=["proto", "rate"], class_names=["0", "1"], scaler=splits.scaler, categories=known)
    data = align_table(load_table(str(audited), categorical_columns=("proto",)), **args)
    assert np.allclose(data.x[:, 0], code_of(np.array([1, -1, 0]), 2))  # udp, unknown, tcp
    assert data.unseen[:, 0].tolist() == [False, True, False] and data.x[1, 0] < 1 / 3  # the unknown slot is lowest
    with pytest.raises(BadInputError, match=r"row 2, column 'proto': category 'sctp' was never seen"):
        align_table(load_table(str(audited)), on_unseen_category="refuse", **args)


def test_category_token_is_its_embedding_plus_the_column_bias():
    torch.manual_seed(0)
    model = FeatureTokenTransformer(2, 2, dim=8, depth=1, heads=2, mlp_dim=8, dropout=0.0, categories=[3, 0]).eval()
    x = torch.tensor([[float(code_of(2, 3)), 0.5]])
    seen = []
    handle = model.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model(x)
    handle.remove()
    expected = model.category_embedding.weight[3] + model.feature_bias[0]  # slot 3: category 2 (slot 0 unknown)
    assert torch.allclose(seen[0][0, 1], expected)
    assert torch.allclose(seen[0][0, 2], 0.5 * model.feature_weight[1] + model.feature_bias[1])
    numeric = FeatureTokenTransformer(2, 2)
    assert "categories" not in numeric.hparams() and not any("category" in k for k in numeric.state_dict())


def test_category_rule_keeps_only_known_categories_of_mutable_columns_within_budget():
    rule = CategoryRule(columns=(0, 1), counts=(3, 2), mutable=(True, False), budget=1)
    domain = Domain.unit((3,), categories=rule)
    assert domain.mutable.tolist() == [False, False, True]
    x = torch.tensor([[float(code_of(0, 3)), float(code_of(1, 2)), 0.5]])
    switched = torch.tensor([[float(code_of(2, 3)), float(code_of(0, 2)), 0.9]])
    out = domain.project(switched, x, eps=0.1)
    assert out[0, 0] == switched[0, 0] and out[0, 1] == x[0, 1] and torch.isclose(out[0, 2], torch.tensor(0.6))
    assert domain.contains(out, x, eps=0.1) and not domain.contains(switched, x, eps=0.1)
    noisy = x + torch.tensor([[0.03, 0.0, 0.0]])  # not a category's code: a random start's noise
    assert domain.project(noisy, x, eps=0.1)[0, 0] == x[0, 0]
    unknown = torch.tensor([[float(code_of(-1, 3)), x[0, 1], 0.5]])
    assert domain.project(unknown, x, eps=0.1)[0, 0] == x[0, 0]  # never to the unknown category


def _attack_rows(mixed_model):
    data, model = mixed_model
    checkpoint = load_checkpoint(model)
    table = load_table(str(data), categorical_columns=tuple(checkpoint.categories))
    test = split_table(table, seed=0).test
    return checkpoint, test


def _run(checkpoint, x, y, *, mutable: bool) -> torch.Tensor:
    names = checkpoint.feature_names
    columns = [names.index(name) for name in checkpoint.categories]
    rule = CategoryRule(columns=tuple(columns), counts=tuple(len(v) for v in checkpoint.categories.values()),
                        mutable=tuple(name == "protocol" and mutable for name in checkpoint.categories), budget=1)
    domain = Domain.unit((len(names),), categories=rule)
    attack = make_attack("pgd-categorical", restarts=1)
    return attack(checkpoint.detector, x, y, eps=0.01, domain=domain, seed=0, index=torch.arange(len(x)))


def test_pgd_categorical_finds_the_category_switch_and_nothing_else(mixed_model):
    checkpoint, test = _attack_rows(mixed_model)
    model, names = checkpoint.detector, checkpoint.feature_names
    x, y = torch.as_tensor(test.x), torch.as_tensor(test.y)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert correct.float().mean() > 0.9
    raw = load_table(str(mixed_model[0])).x[test.row_index]
    protocol, rate = raw[:, names.index("protocol")], raw[:, names.index("rate")]
    tcp = checkpoint.categories["protocol"].index("tcp")
    high = torch.as_tensor((protocol == tcp) & (rate > 0.5)) & correct
    low = torch.as_tensor((protocol == tcp) & (rate < 0.5)) & correct
    assert high.sum() >= 10 and low.sum() >= 10
    frozen = _run(checkpoint, x, y, mutable=False)
    switched = _run(checkpoint, x, y, mutable=True)
    with torch.no_grad():
        fooled_frozen, fooled = model(frozen).argmax(1) != y, model(switched).argmax(1) != y
    category_columns = [names.index(name) for name in checkpoint.categories]
    assert torch.equal(frozen[:, category_columns], x[:, category_columns])  # frozen by default
    assert fooled[high].float().mean() > 0.9 and fooled_frozen[high].float().mean() < 0.1
    assert not fooled[low].any()  # the case where it must fail: the rate decides there
    assert bool((fooled | ~fooled_frozen).all())  # never weaker than the numeric-only search
    state = names.index("state")
    assert torch.equal(switched[:, state], x[:, state])  # a column the attacker does not control


def test_audit_saves_valid_categories_and_counts_unseen_ones(mixed_model, tmp_path):
    data, model = mixed_model
    out = tmp_path / "audit"
    result = CliRunner().invoke(cli, ["run", "--model", str(model), "--out", str(out), "--attacks", "pgd",
                                      "--eps", "0.01", "--explainers", "attention", "--attack-param", "pgd.restarts=1",
                                      "--attack-param", "pgd.steps=5", "--faithfulness-metrics", "deletion",
                                      "--max-samples", "40",
                                      "--mutable-categorical", "protocol", "--save-adversarial", "--quiet"])
    assert result.exit_code in (0, 1), result.output
    document = json.loads((out / "results.json").read_text())
    categories = document["data"]["categorical"]
    assert list(categories) == ["protocol", "state"] and document["data"]["unseen_categories"] == {
        "protocol": 0, "state": 0}
    metrics = document["metrics"]
    assert metrics["robust.accuracy.pgd-categorical@0.01"]["value"] <= metrics["robust.accuracy.pgd@0.01"]["value"]
    saved = load_file(out / "adversarial.safetensors")
    names = load_checkpoint(model).feature_names
    for key in ("adv/pgd@0.01", "adv/pgd-categorical@0.01"):
        for name, found in categories.items():
            column, clean = saved[key][:, names.index(name)], saved["x"][:, names.index(name)]
            assert set(column.tolist()) <= set(range(len(found)))
            if name != "protocol" or key == "adv/pgd@0.01":
                assert np.array_equal(column, clean)
    assert (saved["adv/pgd-categorical@0.01"][:, 0] != saved["x"][:, 0]).any()
    # the adversarial gallery shows a switched category by the categories' names, never by a scaled code
    gallery = document["report"]["adversarial_gallery"]
    shown = [change for view in gallery for change in view["changes"] if change[0] in categories]
    assert gallery[0]["attack"] == "pgd-categorical" and shown
    assert all(value in [*categories[name], "(unknown)"] for name, *values in shown for value in values)

    unseen = tmp_path / "unseen.csv"
    write_mixed(unseen, 40, seed=5, extra_protocol="sctp")
    refused = CliRunner().invoke(cli, ["run", "--model", str(model), "--data", str(unseen), "--out",
                                       str(tmp_path / "refused"), "--on-unseen-category", "refuse", "--quiet"])
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert refused.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "row 4, column 'protocol': category 'sctp'" in lines[0] and not (tmp_path / "refused").exists()


def test_mixed_flows_hold_a_category_times_rate_family():
    table = make_mixed_flows(3000, seed=0)
    names = table.feature_names
    assert set(table.categories) == {"protocol", "service", "conn_state"} and "response_ratio" in names
    service = np.array(table.categories["service"])[table.x[:, names.index("service")].astype(int)]
    protocol = np.array(table.categories["protocol"])[table.x[:, names.index("protocol")].astype(int)]
    family = (protocol == "udp") & (service == "dns") & (table.x[:, names.index("response_ratio")] > AMPLIFICATION_RATIO)
    assert family.sum() > 50 and table.y[family].all()
    mask = table.relevant_mask
    assert mask[family][:, [names.index(n) for n in AMPLIFICATION]].all()
    assert mask[~family][:, [names.index(n) for n in FLOW_RELEVANT_FEATURES]].all()
    splits = split_table(table, seed=0)
    baseline = most_frequent_codes(splits.train.x, names, table.categories)
    assert baseline[names.index("protocol")] == code_of(table.categories["protocol"].index("tcp"), 3)


def test_attention_and_feature_ablation_find_the_category_times_rate_family(tmp_path):
    """On flows-mixed's amplification rows (udp to dns with a high response ratio) both rank the family's
    columns among their top three far above chance (3 of 26 columns); a random ranking must not."""
    from captum.attr import FeatureAblation

    from auditor.training.job import train_and_save
    from detectors.maths import attention_distribution_of

    model_path = tmp_path / "flows-mixed.safetensors"
    train_and_save(detector="tabular", data_spec="flows-mixed:2000", epochs=6, batch_size=64, seed=0, device="cpu",
                   out_path=model_path, progress=False)
    checkpoint = load_checkpoint(model_path)
    model = checkpoint.detector
    test = split_table(load_table("flows-mixed:2000"), seed=0).test
    names = test.feature_names
    family = [names.index(name) for name in AMPLIFICATION]
    rows = test.relevant_mask[:, names.index("service")]
    x, y = torch.as_tensor(test.x[rows]), torch.as_tensor(test.y[rows])
    assert len(x) >= 15
    with torch.no_grad():
        _, attentions = model.forward_with_attention(x)
    attention = attention_distribution_of(attentions, model.token_map)
    ablation = FeatureAblation(lambda z: torch.softmax(model(z), 1)).attribute(
        x, target=y, baselines=checkpoint.train_mean[None].float())
    chance = len(family) / len(names)
    for scores in (attention, ablation):
        assert np.isin(scores.topk(3, dim=1).indices.numpy(), family).mean() > 3 * chance
    shuffled = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    assert np.isin(shuffled.topk(3, dim=1).indices.numpy(), family).mean() < 3 * chance


def test_a_detector_audited_in_memory_keeps_its_categories(mixed_model):
    from auditor.api import _in_memory_subject
    from auditor.run.config import AuditConfig
    from auditor.run.subject import load_subject

    data, model = mixed_model
    loaded = load_subject(str(model), data_spec=None, label_column="label", max_samples=60, seed=0, device_name="cpu")
    subject = _in_memory_subject(loaded.detector, loaded.data, AuditConfig.from_profile("quick", max_samples=60))
    names = loaded.data.feature_names
    # frozen for every continuous attack, as from a checkpoint, and removed to a category that exists
    assert subject.domain.categories is not None and not subject.domain.categories.any_mutable
    for name, found in loaded.data.categories.items():
        assert float(subject.baseline[names.index(name)]) in {float(code_of(i, len(found))) for i in range(len(found))}
