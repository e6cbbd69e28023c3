"""Text, the detector half: the phishing corpus, message files, the tokeniser in the checkpoint, padding kept
out of attention, and ``audit train --detector text``."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from detectors.errors import BadInputError


@pytest.fixture(scope="module")
def text_checkpoint(tmp_path_factory):
    """``audit train --detector text`` on 200 phishing messages for 2 epochs (a smoke run, not an accuracy)."""
    from auditor.cli import cli

    path = tmp_path_factory.mktemp("text") / "text.safetensors"
    result = CliRunner().invoke(cli, ["train", "--detector", "text", "--data", "phishing:200", "--epochs", "2",
                                      "--device", "cpu", "--quiet", "--out", str(path)])
    assert result.exit_code == 0, result.output
    return path, result.output


# --------------------------------------------------------------------------- data


def test_phishing_is_seeded_and_its_rationales_are_the_request_frames():
    from detectors.text_data import CREDENTIALS, REQUEST_FRAMES, VERBS, make_phishing

    a, b = make_phishing(300, seed=0), make_phishing(300, seed=0)
    assert a.texts == b.texts and (a.y == b.y).all() and a.rationales == b.rationales
    assert make_phishing(300, seed=1).texts != a.texts
    assert all(8 <= len(text.split()) <= 48 for text in a.texts)
    assert 0.3 < a.y.mean() < 0.5
    requests = {frame.format(verb=verb, object=thing) for frame in REQUEST_FRAMES for verb in VERBS
                for thing in CREDENTIALS}
    for text, label, spans in zip(a.texts, a.y, a.rationales):
        decided_by_request = [text[s:e] for s, e in spans if text[s:e] in requests]
        # phishing exactly when a recorded span is a request binding a credential
        assert bool(decided_by_request) == bool(label), text


def test_rationale_tokens_are_exactly_the_recorded_words():
    from detectors.text_data import make_phishing, split_text_table

    table = make_phishing(300, seed=0)
    splits = split_text_table(table, seed=0)
    data, tokenizer = splits.train, splits.tokenizer
    assert data.relevant_mask.shape == data.x.shape and not data.relevant_mask[:, 0].any()  # never [CLS]
    for row, index in enumerate(data.row_index):
        text, spans = table.texts[index], table.rationales[index]
        words = [w for s, e in spans for w in text[s:e].split()]
        assert tokenizer.tokens(data.x[row][data.relevant_mask[row]]) == words


def test_message_files_csv_and_jsonl(tmp_path):
    from detectors.text_data import load_text_table

    (tmp_path / "m.csv").write_text('body,label\n"Hello, world",ham\nverify your pin,spam\n', encoding="utf-8")
    table = load_text_table(str(tmp_path / "m.csv"), text_column="body")
    assert table.texts == ["Hello, world", "verify your pin"] and table.class_names == ["ham", "spam"]
    lines = [{"text": "héllo", "label": 0}, {"text": "send your card number", "label": 1}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n\n", encoding="utf-8")
    table = load_text_table(str(tmp_path / "m.jsonl"))
    assert table.texts[0] == "héllo" and list(table.y) == [0, 1] and table.positive_class == 1


BAD_ROWS = [
    ("empty.jsonl", b'{"text": "ok", "label": 1}\n{"text": "  ", "label": 0}\n', "line 2: empty text"),
    ("type.jsonl", b'{"text": "ok", "label": 1}\n{"text": 7, "label": 0}\n', "line 2: text 'text' is a int"),
    ("label.jsonl", b'{"text": "ok", "label": [1]}\n', "line 1: label 'label' is a list"),
    ("json.jsonl", b'{"text": "ok", "label": 1}\n{"text": \n', "line 2: not a JSON object"),
    ("utf8.jsonl", b'{"text": "ok", "label": 1}\n\n{"text": "b\xffd", "label": 0}\n', "line 3: not UTF-8 text"),
    ("empty.csv", b"text,label\nok,1\n,0\n", "line 3: empty text"),
    ("fields.csv", b"text,label\nok,1\nok,0,extra\n", "line 3: 3 fields where the header has 2"),
    ("utf8.csv", b"text,label\nfine,1\nbad \xff byte,0\n", "line 3: not UTF-8 text"),
]


@pytest.mark.parametrize("name,content,message", BAD_ROWS, ids=[name for name, _, _ in BAD_ROWS])
def test_bad_message_rows_name_the_line_and_exit_2(tmp_path, name, content, message):
    from auditor.cli import cli
    from detectors.text_data import load_text_table

    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BadInputError, match=message):
        load_text_table(str(path))
    result = CliRunner().invoke(cli, ["train", "--detector", "text", "--data", str(path), "--out",
                                      str(tmp_path / "m.safetensors")])
    assert result.exit_code == 2 and message in result.output, result.output


def test_text_data_and_other_detectors_refuse_each_other(tmp_path):
    from auditor.cli import cli

    out = str(tmp_path / "m.safetensors")
    result = CliRunner().invoke(cli, ["train", "--data", "phishing:200", "--out", out])
    assert result.exit_code == 2 and "--detector text" in result.output
    result = CliRunner().invoke(cli, ["train", "--detector", "text", "--data", "breast-cancer", "--out", out])
    assert result.exit_code == 2 and "unknown text data" in result.output
    result = CliRunner().invoke(cli, ["train", "--detector", "text", "--data", "phishing:200", "--defense", "trades",
                                      "--out", out])
    assert result.exit_code == 2 and "--defense none or pgd-at" in result.output


# --------------------------------------------------------------------------- the detector


@pytest.mark.parametrize("attention", ["softmax", "sparsemax", "entmax15", "additive"])
def test_padding_receives_exactly_zero_attention_and_cannot_move_the_logits(attention):
    from detectors.text import TextTransformer

    torch.manual_seed(0)
    model = TextTransformer(20, 10, 2, dim=16, heads=2, depth=2, mlp_dim=32, dropout=0.0, attention=attention).eval()
    ids = torch.tensor([[2, 5, 6, 7, 0, 0, 0, 0, 0, 0], [2, 8, 9, 10, 11, 12, 13, 0, 0, 0]])
    with torch.no_grad():
        logits, attentions = model.forward_with_attention(ids)
        padding = ids == 0
        for weights in attentions:
            received = weights.permute(0, 3, 1, 2)[padding]  # (padding keys, heads, queries)
            assert received.numel() and torch.equal(received, torch.zeros_like(received))
            # the batch runs on its columns up to its longest message (7); no query row past it exists
            assert torch.allclose(weights[:, :, :7].sum(-1), torch.ones(())) and not weights[:, :, 7:].any()
        if attention in ("softmax", "additive"):  # dense: without the key mask padding would be attended
            unmasked = model.forward_with_attention(ids, torch.ones_like(ids, dtype=torch.bool))[1][0]
            assert (unmasked.permute(0, 3, 1, 2)[padding] > 0).all()
        # a message alone runs on fewer columns than in the batch: the same logits
        assert torch.allclose(model(ids[:1]), logits[:1], atol=1e-6)
        model.embedding.weight[0] = torch.randn(16) * 100  # whatever padding holds cannot reach the logits
        model.position.data[:, 7:] += 50
        assert torch.equal(model(ids), logits)


def test_the_relative_position_bias_points_at_the_offset_it_favours():
    """A bias of +50 on offset -1 makes every message token attend its predecessor: the bias is indexed by key
    minus query, and [CLS] (row and column 0) takes none of it."""
    from detectors.text import RELATIVE_REACH, TextTransformer

    torch.manual_seed(0)
    model = TextTransformer(20, 8, 2, dim=16, heads=2, depth=1, mlp_dim=32, dropout=0.0).eval()
    with torch.no_grad():
        model.relative[:, :, RELATIVE_REACH - 1] = 50.0
        weights = model.forward_with_attention(torch.tensor([[2, 5, 6, 7, 8, 9, 10, 0]]))[1][0][0]
    rows = torch.arange(2, 7)
    assert (weights[:, rows, rows - 1] > 0.99).all()
    assert (weights[:, 0, 1:7] > 0.01).all()  # CLS itself is not pulled to any offset
    assert (weights[:, 1, 0] > 0.01).all()  # the first word's predecessor would be CLS: no bias there


def test_a_trained_text_checkpoint_carries_its_tokeniser_as_json(text_checkpoint):
    from detectors.checkpoint import load_checkpoint, read_metadata
    from detectors.text_data import SPECIAL_TOKENS, load_text_table, split_text_table

    path, output = text_checkpoint
    assert "test accuracy" in output
    metadata = read_metadata(path)
    stored = metadata["text"]["tokenizer"]
    assert isinstance(stored, str) and json.loads(stored)["model"]["type"] == "WordLevel"  # data, not code
    assert metadata["scaler"] is None and metadata["detector"]["kind"] == "text"
    checkpoint = load_checkpoint(path)
    tokenizer = checkpoint.tokenizer
    assert tokenizer.tokens(range(4)) == list(SPECIAL_TOKENS)
    table = load_text_table("phishing:200")
    splits = split_text_table(table, seed=0)
    ids, _, _ = tokenizer.encode([table.texts[i] for i in splits.test.row_index])
    assert np.array_equal(ids, splits.test.x)  # the tokeniser round-trips: the same ids as at training
    assert tokenizer.to_json() == stored
    with torch.no_grad():
        assert checkpoint.detector(torch.as_tensor(ids)).shape == (len(ids), 2)


def test_a_text_checkpoint_without_a_readable_tokeniser_is_refused(text_checkpoint, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from detectors.checkpoint import METADATA_KEY, load_checkpoint

    path, _ = text_checkpoint
    with safe_open(str(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        header = json.loads(handle.metadata()[METADATA_KEY])
    header["text"]["tokenizer"] = '{"model": "not a tokeniser"'
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata={METADATA_KEY: json.dumps(header)})
    with pytest.raises(BadInputError, match="stored tokeniser cannot be read"):
        _ = load_checkpoint(broken).tokenizer
    del header["text"]
    save_file(tensors, str(broken), metadata={METADATA_KEY: json.dumps(header)})
    with pytest.raises(BadInputError, match="without its tokeniser"):
        load_checkpoint(broken)


def test_the_tokeniser_knows_only_training_words_and_truncates():
    from detectors.text_data import TextTable, TextTokenizer, split_text_table

    texts = [f"word{i % 2} common" for i in range(40)] + ["rareword common"]
    local = split_text_table(TextTable("t", texts, np.array([i % 2 for i in range(41)]), ["a", "b"], 1), seed=0)
    in_train = any("rareword" in texts[i] for i in local.train.row_index)
    assert (local.tokenizer.token_id("rareword") is not None) == in_train
    encoded, _, truncated = TextTokenizer.train(["a b c"], max_length=3).encode(["a b c d", "a"])
    assert encoded.shape == (2, 3) and truncated.tolist() == [True, False] and encoded[1, 2] == 0


# --------------------------------------------------------------------------- audit run on text


# words of every phishing message's fillers and frames, so the table holds only what the tokeniser knows
SUBSTITUTIONS = {"the": ["your", "our"], "your": ["the", "our"], "our": ["the", "your"], "team": ["bank"],
                 "bank": ["team"], "now": ["today"], "today": ["now"]}


@pytest.fixture(scope="module")
def text_audit(text_checkpoint, tmp_path_factory):
    """``audit run`` of the text checkpoint on 12 messages at token budgets 1 and 2: typo, the substitutions of a
    table (hotflip, attention-shift-sub), the any-token upper bound hotflip-any and embedding-pgd, explanations and
    adversarial messages saved: its folder."""
    from auditor.cli import cli

    path, _ = text_checkpoint
    folder = tmp_path_factory.mktemp("text-audit")
    out = folder / "audit"
    table = folder / "substitutions.json"
    table.write_text(json.dumps(SUBSTITUTIONS))
    result = CliRunner().invoke(cli, ["run", "--model", str(path), "--max-samples", "12", "--device", "cpu",
                                      "--quiet", "--faithfulness-metrics", "deletion,comprehensiveness,infidelity", "--token-budget", "2,1",
                                      "--attacks", "typo,hotflip,hotflip-any,attention-shift-sub,embedding-pgd",
                                      "--substitutions", str(table), "--eps", "0.5",
                                      "--save-explanations", "--save-adversarial", "--out", str(out)])
    assert result.exit_code in (0, 1), result.output
    return out


def test_saved_adversarial_messages_are_token_ids_within_the_budget(text_audit):
    """--save-adversarial on text keeps the substitution attacks' messages as token ids, each within its budget
    and never touching [CLS] or padding; embedding-pgd's points are no message and are not kept."""
    from safetensors.numpy import load_file

    saved = load_file(text_audit / "adversarial.safetensors")
    x = saved["x"]
    assert x.dtype == np.int64 and not any("embedding-pgd" in key for key in saved)
    for attack in ("hotflip", "attention-shift-sub"):
        for budget in (1, 2):
            adv = saved[f"adv/{attack}@{budget}"]
            assert adv.dtype == np.int64 and adv.shape == x.shape
            changed = adv != x
            assert changed.sum(1).max() <= budget and not changed[(x == 0) | (np.arange(x.shape[1]) == 0)].any()
    assert (saved["adv/hotflip@2"] != x).any()  # the attack did substitute somewhere


