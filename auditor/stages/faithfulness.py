"""The faithfulness stage: its metric declarations and its run over a block (the metrics themselves are in
``auditor.stages.faithfulness_metrics``)."""

from __future__ import annotations

import numpy as np

from auditor.stages import faithfulness_metrics as faithfulness
from auditor.metrics import MetricSpec
from auditor.stages.base import Block, Stage



SPECS = (
    MetricSpec("faithfulness.deletion_auc.{explainer}", False, "[0, 1]",
               "area under the predicted-class probability as the top-attributed features are replaced by "
               "the baseline, one by one (x-axis: fraction of features removed)",
               reference="Petsiuk et al. 2018 (RISE), deletion metric"),
    MetricSpec("faithfulness.insertion_auc.{explainer}", True, "[0, 1]",
               "area under the predicted-class probability as the top-attributed features are restored into "
               "the baseline, one by one",
               reference="Petsiuk et al. 2018 (RISE), insertion metric"),
    MetricSpec("faithfulness.deletion_auc_diff.attention~{explainer}", True, "[-1, 1]",
               "paired difference, per sample: the other explainer's deletion AUC minus attention's, for every "
               "explainer whose deletion curve ran beside attention's (above 0: attention is more faithful); its "
               "interval is the paired bootstrap over the same resamples as every metric, so a comparison is "
               "called only when the interval excludes 0",
               reference="Petsiuk et al. 2018 (RISE) deletion, as a paired per-sample difference with a paired bootstrap interval (Efron & Tibshirani 1993)"),
    MetricSpec("faithfulness.deletion_gain.{explainer}", True, "(-inf, 1]",
               "1 - deletion AUC / mean deletion AUC of 8 random feature rankings of the same sample (above 0: "
               "removing the explainer's top features hurts the prediction sooner than chance)",
               reference="Petsiuk et al. 2018, relative to the random explainer"),
    MetricSpec("faithfulness.comprehensiveness.{explainer}", True, "[-1, 1]",
               "ERASER AOPC: mean over k = 1, 5, 10, 20, 50% of features (rounded up, at least one) of p_y(x) - "
               "p_y(x with its top-k features at the baseline)",
               reference="DeYoung et al. 2020 (ERASER)"),
    MetricSpec("faithfulness.sufficiency.{explainer}", False, "[-1, 1]",
               "ERASER AOPC: mean over the same k of p_y(x) - p_y(x with only its top-k features kept, the rest at "
               "the baseline)",
               reference="DeYoung et al. 2020 (ERASER)"),
    MetricSpec("faithfulness.correlation.{explainer}", True, "[-1, 1]",
               "Bhatt et al. 2020: Pearson correlation over 64 random subsets of 20% of the features between the "
               "subset's attribution sum and the drop in p_y when the subset is set to the baseline (samples where "
               "either side is constant do not count; n says how many did)",
               reference="Bhatt et al. 2020, Evaluating and Aggregating Feature-based Explanations"),
    MetricSpec("faithfulness.infidelity.{explainer}", False, "[0, inf)",
               "infidelity (Yeh et al. 2019) of p_y with captum's perturbations: mean squared error between "
               "beta * sum_i a_i eps_i and the drop in p_y when each feature moves a fraction eps_i ~ N(0, 0.1^2) "
               "toward the baseline (16 draws), beta >= 0 the least-squares scale (sign-aware: a negated "
               "attribution explains nothing)",
               reference="Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations"),
    MetricSpec("stability.max_sensitivity.{explainer}", False, "[0, inf)",
               "captum sensitivity_max (Yeh et al. 2019): largest relative change ||e(x) - e(x')|| / ||e(x)|| of "
               "the explanation over 8 inputs x' drawn uniformly within 0.02 (L-inf, [0,1] units) of x; not for "
               "random, 0 by construction (its draws ignore the input)",
               reference="Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations"),
)


class FaithfulnessStage(Stage):
    """The configured faithfulness metrics of every explainer; the removal curves the report draws go into
    the ``curves`` (rows x points) and ``fractions`` (their x-axis, one row per block) row-table groups."""

    name = "faithfulness"
    specs = SPECS

    def planned(self, config, *, binary: bool) -> list[str]:
        return faithfulness.planned_names(config.faithfulness_metrics, config.explainers)

    def run(self, block: Block) -> None:
        faithful = faithfulness.faithfulness_stage(block.detector, block.x, block.pred, block.attributions,
                                      baseline=block.baseline, seed=block.config.seed, index=block.index,
                                      metrics=block.config.faithfulness_metrics, explainers=block.explainers,
                                      max_batch=block.plan.forward_batch, explained=block.explained)
        block.per_sample.update(faithful.per_sample)
        block.notes.update(faithful.skipped)
        block.table["curves"] = {name: curve.astype(np.float32) for name, curve in faithful.curves.items()}
        block.table["fractions"] = {name: np.asarray(values)[None, :] for name, values in faithful.fractions.items()}
