"""The stage interface: what every stage of an audit declares and does.

A stage names its metrics (its ``specs``, :class:`~auditor.metrics.MetricSpec`: name pattern, direction, range,
definition, reference; declared in :mod:`auditor.catalogue.specs`, where the report and the gates read them
without importing a stage) and which of their names a configuration plans (``auditor.stages.order``). During
the audit a stage runs once per streamed block of rows (:meth:`Stage.run`): it reads the block and what earlier
stages put there (the clean prediction, the attributions) and adds per-sample metric values, the reasons for
metrics it could not compute, and the row-table groups the report needs. In the spirit of Quantus's metric
classes, which carry their facts as class attributes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from tqdm.auto import tqdm

from auditor.metrics import MetricSpec
from detectors.inputs.text import explained_positions_of, is_token_ids


@dataclass
class Block:
    """One streamed block of audited rows and everything the stages add to it.

    ``index``: the rows' global indices; ``tokens`` (text) the tokeniser's special ids and vocabulary size; ``baseline``: the removal baseline, (*shape) or the block's rows;
    ``relevant``: the block's rows of the localisation ground truth; ``n_rows``: the rows of the whole audit.
    Stages fill ``pred`` (clean), ``attributions`` and ``explainers`` (explain), ``per_sample`` (metric name ->
    values, aggregated over all rows later), ``notes`` (metric name -> why it was not computed) and ``table``
    (the block's row table, :func:`auditor.run.pipeline.audit_rows` says which groups it holds).
    """

    detector: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    config: object  # auditor.run.config.AuditConfig, bound to the model
    attacks: dict
    domain: object  # attacks.Domain
    baseline: torch.Tensor
    relevant: np.ndarray | None
    positive: int | None
    plan: object  # auditor.run.memory.MemoryPlan
    progress: bool
    n_rows: int
    pred: torch.Tensor | None = None
    attributions: dict[str, torch.Tensor] = field(default_factory=dict)
    explainers: dict = field(default_factory=dict)
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    table: dict = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    # text: the tokeniser's special ids (detectors.inputs.text.TokenIds); None for other kinds
    tokens: object | None = None

    @property
    def index_np(self) -> np.ndarray:
        return self.index.cpu().numpy()

    @property
    def explained(self) -> torch.Tensor | None:
        """(n, *shape) booleans: the positions an attribution explains and a removal may remove, where not every
        position is (text: each message's tokens after [CLS], :mod:`detectors.inputs.text`); None: all are."""
        return explained_positions_of(self.detector, self.x) if is_token_ids(self.x) else None


class Stage:
    """A stage: ``name``, ``specs`` (its metric families), :meth:`planned` and :meth:`run`.

    A stage that plans a name must produce it, or say why in ``Block.notes`` (a named reason of its own);
    :func:`auditor.stages.order.check_produced` turns any other gap into an error naming the stage.
    """

    name: ClassVar[str]
    specs: ClassVar[tuple[MetricSpec, ...]] = ()
    timed_as: ClassVar[str | None] = None  # the timing entry it counts toward, when not its own name

    def planned(self, config, *, binary: bool) -> list[str]:
        """The metric names this stage computes under ``config`` (``binary``: the detector has two classes)."""
        return []

    def run(self, block: Block) -> None:
        """Add this stage's per-sample values, notes and row-table groups for one block."""
        raise NotImplementedError

    def timed_run(self, block: Block) -> None:
        started = time.perf_counter()
        self.run(block)
        key = self.timed_as or self.name
        seconds = time.perf_counter() - started
        block.timing[key] = block.timing.get(key, 0.0) + seconds
        if block.progress and not sys.stderr.isatty():  # a CI log shows no progress bar: one line per stage
            rows = block.index_np
            span = f"rows {rows.min() + 1}-{rows.max() + 1} of {block.n_rows}" if len(rows) else "no rows"
            tqdm.write(f"audit: {self.name} {seconds:.1f} s ({span})", file=sys.stderr)
            sys.stderr.flush()  # in its place among the command's other lines, not at the end of a buffered log
