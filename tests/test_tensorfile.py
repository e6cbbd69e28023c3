"""Saved tensors written row block by row block: the file safetensors reads is the one it would have written
at once, and a failed audit leaves none behind."""

import numpy as np
import pytest
import safetensors.torch
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file

from auditor.stages import faithfulness
from auditor.cli import cli
from auditor.run.tensorfile import RowWriter, create, header

ROWS = 10


def whole_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.random((ROWS, 2, 3), dtype=np.float32), "y": rng.integers(0, 5, ROWS),
            "adv/pgd@0.1": rng.random((ROWS, 2, 3), dtype=np.float32), "score": rng.random(ROWS),
            "kept": rng.random(ROWS) > 0.5, "pixels": rng.integers(0, 255, (ROWS, 4), dtype=np.uint8)}


def test_blocks_written_in_any_order_read_back_as_the_file_written_at_once(tmp_path):
    tensors = whole_tensors()
    path = tmp_path / "rows.safetensors"
    create(path, {name: (values.dtype, values.shape) for name, values in tensors.items()})
    assert path.stat().st_size == len(header({n: (v.dtype, v.shape) for n, v in tensors.items()})) + sum(
        v.nbytes for v in tensors.values())
    # blocks of 3 rows (3 does not divide 10), the last block first: as ranks finish in any order
    for first in (9, 3, 0, 6):
        with RowWriter(path) as writer:
            writer.write(first, {name: values[first:first + 3] for name, values in tensors.items()})
    at_once = tmp_path / "at_once.safetensors"
    safetensors.torch.save_file({name: torch.from_numpy(values) for name, values in tensors.items()}, at_once)
    expected, written = load_file(at_once), load_file(path)
    assert set(written) == set(expected)
    for name, values in expected.items():
        assert written[name].dtype == values.dtype and torch.equal(written[name], values), name
    with safe_open(path, framework="np") as stream:
        assert sorted(stream.keys()) == sorted(tensors)
        for name, values in tensors.items():
            assert stream.get_tensor(name).dtype == values.dtype
            np.testing.assert_array_equal(stream.get_slice(name)[4:7], values[4:7])
    assert len(header({"x": (np.float32, (3,))})) % 8 == 0


def test_rows_that_do_not_fit_the_layout_are_refused(tmp_path):
    path = tmp_path / "rows.safetensors"
    create(path, {"x": (np.dtype(np.float32), (4, 2)), "y": (np.dtype(np.int64), (4,))})
    with RowWriter(path) as writer:
        y = np.zeros(2, dtype=np.int64)
        with pytest.raises(ValueError, match="expected float32"):
            writer.write(0, {"x": np.zeros((2, 2)), "y": y})
        with pytest.raises(ValueError, match="do not fit"):
            writer.write(3, {"x": np.zeros((2, 2), dtype=np.float32), "y": y})
        with pytest.raises(ValueError, match="do not fit"):
            writer.write(0, {"x": np.zeros((2, 3), dtype=np.float32), "y": y})
        with pytest.raises(ValueError, match="expected rows of every tensor"):
            writer.write(0, {"y": y})
    with pytest.raises(ValueError, match="has no safetensors name"):
        create(tmp_path / "bad.safetensors", {"x": (np.dtype(np.complex64), (1,))})


def test_a_failed_audit_leaves_no_saved_file_behind(trained_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "out"
    seen = []

    def fail(*args, **kwargs):  # after the attacks: the adversarial rows are being written by now
        seen.extend(p.name for p in out.iterdir())
        raise ZeroDivisionError("stopped on purpose")

    monkeypatch.setattr(faithfulness, "faithfulness_stage", fail)
    result = CliRunner().invoke(cli, ["run", "--model", str(trained_checkpoint[0]), "--out", str(out),
                                      "--save-adversarial", "--save-explanations", "--attacks", "fgsm",
                                      "--eps", "0.1", "--max-samples", "40", "--quiet"])
    assert result.exit_code == 3 and "stopped on purpose" in result.output
    assert sorted(name.split(".safetensors.")[0] for name in seen) == [".adversarial", ".explanations"]
    assert not out.exists()  # the temporary files are removed, and the folder this run made
