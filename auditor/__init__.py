"""Measuring and reporting: the audit, its stages, gates, reports and the ``audit`` command line.

``from auditor import audit, AuditConfig, AuditResult`` is the Python API (:mod:`auditor.api`). It loads on
first use, so that importing the package (the ``audit`` entry point does) costs no torch.
"""

from __future__ import annotations

import importlib

__all__ = ["AuditConfig", "AuditResult", "audit"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("auditor.api"), name)
    raise AttributeError(f"module 'auditor' has no attribute {name!r}")
