"""The reports as a person opens them: headless Chromium, offline, no console errors, nothing fetched.

Runs when Chromium is installed (``make install-browser``; CI's ``.ci/run`` does it), skips otherwise.
Each page's full-length screenshot is saved in the test's tmp folder for a person to look at.
"""

from __future__ import annotations

import importlib.util
import shutil

import pytest
from click.testing import CliRunner

from auditor.cli import cli
from browser import find_chromium, visit
from exits import gate_exit_code

CHROMIUM = find_chromium()
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed; run `make install-browser`")]


# a reader sorting every sortable column twice and folding then unfolding the sections
CLICKS = """
document.querySelectorAll("table.sortable thead th").forEach(function (th) { th.click(); th.click(); });
document.querySelectorAll("nav.toc button").forEach(function (button) { button.click(); button.click(); });
"""


@pytest.fixture(scope="module")
def audited(trained_checkpoint, tmp_path_factory):
    """One tiny audit folder, and compare.html of it against a copy when `audit compare` exists."""
    root = tmp_path_factory.mktemp("browser")
    first = root / "a"
    result = CliRunner().invoke(cli, ["run", "--model", str(trained_checkpoint[0]), "--out", str(first),
                                      "--max-samples", "30", "--eps", "0.1", "--quiet"])
    assert result.exit_code == gate_exit_code(first), result.output
    pages = {"report.html": first / "report.html"}
    if importlib.util.find_spec("auditor.report.compare") is not None:
        second = root / "b"
        shutil.copytree(first, second)
        compared = CliRunner().invoke(cli, ["compare", str(first), str(second), "--out", str(root / "cmp")])
        assert compared.exit_code == 0, compared.output
        pages["compare.html"] = root / "cmp" / "compare.html"
    return pages


@pytest.mark.parametrize("page", ["report.html", "compare.html"])
def test_page_opens_offline_without_errors_or_requests(audited, page, tmp_path):
    if page not in audited:
        pytest.skip("`audit compare` is not part of this build")
    seen = visit(audited[page], chromium=CHROMIUM, interact=CLICKS)
    (tmp_path / f"{page}.png").write_bytes(seen.screenshot)
    assert seen.console_errors == []
    leaving = [url for url in seen.requests if not url.startswith(("file:", "data:"))]
    assert leaving == [], f"requests left the file: {leaving[:3]}"
    assert seen.screenshot.startswith(b"\x89PNG") and len(seen.screenshot) > 10_000
    if page == "report.html":
        for heading in ("Verdict", "Detection", "Robustness", "Attention under attack", "Faithfulness", "Samples",
                        "Method"):
            assert heading in seen.text