def test_label_preserving_attacks_never_touch_the_rationale_and_hotflip_any_stays_out_of_the_headline(
        text_audit, text_checkpoint):
    """On the phishing corpus (which records each label's deciding frame) typo and the table's substitutions
    never edit a rationale token (robust.rationale_edits 0 where they broke anything); hotflip-any reports its
    own share, and worst-tokens is the per-sample worst case over the label-preserving attacks alone."""
    from safetensors.numpy import load_file

    from detectors.checkpoint import load_checkpoint

    metrics = json.loads((text_audit / "results.json").read_text())["metrics"]
    for attack in ("typo", "hotflip"):
        for budget in (1, 2):
            share = metrics.get(f"robust.rationale_edits.{attack}@{budget}")  # absent: it broke nothing
            assert share is None or share["value"] == 0.0, (attack, budget)
    document = json.loads((text_audit / "results.json").read_text())
    assert "robust.rationale_edits.hotflip-any@2" in {**metrics, **document["skipped"]}  # planned for it too
    saved = load_file(str(text_audit / "adversarial.safetensors"))
    detector = load_checkpoint(text_checkpoint[0]).detector.eval()
    with torch.no_grad():
        kept = {a: detector(torch.as_tensor(saved[f"adv/{a}@2"])).argmax(1).numpy() == saved["y"]
                for a in ("typo", "hotflip", "hotflip-any")}
    assert metrics["robust.accuracy.worst-tokens@2"]["value"] == pytest.approx(
        float(np.mean(kept["typo"] & kept["hotflip"])))
    assert not any("hotflip-any" in gate["metric"] for gate in document["gates"])


