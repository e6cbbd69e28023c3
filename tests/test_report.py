"""The HTML report: self-contained, and names from data are text, never markup."""

import json
from html.parser import HTMLParser

from click.testing import CliRunner

from auditor.cli import cli

HOSTILE = '<script>alert("x")</script>'


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.links, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for key, value in attrs:
            if key in ("src", "href", "xlink:href", "action", "data") and value:
                self.links.append(value)
            if key == "style" and value and "url(" in value:
                self.links.append(value)

    def handle_data(self, data):
        self.text.append(data)


def _audit_hostile(tmp_path):
    csv = tmp_path / "hostile.csv"
    header = [HOSTILE, "größe \"quoted\"", "plain", "label"]
    rows = [",".join('"' + h.replace('"', '""') + '"' for h in header)]
    for i in range(120):
        a, b, c = i % 5, (i * 7) % 11, (i * 3) % 4
        label = "böse <b>" if a + c > 4 else "gut"
        rows.append(f'{a},{b},{c},"{label}"')
    csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    model = tmp_path / "m.safetensors"
    runner = CliRunner()
    trained = runner.invoke(cli, ["train", "--data", str(csv), "--epochs", "3", "--out", str(model), "--quiet"])
    assert trained.exit_code == 0, trained.output
    out = tmp_path / "out"
    audited = runner.invoke(cli, ["run", "--model", str(model), "--out", str(out), "--eps", "0.1",
                                  "--max-samples", "40", "--quiet"])
    assert audited.exit_code in (0, 1), audited.output
    return out


def test_report_is_self_contained_and_escapes_names(tmp_path):
    out = _audit_hostile(tmp_path)
    html = (out / "report.html").read_text(encoding="utf-8")
    parser = Tags()
    parser.feed(html)
    assert "script" not in parser.tags, "a name from the data became markup"
    assert [link for link in parser.links if not link.startswith("#")] == []
    assert "link" not in parser.tags and "iframe" not in parser.tags
    assert "&lt;script&gt;" in html
    text = "".join(parser.text)
    assert HOSTILE in text  # shown as text, character for character
    assert "böse <b>" in text and "<b>" not in parser.tags
    assert "style" in parser.tags and "svg" in parser.tags
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["data"]["name"].endswith("hostile.csv")


def test_report_has_the_sections_a_reviewer_needs(trained_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", "--model", str(trained_checkpoint[0]), "--out", str(out),
                                      "--max-samples", "50", "--quiet"])
    assert result.exit_code in (0, 1), result.output
    html = (out / "report.html").read_text(encoding="utf-8")
    for heading in ("Gates", "Model and run", "Detection", "Robustness", "Faithfulness", "Attention heat maps",
                    "Method", "built-in default policy"):
        assert heading in html, heading
    assert html.count("<svg") == 2  # robust accuracy vs eps, and deletion/insertion curves
    # robustness and attention-under-attack read as attack x eps tables, full rows folded away
    assert html.count("attack \\ eps") >= 5 and "<details>" in html
    assert "<code>robust.accuracy</code>" in html and "<code>stability.topk_intersection</code>" in html
    assert "misclassified" in html or "correct" in html
