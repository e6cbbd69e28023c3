"""The exit code an audit must end with: 0 when results.json says every gate passed, 1 when one failed
(the design's one place that decides it, auditor.gates.exit_code); any other code (2, 3) fails the test."""

import json
from pathlib import Path


def gate_exit_code(out: Path) -> int:
    return 0 if json.loads((Path(out) / "results.json").read_text(encoding="utf-8"))["passed"] else 1
