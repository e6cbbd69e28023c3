"""Writing an audit's files: every file is rendered in memory first, then each
is written to a temporary name in the output folder and renamed into place, so
a crash never leaves a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomically(folder: Path, files: dict[str, bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    mode = _file_mode()
    written = []
    for name, payload in files.items():
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(payload)
            os.chmod(temporary, mode)
            os.replace(temporary, folder / name)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
        written.append(folder / name)
    return written


def append_step_summary(markdown: bytes) -> None:
    """Append to the file GitHub Actions names in $GITHUB_STEP_SUMMARY (never overwrite: other steps write
    there too)."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "ab") as stream:
            stream.write(markdown + b"\n")
