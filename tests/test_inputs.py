"""Nothing changed silently (issue 13 section 4): audited rows outside the training range are counted or
refused, and the features an attacker may not change travel from training to the audit."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from auditor.cli import cli
from auditor.run.subject import load_subject
from detectors.checkpoint import read_metadata
from detectors.table import Scaler
from detectors.errors import BadInputError
from auditor.training.config import DefenseConfig
from auditor.training.defenses import DefenseLoss
from exits import gate_exit_code

FROZEN = ("mean texture", "worst smoothness")


@pytest.fixture(scope="module")
def frozen_checkpoint(tmp_path_factory):
    """One epoch of pgd-at on breast-cancer with two frozen features; every training-time adversarial batch
    is recorded against its clean batch."""
    from auditor.training.job import train_and_save

    path = tmp_path_factory.mktemp("frozen") / "frozen.safetensors"
    moved = []
    original = DefenseLoss.adversarial

    def recording(self, module, x, y, index, epoch):
        x_adv = original(self, module, x, y, index, epoch)
        moved.append((x_adv - x).abs().amax(0).detach())
        return x_adv

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DefenseLoss, "adversarial", recording)
        train_and_save(detector="tabular", data_spec="breast-cancer", defense="pgd-at", epochs=1, batch_size=128,
                       seed=0, device="cpu", out_path=path, progress=False, frozen_features=FROZEN)
    return path, torch.stack(moved).amax(0)


def _rows_csv(path, checkpoint) -> dict:
    """20 rows at the middle of the training range, three values outside it in two rows; the known count."""
    meta = read_metadata(checkpoint)
    names, scaler = meta["features"], Scaler.from_dict(meta["scaler"])
    x = np.tile((scaler.lo + scaler.hi) / 2, (20, 1))
    radius, area = names.index("mean radius"), names.index("worst area")
    x[3, radius] = scaler.hi[radius] + 1.0
    x[7, radius] = scaler.lo[radius] - 1.0
    x[7, area] = scaler.hi[area] * 2
    labels = [meta["classes"][i % 2] for i in range(20)]
    lines = [",".join([f'"{n}"' for n in names] + ["label"])]
    lines += [",".join([repr(float(v)) for v in row] + [label]) for row, label in zip(x, labels)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"rows": 2, "values": 3, "features": {"mean radius": 2, "worst area": 1}}


def test_out_of_range_rows_are_counted(frozen_checkpoint, tmp_path):
    expected = _rows_csv(tmp_path / "rows.csv", frozen_checkpoint[0])
    subject = load_subject(str(frozen_checkpoint[0]), data_spec=str(tmp_path / "rows.csv"), label_column="label",
                           max_samples=0, seed=0, device_name="cpu")
    assert subject.data.out_of_range() == expected
    assert subject.data.x.min() >= 0 and subject.data.x.max() <= 1  # clip: audited clipped, and said so
    half = subject.data.subset(np.arange(5))  # rows 0..4 hold one of the two
    assert half.out_of_range() == {"rows": 1, "values": 1, "features": {"mean radius": 1}}


def test_out_of_range_is_reported_and_refused_on_request(frozen_checkpoint, tmp_path):
    expected = _rows_csv(tmp_path / "rows.csv", frozen_checkpoint[0])
    base = ["run", "--model", str(frozen_checkpoint[0]), "--data", str(tmp_path / "rows.csv"), "--eps", "0.05",
            "--attacks", "fgsm", "--explainers", "attention", "--faithfulness-metrics", "deletion", "--quiet"]
    refused = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "refused"), "--on-out-of-range", "refuse"])
    assert refused.exit_code == 2, refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert "2 of 20 audited rows lie outside the checkpoint's training range, first in feature 'mean radius'" \
        in refused.output
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [*base, "--out", str(out)])
    assert result.exit_code == gate_exit_code(out), result.output
    document = json.loads((out / "results.json").read_text())
    assert document["data"]["out_of_range"] == expected
    assert 'id="out-of-range"' in (out / "report.html").read_text()
    assert "2 audited rows lay outside the training range" in (out / "summary.md").read_text()
    # the checkpoint's frozen features apply when --frozen-features is not given
    assert document["config"]["frozen_features"] == list(FROZEN)


def test_training_records_frozen_features_and_the_audit_uses_them(frozen_checkpoint):
    path, _ = frozen_checkpoint
    meta = read_metadata(path)
    assert meta["frozen_features"] == list(FROZEN)
    assert meta["training"]["config"]["frozen_features"] == list(FROZEN)
    frozen_at = [meta["features"].index(name) for name in FROZEN]
    subject = load_subject(str(path), data_spec=None, label_column="label", max_samples=16, seed=0, device_name="cpu")
    assert subject.frozen_features == FROZEN
    assert torch.equal(torch.nonzero(~subject.domain.mutable).flatten(), torch.tensor(sorted(frozen_at)))
    cleared = load_subject(str(path), data_spec=None, label_column="label", max_samples=16, seed=0,
                           device_name="cpu", frozen_features=())
    assert cleared.frozen_features == () and bool(cleared.domain.mutable.all())
    other = load_subject(str(path), data_spec=None, label_column="label", max_samples=16, seed=0, device_name="cpu",
                         frozen_features=("mean area",))
    assert other.frozen_features == ("mean area",)


def test_frozen_features_none_clears_the_checkpoints(frozen_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", "--model", str(frozen_checkpoint[0]), "--max-samples", "16",
                                      "--eps", "0.05", "--attacks", "fgsm", "--explainers", "attention",
                                      "--faithfulness-metrics", "deletion", "--frozen-features", "none",
                                      "--save-adversarial", "--out", str(out), "--quiet"])
    assert result.exit_code == gate_exit_code(out), result.output
    assert json.loads((out / "results.json").read_text())["config"]["frozen_features"] == []


def test_adversarial_training_leaves_frozen_features_untouched(frozen_checkpoint, tiny_detector):
    path, moved = frozen_checkpoint
    names = read_metadata(path)["features"]
    frozen = torch.tensor([name in FROZEN for name in names])
    assert float(moved[frozen].max()) == 0.0 and float(moved[~frozen].max()) > 0.01
    mask = torch.tensor([True, False, False, False, False, True])
    loss = DefenseLoss(DefenseConfig(name="trades", eps=0.1), (6,), seed=0, frozen=mask)
    x = torch.rand(16, 6, generator=torch.Generator().manual_seed(0))
    x_adv = loss.trades_examples(tiny_detector, x)
    assert torch.equal(x_adv[:, mask], x[:, mask]) and not torch.equal(x_adv, x)


def test_unknown_frozen_feature_in_training_is_one_line(tmp_path):
    from auditor.training.job import train_and_save

    with pytest.raises(BadInputError, match="--frozen-features: 'nope' not among the features of breast-cancer"):
        train_and_save(detector="tabular", data_spec="breast-cancer", epochs=1, device="cpu",
                       out_path=tmp_path / "m.safetensors", progress=False, frozen_features=("nope",))
