"""The stages of an audit, in the order they run, and what is assembled from them: the names a configuration
plans and the check that every planned name was produced.

Each stage's metric facts are its tuple in the catalogue (:mod:`auditor.catalogue.specs`), which the report
reads without importing a stage; :data:`STAGES`' specs, in run order, are exactly the catalogue (checked at
import). A new stage is one class in its module, its specs in the catalogue and its place in :data:`STAGES`.
"""

from __future__ import annotations

from auditor.catalogue import CATALOGUE
from auditor.stages.agreement import AgreementStage
from auditor.stages.base import Stage
from auditor.stages.clean import CleanStage
from auditor.stages.explain import ExplainStage
from auditor.stages.faithfulness import FaithfulnessStage
from auditor.stages.localisation import LocalisationStage
from auditor.stages.masking import MaskingStage
from auditor.stages.robustness import RobustnessStage
from auditor.stages.sanity import SanityStage
from auditor.stages.sparsity import SparsityStage
from auditor.stages.trust import TrustStage

# run order: explain needs the clean prediction; the explanation stages need the attributions
STAGES: tuple[Stage, ...] = (CleanStage(), RobustnessStage(), MaskingStage(), ExplainStage(), FaithfulnessStage(),
                             AgreementStage(), SanityStage(), TrustStage(), LocalisationStage(), SparsityStage())
if tuple(spec for stage in STAGES for spec in stage.specs) != CATALOGUE:  # pragma: no cover - a wiring error
    raise RuntimeError("the stages' specs, in run order, are not auditor.catalogue.CATALOGUE")


def planned_metrics(config, *, binary: bool = True) -> list[str]:
    """Every metric name this configuration sets out to compute (its L2 grid resolved when L2 attacks run),
    stage by stage."""
    return [name for stage in STAGES for name in stage.planned(config, binary=binary)]


def check_produced(config, *, binary: bool, metrics: dict, skipped: dict[str, str]) -> None:
    """Every name a stage planned is a metric or skipped with the stage's own reason; anything else is a bug
    in that stage, raised naming it."""
    for stage in STAGES:
        missing = [name for name in stage.planned(config, binary=binary) if name not in metrics and name not in skipped]
        if missing:
            raise RuntimeError(f"the {stage.name} stage planned {', '.join(missing[:5])}"
                               f"{f' and {len(missing) - 5} more' if len(missing) > 5 else ''} but produced neither "
                               "a value nor a reason")
