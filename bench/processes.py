"""The benchmark's fresh processes: ``audit train`` writing a checkpoint for a section to audit, and a command
timed with its peak memory. Each runs from the repository root with it on ``PYTHONPATH``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def environment() -> dict[str, str]:
    """This process's environment with the repository importable."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def train_checkpoint(out: Path, data: str, *, epochs: int, detector: str | None = None,
                     device: str | None = None) -> Path:
    """``audit train --data data --epochs epochs --out out --quiet`` in a fresh process (``--detector`` and
    ``--device`` only where given, else the command's defaults); its output is captured, a failure raises."""
    command = [PY, "-m", "auditor", "train", *(["--detector", detector] if detector else []), "--data", data,
               "--epochs", str(epochs), *(["--device", device] if device else []), "--out", str(out), "--quiet"]
    subprocess.run(command, check=True, cwd=ROOT, env=environment(), capture_output=True)
    return out


def timed_process(command: list[str]) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (MiB) and exit code of ``command`` run in a fresh process of its own."""
    probe = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
             "rc = subprocess.call(sys.argv[1:]); "
             "print(json.dumps([time.perf_counter() - t, "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, rc]))")
    env = {**environment(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    out = subprocess.run([PY, "-c", probe, *command], capture_output=True, text=True, env=env, cwd=ROOT)
    wall, peak, rc = json.loads(out.stdout.strip().splitlines()[-1])
    return wall, peak, rc
