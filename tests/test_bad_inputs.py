"""Every bad input is exactly one line starting `error:` and exit code 2: click's usage errors, a directory
given as a checkpoint, weights torch refuses (hf: folders: tests/test_huggingface.py)."""

import pickle
import warnings

import pytest
from click.testing import CliRunner

from auditor.cli import cli
from detectors.errors import BadInputError


def one_line_error(args, fragment):
    result = CliRunner().invoke(cli, [str(a) for a in args], prog_name="audit")
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: "), result.output
    assert fragment in result.output, result.output


@pytest.mark.parametrize("args,fragment", [
    (["run", "--out", "o"], "Missing option '--model'; see 'audit run --help'"),
    (["run", "--model", "m", "--out", "o", "--eps", "0,2"], "Invalid value for '--eps'"),
    (["run", "--model", "m", "--out", "o", "--colour"], "No such option '--colour'"),
    (["frobnicate"], "No such command 'frobnicate'"),
    (["--frobnicate"], "No such option '--frobnicate'; see 'audit --help'"),
])
def test_usage_errors_are_one_line(args, fragment):
    one_line_error(args, fragment)


def test_a_directory_given_as_a_checkpoint_says_it_is_a_directory(tmp_path):
    (tmp_path / "model").mkdir()
    one_line_error(["run", "--model", tmp_path / "model", "--out", tmp_path / "out"], "is a directory")


def test_plain_pickle_weights_are_refused_without_torch_s_warning(tmp_path):
    from detectors.foreign_loading import _read_state_dict

    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(BadInputError, match="refused to load weights"):
            _read_state_dict(path)
    assert not caught, [str(w.message) for w in caught]
