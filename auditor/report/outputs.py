"""Writing an audit's files: every file is written to a temporary name in the
output folder and renamed into place only once complete, so a crash never leaves
a half-written file. Most files are rendered in memory and written at once; the
saved tensors are written row block by row block (auditor.run.tensorfile) into a
:func:`reserve`-d file that is :func:`commit`-ed when the audit succeeds."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from pathlib import Path

from detectors.errors import BadInputError

# how a user (Ctrl-C) and a CI system (cancelling a job) stop a run
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomically(folder: Path, files: dict[str, bytes]) -> list[Path]:
    written = []
    for name, payload in files.items():
        temporary = reserve(folder, name)
        try:
            with open(temporary, "wb") as stream:
                stream.write(payload)
            written.append(commit(temporary, folder / name))
        finally:
            discard(temporary)
    return written


def check_out_folder(folder: Path) -> None:
    """Bad input, before any work, when ``folder`` cannot be made into a folder this process writes in (a path
    under a file, under /proc, without permission); the folders made to find out are removed again."""
    made: list[Path] = []
    try:
        for path in reversed([folder, *folder.parents]):
            if path.is_dir():
                continue
            if path.exists():
                raise BadInputError(f"--out {str(folder)!r} cannot be a folder: {str(path)!r} is a file; pass a "
                                    "folder path")
            path.mkdir()
            made.append(path)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".audit-probe.")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise BadInputError(f"--out {str(folder)!r} cannot be a folder to write in ({error.strerror}: "
                            f"{error.filename}); pass a folder path you may write to") from None
    finally:
        for path in reversed(made):
            path.rmdir()


@contextlib.contextmanager
def signals_held():
    """SIGINT and SIGTERM wait until the block ends, so that a stop never leaves some outputs renamed into
    place and others not; the renames take milliseconds."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def reserve(folder: Path, name: str) -> Path:
    """A new empty temporary file beside ``folder / name`` (the folder is made if missing), to be filled,
    then :func:`commit`-ed into place or :func:`discard`-ed."""
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    os.close(handle)
    return Path(temporary)


def commit(temporary: Path, target: Path) -> Path:
    """Rename a filled temporary file into place, with the permissions of an ordinarily created file."""
    os.chmod(temporary, _file_mode())
    os.replace(temporary, target)
    return target


def discard(temporary: Path) -> None:
    """Remove a temporary file that was not committed (a no-op once it was)."""
    if os.path.exists(temporary):
        os.unlink(temporary)


class PendingFiles:
    """Files filled in place before they are complete (the saved tensors, written row block by row block):
    each is :meth:`reserve`-d under a temporary name in ``folder`` and renamed to its name by
    :meth:`commit`. Leaving the ``with`` block without a commit removes them, and the folder too when this
    made it and nothing else was written there, so a failed audit leaves no trace."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.temporary: dict[str, Path] = {}
        self._made_folder = False

    def reserve(self, name: str) -> Path:
        if not self.folder.exists():
            self._made_folder = True
        self.temporary[name] = reserve(self.folder, name)
        return self.temporary[name]

    def commit(self) -> list[Path]:
        committed = [commit(temporary, self.folder / name) for name, temporary in self.temporary.items()]
        self.temporary = {}
        return committed

    def __enter__(self) -> "PendingFiles":
        return self

    def __exit__(self, *exc) -> None:
        for temporary in self.temporary.values():
            discard(temporary)
        self.temporary = {}
        if self._made_folder and self.folder.is_dir() and not any(self.folder.iterdir()):
            self.folder.rmdir()


def append_step_summary(markdown: bytes) -> None:
    """Append to the file GitHub Actions names in $GITHUB_STEP_SUMMARY (never overwrite: other steps write
    there too)."""
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "ab") as stream:
            stream.write(markdown + b"\n")
