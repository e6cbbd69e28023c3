"""The README and the docs stay true to the code, and a wheel ships the templates."""

import subprocess
import sys
import zipfile
from pathlib import Path

from auditor.catalogue import CATALOGUE, catalogue_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_docs_metric_table_is_generated_from_the_catalogue():
    page = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    assert catalogue_markdown() in page, "regenerate the table in docs/metrics.md with: python -m auditor.catalogue"
    for spec in CATALOGUE:
        assert f"`{spec.pattern}`" in page


def test_readme_quick_start_is_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == ["make demo", "make test"]


def test_wheel_ships_templates(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("attention_audit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "reports/templates/report.html.j2" in names and "reports/templates/report.css" in names
    assert "reports/templates/report.js" in names
    assert any(n.startswith("attention_audit-") and n.endswith("entry_points.txt") for n in names)
    for package in ("auditor", "detectors", "detectors/inputs", "attacks"):
        assert f"{package}/__init__.py" in names
