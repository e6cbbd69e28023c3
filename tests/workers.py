"""What the xdist workers of one test run share."""

from __future__ import annotations

import contextlib
import fcntl
import os


@contextlib.contextmanager
def built_once(tmp_path_factory, name):
    """A folder that one run's xdist workers share (the session's own folder without xdist), held under a lock:
    the first worker to take it builds what it needs there, the others wait for it and then read that."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # each worker's folder is a subfolder of the run's
    folder = root / f"shared-{name}"
    folder.mkdir(exist_ok=True)
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield folder