def test_audit_run_on_a_text_checkpoint_writes_a_text_report(text_audit):
    """The clean stage, the explanations and the report run on token ids; the kind is named in results.json,
    the quick profile's text attacks run on the token budgets, and `audit report` draws the tokens again,
    escaped."""
    from auditor.cli import cli
    from auditor.report.html import render_document

    out = text_audit
    document = json.loads((out / "results.json").read_text())
    assert document["data"]["input_kind"] == "text" and document["config"]["removal_baseline"] == "mask"
    assert document["data"]["name"] == "phishing:200" and document["data"]["n_samples"] == 12
    for name in ("robust.accuracy.worst-tokens@2", "robust.accuracy.hotflip@1", "stability.jsd.attention-shift-sub@2"):
        assert name in document["metrics"], name
    assert document["config"]["token_budget"] == [1, 2] and "robust.accuracy.hotflip@4" not in document["metrics"]
    assert any(gate["metric"] == "robust.accuracy.worst-tokens@2" for gate in document["gates"])
    assert "not defined on text" in document["skipped"]["faithfulness.infidelity.attention"]
    for name in ("clean.accuracy", "faithfulness.deletion_auc.attention", "faithfulness.comprehensiveness.random",
                 "localisation.plausibility.integrated-gradients", "agreement.kendall_tau.attention~feature-ablation"):
        assert name in document["metrics"], name
    sample = document["report"]["gallery"][0]
    assert sample["tokens"] and "[PAD]" not in sample["tokens"] and "[CLS]" not in sample["tokens"]
    assert all(v == 0 for name in sample["maps"] for v in sample["maps"][name][len(sample["tokens"]) + 1:])
    html = (out / "report.html").read_text()
    assert f'class="token"' in html and f">{sample['tokens'][0]}</span>" in html
    sample["tokens"][0] = "<script>alert(1)</script>"  # a message holding markup shows as text
    escaped = render_document(document).decode()
    assert "<script>alert(1)</script>" not in escaped and "&lt;script&gt;alert(1)&lt;/script&gt;" in escaped
    assert CliRunner().invoke(cli, ["report", str(out)]).exit_code == 0
    from safetensors.numpy import load_file

    saved = load_file(str(out / "explanations.safetensors"))
    assert saved["x"].dtype == np.int64 and saved["attr/integrated-gradients"].dtype == np.float32
    assert (saved["attr/random"][saved["x"] == 0] == 0).all()  # padding: exactly 0


