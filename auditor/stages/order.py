"""The stages of an audit, in the order they run, and everything assembled from their declarations.

The catalogue (every metric family's facts), the README's metric table, the names a configuration plans
and the check that every planned name was produced are all read from the stages (``auditor.stages.base``), so a
metric's direction, range, definition and reference are written once, beside the code that computes it.
A new stage is one class in its module plus its place in :data:`STAGES`.
"""

from __future__ import annotations

from auditor.stages.agreement import AgreementStage
from auditor.stages.clean import CleanStage
from auditor.stages.explain import ExplainStage
from auditor.stages.faithfulness import FaithfulnessStage
from auditor.stages.localisation import LocalisationStage
from auditor.stages.masking import MaskingStage
from auditor.metrics import MetricSpec
from auditor.stages.robustness import RobustnessStage
from auditor.stages.sanity import SanityStage
from auditor.stages.sparsity import SparsityStage
from auditor.stages.base import Stage
from auditor.stages.trust import TrustStage

# run order: explain needs the clean prediction; the explanation stages need the attributions
STAGES: tuple[Stage, ...] = (CleanStage(), RobustnessStage(), MaskingStage(), ExplainStage(), FaithfulnessStage(),
                             AgreementStage(), SanityStage(), TrustStage(), LocalisationStage(), SparsityStage())

CATALOGUE: tuple[MetricSpec, ...] = tuple(spec for stage in STAGES for spec in stage.specs)


def spec_for(name: str, attacks: list[str], explainers: list[str]) -> MetricSpec | None:
    """The catalogue entry whose pattern ``name`` matches with these attacks and explainers, or None."""
    for spec in CATALOGUE:
        if spec.regex(attacks, explainers).match(name):
            return spec
    return None


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


def catalogue_markdown() -> str:
    """The README's metric table, generated from :data:`CATALOGUE` (``python -m auditor.stages.order``)."""
    lines = ["| Metric | Better | Range | Definition |", "| --- | --- | --- | --- |"]
    for spec in CATALOGUE:
        lines.append(f"| `{spec.pattern}` | {spec.arrow} {spec.direction} | {spec.value_range} | {spec.definition} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(catalogue_markdown())
