"""Messages longer than the model's length (issue 26, item 4): what truncation cuts is counted in results.json
``data.truncated``, the summary and the report, or refused with ``--on-long-text refuse``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from auditor.cli import cli
from detectors.text_data import TextTable, TextTokenizer, text_dataset

PHISHING = "please verify your password"
BENIGN = "the meeting moved to friday"


def _table(texts: list[str]) -> TextTable:
    return TextTable(name="m.jsonl", texts=texts, y=np.zeros(len(texts), dtype=np.int64), class_names=["benign"],
                     positive_class=None)


def test_truncation_counts_the_long_rows_and_the_share_of_tokens_lost():
    tokenizer = TextTokenizer.train(["a b c d e f"], max_length=4)
    data = text_dataset(_table(["a b c d e f", "a b", "a b c"]), np.arange(3), tokenizer, "all")
    # [CLS] + 6 words = 7 tokens, 3 beyond the 4 kept; 7 + 3 + 4 tokens in all
    assert data.truncated() == {"rows": 1, "tokens_lost_share": pytest.approx(3 / 14), "max_length": 4}
    assert data.subset(np.array([1, 2])).truncated() == {"rows": 0, "tokens_lost_share": 0.0, "max_length": 4}


def test_a_pretrained_tokeniser_counts_its_own_tokens():
    pytest.importorskip("transformers")
    from test_huggingface import TEXT_FAMILIES, _fast_tokenizer

    from detectors.huggingface import PretrainedTokenizer

    tokenizer = PretrainedTokenizer(_fast_tokenizer(TEXT_FAMILIES["bert"]), 6)
    data = text_dataset(_table(["hello team the report is ready", "see you friday"]), np.arange(2), tokenizer, "all")
    # [CLS] 6 words [SEP] = 8 tokens, 2 cut; [CLS] 3 words [SEP] = 5
    assert data.truncated() == {"rows": 1, "tokens_lost_share": pytest.approx(2 / 13), "max_length": 6}


@pytest.fixture(scope="module")
def checkpoint_and_messages(tmp_path_factory):
    """A text checkpoint (phishing:200, 1 epoch: its length is its longest training message) and a .jsonl whose
    third message is longer than that."""
    folder = tmp_path_factory.mktemp("long")
    model = folder / "text.safetensors"
    result = CliRunner().invoke(cli, ["train", "--detector", "text", "--data", "phishing:200", "--epochs", "1",
                                      "--device", "cpu", "--quiet", "--out", str(model)])
    assert result.exit_code == 0, result.output
    rows = [{"text": PHISHING, "label": "phishing"}, {"text": BENIGN, "label": "benign"},
            {"text": " ".join([BENIGN] * 30) + " " + PHISHING, "label": "phishing"},
            {"text": BENIGN, "label": "benign"}]
    messages = folder / "m.jsonl"
    messages.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return model, messages


def test_a_long_message_is_refused_naming_it_or_truncated_and_recorded(checkpoint_and_messages, tmp_path):
    model, messages = checkpoint_and_messages
    common = ["run", "--model", str(model), "--data", str(messages), "--device", "cpu", "--explainers", "attention",
              "--attacks", "hotflip", "--token-budget", "1", "--faithfulness-metrics", "deletion"]
    refused = CliRunner().invoke(cli, [*common, "--on-long-text", "refuse", "--out", str(tmp_path / "r")])
    assert refused.exit_code == 2, refused.output
    lines = refused.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "first message 3 of" in lines[0]
    assert "Traceback" not in refused.output and not (tmp_path / "r" / "results.json").exists()

    kept = CliRunner().invoke(cli, [*common, "--out", str(tmp_path / "t")])
    assert kept.exit_code in (0, 1), kept.output
    # stderr is no terminal here, as in a CI log: one line per stage with its time
    assert all(f"audit: {stage} " in kept.stderr for stage in ("clean", "robustness", "explain", "sanity"))
    document = json.loads((tmp_path / "t" / "results.json").read_text(encoding="utf-8"))
    truncated = document["data"]["truncated"]
    assert truncated["rows"] == 1 and 0 < truncated["tokens_lost_share"] < 1
    assert "audited messages were longer than the model's" in (tmp_path / "t" / "summary.md").read_text()
    assert 'id="truncated"' in (tmp_path / "t" / "report.html").read_text()
