"""What an audit can report, readable by the stages and the report alike (neither needs the other for it).

:data:`CATALOGUE` is every metric family's facts (:mod:`~auditor.catalogue.specs`) in the order the stages run;
gates validate metric names against it, the report prints its definitions and references, and the README's
metric table is generated from it (``python -m auditor.catalogue``). The attacks' facts by name (definitions,
curves, norms, worst cases) are in :mod:`~auditor.catalogue.attacks`, the explainers' names in
:data:`EXPLAINER_NAMES`.
"""

from __future__ import annotations

from auditor.catalogue.specs import (AGREEMENT_SPECS, CLEAN_SPECS, FAITHFULNESS_SPECS, LOCALISATION_SPECS,
                                     MASKING_SPECS, ROBUSTNESS_SPECS, SANITY_SPECS, SPARSITY_SPECS, STABILITY_SPECS,
                                     TRUST_SPECS)
from auditor.metrics import MetricSpec

CATALOGUE: tuple[MetricSpec, ...] = (CLEAN_SPECS + ROBUSTNESS_SPECS + STABILITY_SPECS + MASKING_SPECS
                                     + FAITHFULNESS_SPECS + AGREEMENT_SPECS + SANITY_SPECS + TRUST_SPECS
                                     + LOCALISATION_SPECS + SPARSITY_SPECS)

# the registered explainers' names (auditor.stages.explainers.EXPLAINERS, in its order; a test keeps them equal),
# so that gates and compare resolve metric names without loading the explainers
EXPLAINER_NAMES: tuple[str, ...] = ("attention", "attention-max", "rollout", "grad-attention", "integrated-gradients",
                                   "saliency", "input-x-gradient", "deeplift", "gradient-shap", "feature-ablation",
                                   "random")


def spec_for(name: str, attacks: list[str], explainers: list[str]) -> MetricSpec | None:
    """The catalogue entry whose pattern ``name`` matches with these attacks and explainers, or None."""
    for spec in CATALOGUE:
        if spec.regex(attacks, explainers).match(name):
            return spec
    return None


def catalogue_markdown() -> str:
    """The README's metric table, generated from :data:`CATALOGUE` (``python -m auditor.catalogue``)."""
    lines = ["| Metric | Better | Range | Definition |", "| --- | --- | --- | --- |"]
    for spec in CATALOGUE:
        lines.append(f"| `{spec.pattern}` | {spec.arrow} {spec.direction} | {spec.value_range} | {spec.definition} |")
    return "\n".join(lines)
