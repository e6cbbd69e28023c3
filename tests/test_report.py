"""The HTML report: self-contained, and names from data are text, never markup."""

import json
from importlib import resources
from html.parser import HTMLParser

from click.testing import CliRunner

from auditor.cli import cli
from exits import gate_exit_code

HOSTILE = '<script>alert("x")</script>'
REPORT_JS = resources.files("reports").joinpath("templates", "report.js").read_text(encoding="utf-8").strip()


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.links, self.text, self.scripts, self.images = [], [], [], [], []
        self.in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.in_script = tag == "script"
        for key, value in attrs:
            if key == "src" and tag == "img" and value and value.startswith("data:image/png;base64,"):
                self.images.append(value)
            elif key in ("src", "href", "xlink:href", "action", "data") and value:
                self.links.append(value)
            if key == "style" and value and "url(" in value:
                self.links.append(value)

    def handle_data(self, data):
        if self.tags and self.tags[-1] == "script" and self.in_script:
            self.scripts.append(data.strip())
        else:
            self.text.append(data)

    def handle_endtag(self, tag):
        self.in_script = False


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
    assert audited.exit_code == gate_exit_code(out), audited.output
    return out


def test_report_is_self_contained_and_escapes_names(tmp_path):
    out = _audit_hostile(tmp_path)
    html = (out / "report.html").read_text(encoding="utf-8")
    parser = Tags()
    parser.feed(html)
    assert parser.tags.count("script") == 1, "a name from the data became markup"
    assert parser.scripts == [REPORT_JS], "the only script is the report's own sorting and toggling"
    assert [link for link in parser.links if not link.startswith("#")] == []
    assert "link" not in parser.tags and "iframe" not in parser.tags
    assert "&lt;script&gt;" in html
    text = "".join(parser.text)
    assert HOSTILE in text  # shown as text, character for character
    assert "böse <b>" in text and "<b>" not in parser.tags
    assert "style" in parser.tags and "svg" in parser.tags
    # names from the data reach every section that shows them: gallery bars, attention bars, adversarial changes
    assert html.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") >= 2
    assert "größe" in text
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["data"]["name"].endswith("hostile.csv")


def test_report_has_the_sections_a_reviewer_needs(trained_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", "--model", str(trained_checkpoint[0]), "--out", str(out),
                                      "--max-samples", "50", "--quiet"])
    assert result.exit_code == gate_exit_code(out), result.output
    html = (out / "report.html").read_text(encoding="utf-8")
    for heading in ("Verdict", "Gates", "Model and run", "Detection", "Robustness", "Attention under attack",
                    "Faithfulness", "Samples", "Method", "built-in default policy"):
        assert heading in html, heading
    # ROC, reliability, robust accuracy and evasion vs eps, attention vs eps, deletion/insertion curves, and the
    # cascading-randomisation (MPRT) curve of the quick profile's explainers
    assert html.count("<svg") == 7
    # robustness and attention-under-attack read as attack x eps tables; every section open without script
    assert html.count("attack \\ eps") >= 5 and "<details open>" in html and "<details>" not in html
    assert "<code>robust.accuracy</code>" in html and "<code>stability.topk_intersection</code>" in html
    # the headline comes first in the robustness section: the worst case, then its plot and the tables
    section = html[html.index('<section id="robustness">'):]
    assert section.index("worst case over every evasion attack") < section.index("<svg")
    assert section.index("<tr><td><code>worst</code></td>") < section.index("<tr><td><code>fgsm</code></td>")
    assert "misclassified" in html or "correct" in html
