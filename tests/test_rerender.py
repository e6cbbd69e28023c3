"""`audit report DIR` draws the report of an audit folder again from its results.json alone."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner

from auditor.cli import cli
from exits import gate_exit_code

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC")


def test_report_is_drawn_again_from_the_folder_without_the_model(trained_checkpoint, tmp_path):
    model = tmp_path / "m.safetensors"
    model.write_bytes(trained_checkpoint[0].read_bytes())
    out = tmp_path / "out"
    ran = CliRunner().invoke(cli, ["run", "--model", str(model), "--out", str(out), "--eps", "0.1", "--attacks",
                                   "fgsm,attention-shift", "--max-samples", "40", "--quiet"])
    assert ran.exit_code == gate_exit_code(out), ran.output  # the default gates judge the tiny model either way
    first = (out / "report.html").read_text(encoding="utf-8")
    (out / "report.html").unlink()
    model.unlink()  # the model is gone: the report can only come from results.json
    drawn = CliRunner().invoke(cli, ["report", str(out)])
    assert drawn.exit_code == 0, drawn.output
    again = (out / "report.html").read_text(encoding="utf-8")
    assert TIMESTAMP.sub("", again) == TIMESTAMP.sub("", first)
    section = json.loads((out / "results.json").read_text())["report"]
    assert section["detection"]["per_class"] and section["gallery"] and section["attention_examples"]


def test_a_folder_without_results_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "holds no results.json" in result.output and len(result.output.strip().splitlines()) == 1