def test_the_report_marks_the_substituted_tokens_and_labels_attention_bars_by_word(text_audit):
    """Clean against attacked messages (issue 16): both spelled position for position, padding left out, each
    substituted token marked (<del> in the clean message, <ins> in the attacked one) and escaped (a substituted
    `<script>` shows as text); the attention bars are labelled by the message's words, not positions."""
    from auditor.report.html import render_document

    document = json.loads((text_audit / "results.json").read_text())
    html = (text_audit / "report.html").read_text()
    examples = document["report"]["attention_examples"]
    example = next(e for e in examples if e["tokens"] != e["adv_tokens"])
    assert len(example["tokens"]) == len(example["adv_tokens"]) and "[PAD]" not in example["adv_tokens"]
    changed = [i for i, (a, b) in enumerate(zip(example["tokens"], example["adv_tokens"])) if a != b]
    assert len(changed) <= 2  # --token-budget 2,1
    clean, attacked = example["tokens"][changed[0]], example["adv_tokens"][changed[0]]
    assert f"<del>{clean}</del>" in html and f"<ins>{attacked}</ins>" in html
    assert f"</code> at {example['eps']:g} token" in html and "</code> at eps" not in html  # budgets in tokens
    for sample in document["report"]["adversarial_gallery"]:  # the flipped messages beside their clean ones
        assert len(sample["clean_tokens"]) == len(sample["tokens"]) and sample["clean_tokens"] != sample["tokens"]
    words = {word for e in examples for word in e["tokens"]} | {
        f"{a} → {b}" for e in examples for a, b in zip(e["tokens"], e["adv_tokens"]) if a != b}
    labels = re.findall(r'<td class="fname" title="t\d+">([^<]*)</td>', html)
    assert labels and set(labels) <= words, set(labels) - words
    example["adv_tokens"][changed[0]] = "<script>alert(2)</script>"
    escaped = render_document(document).decode()
    assert "<script>alert(2)" not in escaped and "<ins>&lt;script&gt;alert(2)&lt;/script&gt;</ins>" in escaped
    assert f"{clean} → &lt;script&gt;alert(2)&lt;/script&gt;</td>" in escaped


