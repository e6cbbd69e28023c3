"""The layers: detectors <- attacks <- auditor. Nothing imports upward, no two modules import each other
(directly or round a longer circle, imports inside functions and type-only imports included), and what the
layers promise holds in a fresh interpreter: detectors load without attacks or auditor, attacks without
auditor, and ``audit --help`` without torch. Inside the auditor, the tree shows the flow: the report reads the
results document and the catalogue, never a stage; at most 12 modules at the package's top; no module longer
than a reader can hold (500 lines)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("detectors", "attacks", "auditor")  # each may import only itself and the ones before it


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its body: functions and ``if TYPE_CHECKING:`` blocks
    included (a type-only import is still a module a reader must understand first)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    pending = [tree]
    while pending:
        node = pending.pop()
        pending.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m.split(".")[0] in LAYERS}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) - {name} for name, path in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in graph:
                continue
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_module_imports_a_higher_layer():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = [f"{name} imports {other}" for name, imports in sorted(_graph().items()) for other in sorted(imports)
              if rank[other.split(".")[0]] > rank[name.split(".")[0]]]
    assert upward == []


def test_no_import_circle_between_modules():
    assert _circles(_graph()) == []


def _reached(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, pending = set(), [start]
    while pending:
        for other in graph.get(pending.pop(), ()):
            if other not in seen:
                seen.add(other)
                pending.append(other)
    return seen


def test_the_report_never_imports_a_stage():
    """Every module under auditor/report/, and everything it imports in turn, stays clear of auditor/stages/:
    the report draws from the results document and the catalogue alone, so ``audit report DIR`` and
    ``audit compare`` need no stage and a stage's internals can change without touching the report."""
    graph = _graph()
    report = [name for name in graph if name.startswith("auditor.report")]
    assert len(report) >= 6
    found = {name: sorted(m for m in _reached(graph, name) if m.startswith("auditor.stages")) for name in report}
    assert {name: stages for name, stages in found.items() if stages} == {}


def test_the_rule_sees_a_stage_reached_through_another_module():
    graph = {"auditor.report.html": {"auditor.gates"}, "auditor.gates": {"auditor.stages.order"}}
    assert "auditor.stages.order" in _reached(graph, "auditor.report.html")


def test_the_auditor_shows_its_flow_at_the_top():
    top = sorted(path.name for path in (ROOT / "auditor").glob("*.py"))
    assert len(top) <= 12, top
    assert {"stages", "run", "report", "catalogue"} <= {path.name for path in (ROOT / "auditor").iterdir()
                                                         if (path / "__init__.py").exists()}


def test_no_module_is_longer_than_a_reader_can_hold():
    long = {name: lines for name, path in _modules().items()
            if (lines := len(path.read_text().splitlines())) > 500}
    assert long == {}


def test_the_catalogue_names_the_registered_explainers():
    from auditor.catalogue import EXPLAINER_NAMES
    from auditor.stages.explainers import EXPLAINERS

    assert EXPLAINER_NAMES == tuple(EXPLAINERS)


def test_the_public_names_load_from_the_package():
    from auditor import AuditConfig, AuditResult, audit
    from auditor.api import AuditConfig as config, AuditResult as result, audit as run

    assert (AuditConfig, AuditResult, audit) == (config, result, run)


def test_the_reader_sees_imports_inside_functions_and_relative_ones(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("from typing import TYPE_CHECKING\nimport torch\n"
                      "def later():\n    from auditor.cli import main\n    from . import seeding\n"
                      "if TYPE_CHECKING:\n    from auditor.run.subject import Subject\n")
    modules = {"auditor.cli": source, "detectors.seeding": source, "auditor.run.subject": source}
    assert _imports("detectors.x", source, modules) == {"auditor.cli", "detectors.seeding", "auditor.run.subject"}
    graph = {"detectors.a": {"auditor.b"}, "auditor.b": {"auditor.c"}, "auditor.c": {"auditor.d"},
             "auditor.d": {"auditor.b"}}
    assert _circles(graph) == [["auditor.b", "auditor.c", "auditor.d"]]


_LOAD_EVERY_MODULE = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    if not module.name.endswith("__main__"):
        importlib.import_module(module.name)
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def _top_packages_after_loading(package: str) -> set[str]:
    done = subprocess.run([sys.executable, "-c", _LOAD_EVERY_MODULE, package], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout))


def test_detectors_load_without_attacks_or_auditor():
    loaded = _top_packages_after_loading("detectors")
    assert "detectors" in loaded and not loaded & {"attacks", "auditor"}


def test_attacks_load_without_auditor():
    loaded = _top_packages_after_loading("attacks")
    assert "attacks" in loaded and "auditor" not in loaded


_EVERY_HELP = """
import json, sys
from auditor.cli import cli, main
answers = {}
for command in [[], *[[name] for name in sorted(cli.commands)]]:
    try:
        main([*command, "--help"])
    except SystemExit as stop:
        answers[" ".join(command) or "audit"] = stop.code
print(json.dumps({"answers": answers, "torch": "torch" in sys.modules}))
"""


def test_every_help_answers_without_importing_torch():
    done = subprocess.run([sys.executable, "-c", _EVERY_HELP], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert set(report["answers"]) >= {"audit", "train", "run", "demo", "compare", "attacks"}
    assert set(report["answers"].values()) == {0}
    assert report["torch"] is False


def test_the_torch_free_names_match_what_the_detectors_implement():
    from detectors import blocks, inputs, kinds, registry

    assert sorted(kinds.DETECTOR_KINDS) == sorted(registry.DETECTORS)
    assert blocks.ATTENTION_VARIANTS is kinds.ATTENTION_VARIANTS
    assert kinds.INPUT_KIND_NAMES == tuple(inputs.INPUT_KINDS)
    assert kinds.REMOVAL_BASELINES == inputs.REMOVAL_BASELINES


def test_the_architecture_page_lays_out_the_tree():
    """docs/architecture.md's layout names every module of the auditor under its own folder, so the page is
    the tree."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    layout = page[page.index("## Layout"):]
    block = layout[layout.index("auditor/ "):layout.index("bench/ ")]
    folders = ["catalogue", "stages", "run", "report"]
    starts = {folder: block.index(f"{folder}/ ") for folder in folders}
    missing = []
    for path in sorted((ROOT / "auditor").rglob("*.py")):
        parts = path.relative_to(ROOT / "auditor").parts
        if len(parts) == 1:
            where = block[:min(starts.values())]
        elif parts[0] in folders:
            later = [s for s in starts.values() if s > starts[parts[0]]]
            where = block[starts[parts[0]]:min(later) if later else len(block)]
        else:
            continue  # training/ and export/ are listed by their modules' names in words
        if path.name != "__init__.py" and path.name not in where and path.stem not in where:
            missing.append(str(path.relative_to(ROOT)))
    assert missing == []
