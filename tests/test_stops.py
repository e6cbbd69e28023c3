"""Runs that stop: a signal (how a user or CI cancels a job) never exits as a gate failure and never leaves
outputs that look complete; an --out that cannot be a folder is found before any work."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from auditor.cli import cli

# A model that says on stderr when the audit is under way, then waits there to be stopped: the test signals
# it mid-audit, however fast or slow the machine.
WAITING_MODEL = textwrap.dedent('''
    import sys
    import time

    import torch
    from torch import nn

    calls = 0


    class Waiting(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embed = nn.Linear(1, 8)
            layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            global calls
            calls += 1
            if calls == 5:
                sys.stderr.write("under way\\n")
                sys.stderr.flush()
                time.sleep(120)
            return self.head(self.encoder(self.embed(x.unsqueeze(-1))).mean(1))


    def make():
        return Waiting()
''')
OUTPUTS = ("results.json", "report.html", "junit.xml", "summary.md")


def _default_sigint() -> None:
    # a shell that starts jobs in the background starts them with SIGINT ignored, and Python then keeps it so
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_a_stopped_audit_exits_with_the_signal_and_leaves_no_outputs(tmp_path):
    (tmp_path / "waiting.py").write_text(WAITING_MODEL, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for stop in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        out = tmp_path / stop.name
        command = [sys.executable, "-m", "auditor", "run", "--model", f"python:{tmp_path / 'waiting.py'}:make",
                   "--data", "breast-cancer", "--input-kind", "tabular", "--max-samples", "8", "--eps", "0.1",
                   "--attacks", "fgsm", "--cls-token", "none", "--out", str(out), "--quiet"]
        runs[stop] = (out, subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                            env=env, preexec_fn=_default_sigint))
    for stop, (out, process) in runs.items():
        line = process.stderr.readline()
        assert line == "under way\n", line + process.stderr.read()
        process.send_signal(stop)
    for stop, (out, process) in runs.items():
        stderr = process.communicate(timeout=60)[1]
        expected = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}[stop]
        assert process.returncode == expected, stderr
        if stop != signal.SIGKILL:
            assert stderr.strip() == f"stopped by {stop.name}: no results written", stderr
        assert not [name for name in OUTPUTS if (out / name).exists()]


@pytest.mark.parametrize("where", ["afile/sub", "/proc/attention-audit"])
def test_an_out_that_cannot_be_a_folder_is_exit_2_before_any_work(tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file", encoding="utf-8")
    # no model: had the audit started, the missing model would be the error
    result = CliRunner().invoke(cli, ["run", "--model", "missing.safetensors", "--out", where, "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith(f"error: --out '{where}' cannot be a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
