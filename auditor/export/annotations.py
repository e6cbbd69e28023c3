"""GitHub Actions workflow annotations for failed gates (``::error title=...::...``), so a failed gate shows
on the pull request beside the summary: printed by ``audit run`` when ``GITHUB_ACTIONS`` is ``true``.

The runner reads the workflow commands from the step's output; a gate read from a policy file points at the
file and the line that set it, so the annotation also shows on the pull request's files view.
"""

from __future__ import annotations

import os
from pathlib import Path


def on_github_actions() -> bool:
    return os.environ.get("GITHUB_ACTIONS") == "true"


def gate_annotations(gates, policy_source: str) -> list[str]:
    """One ``::error`` command per failed gate (:class:`auditor.gates.GateResult`)."""
    lines = _policy_lines(policy_source)
    commands = []
    for gate in gates:
        if gate.passed:
            continue
        properties = {}
        line = next((number for number, text in enumerate(lines, 1) if f'"{gate.metric}"' in text), None)
        if line is not None:
            properties = {"file": policy_source, "line": str(line)}
        properties["title"] = f"audit gate failed: {gate.name}"
        written = ",".join(f"{key}={_escape_property(value)}" for key, value in properties.items())
        commands.append(f"::error {written}::{_escape_data(gate.message)}")
    return commands


def _policy_lines(source: str) -> list[str]:
    path = Path(source)
    if source == "default" or not path.is_file():
        return []
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


def _escape_data(text: str) -> str:
    # the runner's own escaping (actions/toolkit, command.ts): these would end or split the command
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")