def test_audit_run_on_text_reads_message_files_and_refuses_bad_ones(text_checkpoint, tmp_path):
    from auditor.cli import cli

    path, _ = text_checkpoint
    lines = [{"body": "please verify your password now", "label": "phishing"},
             {"body": "the meeting moved to friday", "label": "benign"}] * 3
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    result = CliRunner().invoke(cli, ["run", "--model", str(path), "--data", str(tmp_path / "m.jsonl"),
                                      "--text-column", "body", "--explainers", "attention,random", "--device", "cpu",
                                      "--quiet", "--out", str(tmp_path / "a")])
    assert result.exit_code in (0, 1), result.output
    document = json.loads((tmp_path / "a" / "results.json").read_text())
    assert document["data"]["n_samples"] == 6 and "localisation.precision_at_k.attention" in document["skipped"]
    (tmp_path / "bad.csv").write_text("text,label\nhello,benign\nhi,spam\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["run", "--model", str(path), "--data", str(tmp_path / "bad.csv"),
                                      "--device", "cpu", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "labels 'spam' in" in result.output and "not classes of the checkpoint" in result.output
    (tmp_path / "bad.jsonl").write_text('{"text": "ok", "label": "benign"}\n{"text": "", "label": "benign"}\n',
                                        encoding="utf-8")
    result = CliRunner().invoke(cli, ["run", "--model", str(path), "--data", str(tmp_path / "bad.jsonl"),
                                      "--device", "cpu", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "line 2: empty text" in result.output
    result = CliRunner().invoke(cli, ["run", "--model", str(path), "--data", "breast-cancer", "--device", "cpu",
                                      "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "a text model audits messages" in result.output


def test_audit_run_on_text_refuses_a_bad_substitution_table_with_exit_2(text_checkpoint, tmp_path):
    from auditor.cli import cli

    path, _ = text_checkpoint
    (tmp_path / "subs.json").write_text('{"password": ["hunter2-not-a-word"]}', encoding="utf-8")
    for table, message in ((tmp_path / "missing.json", "no such file"),
                           (tmp_path / "subs.json", "'hunter2-not-a-word' is not in the model's vocabulary")):
        result = CliRunner().invoke(cli, ["run", "--model", str(path), "--substitutions", str(table), "--device", "cpu",
                                          "--quiet", "--out", str(tmp_path / "a")])
        assert result.exit_code == 2 and message in result.output, result.output
