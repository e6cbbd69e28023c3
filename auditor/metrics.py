"""The metric catalogue and the numbers every stage writes into.

Each metric family declares its facts here, next to nothing else: its name
pattern, whether higher is better, its range and a one-line definition. Gates
validate names against it, the report prints it, and a test checks the README
lists every entry, so the three cannot drift apart.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
# the reference explainers attention is compared with (auditor.agreement; kept here so the catalogue
# needs no import of the stages)
AGREEMENT_REFERENCES = ("integrated-gradients", "feature-ablation")
# sanity.mprt passes when the upper end of its 95% interval is below this (auditor.sanity.mprt_verdict)
MPRT_PASS_BELOW = 0.5


@dataclass(frozen=True)
class MetricSpec:
    """``higher_is_better`` None: an informational metric, neither direction is better (no gate regression,
    no best value marked in comparisons)."""

    pattern: str
    higher_is_better: bool | None
    value_range: str
    definition: str

    @property
    def direction(self) -> str:
        if self.higher_is_better is None:
            return "none (informational)"
        return "higher" if self.higher_is_better else "lower"

    @property
    def arrow(self) -> str:
        if self.higher_is_better is None:
            return "·"
        return "↑" if self.higher_is_better else "↓"

    def regex(self, attacks: list[str], explainers: list[str]) -> re.Pattern:
        text = re.escape(self.pattern)
        text = text.replace(re.escape("{attack}"), "(?P<attack>" + "|".join(map(re.escape, attacks)) + ")")
        text = text.replace(re.escape("{explainer}"), "(?P<explainer>" + "|".join(map(re.escape, explainers)) + ")")
        text = text.replace(re.escape("{reference}"),
                            "(?P<reference>" + "|".join(map(re.escape, AGREEMENT_REFERENCES)) + ")")
        text = text.replace(re.escape("{eps}"), r"(?P<eps>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)")
        return re.compile(text + r"\Z")


CATALOGUE: tuple[MetricSpec, ...] = (
    MetricSpec("clean.accuracy", True, "[0, 1]", "share of samples whose predicted class is the true class"),
    MetricSpec("clean.precision", True, "[0, 1]",
               "of the samples flagged as the positive class, the share that are (macro average over classes "
               "when there are more than two)"),
    MetricSpec("clean.recall", True, "[0, 1]",
               "of the positive-class samples, the share flagged (macro average when more than two classes)"),
    MetricSpec("clean.f1", True, "[0, 1]", "harmonic mean of precision and recall"),
    MetricSpec("clean.roc_auc", True, "[0, 1]",
               "area under the ROC curve of the positive class's probability (one-vs-rest macro average "
               "when more than two classes)"),
    MetricSpec("clean.ece", False, "[0, 1]",
               "expected calibration error: the predicted-class probability against the accuracy over 10 "
               "equal-width confidence bins, the bins weighted by their share of samples (Guo et al. 2017)"),
    MetricSpec("robust.accuracy.worst@{eps}", True, "[0, 1]",
               "the headline (Croce & Hein 2020, as RobustBench reports it): share of all audited samples still "
               "classified correctly under every L-inf evasion attack that ran at eps (every standard L-inf "
               "attack, attention-guided, stealth and the targeted runs; not attention-shift or -hijack): a "
               "per-sample worst case, never above any single attack's value"),
    MetricSpec("robust.accuracy.worst-l2@{eps}", True, "[0, 1]",
               "the same worst case over the L2 attacks (pgd-l2, cw, deepfool) at L2 budget eps (--eps-l2)"),
    MetricSpec("robust.accuracy.{attack}@{eps}", True, "[0, 1]",
               "accuracy on the untargeted attack's adversarial examples at budget eps (all audited samples; "
               "L-inf attacks on the --eps grid, L2 attacks on --eps-l2)"),
    MetricSpec("robust.accuracy.{attack}-targeted@{eps}", True, "[0, 1]",
               "with --target-class: accuracy on the adversarial examples of the attack aimed at the target "
               "class (all audited samples)"),
    MetricSpec("robust.attack_success_rate.{attack}@{eps}", False, "[0, 1]",
               "among samples classified correctly when clean, the share the attack makes misclassified"),
    MetricSpec("robust.evasion_rate.{attack}@{eps}", False, "[0, 1]",
               "binary detectors: among positive-class samples detected when clean, the share the attack turns "
               "into the negative class (the malicious sample passing as benign)"),
    MetricSpec("robust.targeted_success_rate.{attack}@{eps}", False, "[0, 1]",
               "with --target-class: among samples outside the target class classified correctly when clean, the "
               "share the targeted attack moves into the target class"),
    MetricSpec("robust.masking_suspected", False, "{0, 1}",
               "1 when a sign of gradient masking was found (pgd weaker than fgsm, pgd failing with the whole box "
               "allowed, square beating pgd by more than 0.05), 0 when every such check that ran passed"),
    MetricSpec("robust.not_converged", False, "{0, 1}",
               "1 when more effort keeps lowering robust accuracy (pgd with 5x the steps and 2x the restarts lower by more "
               "than max(0.02, 3/n), or an attack's accuracy rising with eps), 0 when every such check passed"),
    MetricSpec("stability.topk_intersection.{attack}@{eps}", True, "[0, 1]",
               "share of the clean top-k attended tokens (k = 5) still in the top-k under the attention attack"),
    MetricSpec("stability.spearman.{attack}@{eps}", True, "[-1, 1]",
               "Spearman rank correlation between clean and attacked attention over tokens"),
    MetricSpec("stability.jsd.{attack}@{eps}", False, "[0, ln 2]",
               "Jensen-Shannon divergence between clean and attacked attention, in nats"),
    MetricSpec("stability.prediction_kept.{attack}@{eps}", True, "[0, 1]",
               "share of samples whose predicted class the attention attack left unchanged"),
    MetricSpec("stability.hijack_success.{attack}@{eps}", False, "[0, 1]",
               "attention-hijack: share of samples whose target tokens all entered the attacked top-k"),
    MetricSpec("faithfulness.deletion_auc.{explainer}", False, "[0, 1]",
               "area under the predicted-class probability as the top-attributed features are replaced by "
               "the baseline, one by one (x-axis: fraction of features removed)"),
    MetricSpec("faithfulness.insertion_auc.{explainer}", True, "[0, 1]",
               "area under the predicted-class probability as the top-attributed features are restored into "
               "the baseline, one by one"),
    MetricSpec("faithfulness.deletion_auc_diff.attention~{explainer}", True, "[-1, 1]",
               "paired difference, per sample: the other explainer's deletion AUC minus attention's, for every "
               "explainer whose deletion curve ran beside attention's (above 0: attention is more faithful); its "
               "interval is the paired bootstrap over the same resamples as every metric, so a comparison is "
               "called only when the interval excludes 0"),
    MetricSpec("faithfulness.deletion_gain.{explainer}", True, "(-inf, 1]",
               "1 - deletion AUC / mean deletion AUC of 8 random feature rankings of the same sample (above 0: "
               "removing the explainer's top features hurts the prediction sooner than chance)"),
    MetricSpec("faithfulness.comprehensiveness.{explainer}", True, "[-1, 1]",
               "ERASER AOPC: mean over k = 1, 5, 10, 20, 50% of features (rounded up, at least one) of p_y(x) - "
               "p_y(x with its top-k features at the baseline)"),
    MetricSpec("faithfulness.sufficiency.{explainer}", False, "[-1, 1]",
               "ERASER AOPC: mean over the same k of p_y(x) - p_y(x with only its top-k features kept, the rest at "
               "the baseline)"),
    MetricSpec("faithfulness.correlation.{explainer}", True, "[-1, 1]",
               "Bhatt et al. 2020: Pearson correlation over 64 random subsets of 20% of the features between the "
               "subset's attribution sum and the drop in p_y when the subset is set to the baseline (samples where "
               "either side is constant do not count; n says how many did)"),
    MetricSpec("faithfulness.infidelity.{explainer}", False, "[0, inf)",
               "infidelity (Yeh et al. 2019) of p_y with captum's perturbations: mean squared error between "
               "beta * sum_i a_i eps_i and the drop in p_y when each feature moves a fraction eps_i ~ N(0, 0.1^2) "
               "toward the baseline (16 draws), beta >= 0 the least-squares scale (sign-aware: a negated "
               "attribution explains nothing)"),
    MetricSpec("stability.max_sensitivity.{explainer}", False, "[0, inf)",
               "captum sensitivity_max (Yeh et al. 2019): largest relative change ||e(x) - e(x')|| / ||e(x)|| of "
               "the explanation over 8 inputs x' drawn uniformly within 0.02 (L-inf, [0,1] units) of x; not for "
               "random, 0 by construction (its draws ignore the input)"),
    MetricSpec("agreement.kendall_tau.integrated-gradients~feature-ablation", True, "[-1, 1]",
               "the agreement noise floor (Neely et al. 2022): Kendall's tau-b between the two references' token "
               "rankings on the same samples, how far two sound explainers agree with each other"),
    MetricSpec("agreement.kendall_tau_vs_floor.{explainer}", True, "[-2, 2]",
               "per sample, the attention explainer's Kendall tau-b with the references (mean over "
               "integrated-gradients and feature-ablation) minus the references' tau-b with each other; upper "
               "end of the interval below 0: attention agrees with the references clearly less than they agree "
               "with each other"),
    MetricSpec("agreement.kendall_tau.{explainer}~{reference}", True, "[-1, 1]",
               "Kendall's tau-b between the attention explainer's and the reference's token rankings (each "
               "attribution summed in absolute value over a token's inputs), mean over samples (Jain & Wallace "
               "2019); reference: integrated-gradients or feature-ablation"),
    MetricSpec("agreement.topk_overlap.{explainer}~{reference}", True, "[0, 1]",
               "share of the attention explainer's top-k tokens (k = min(5, tokens)) that are also in the "
               "reference's top-k"),
    MetricSpec("sanity.mprt.{explainer}", False, "[0, 1]",
               "Adebayo et al. 2018 cascading model-parameter randomisation: absolute Spearman rank correlation "
               "between the explanations of the trained model and of the model with every layer re-initialised "
               "(top-down), the same random draws at every step; passes when the upper end of its 95% interval "
               f"is below {MPRT_PASS_BELOW:g}, fails when the lower end is at or above it (high = the explanation "
               "ignores the model)"),
    MetricSpec("sanity.flip_rate.attention", True, "[0, 1]",
               "Serrano & Smith 2019: share of samples whose decision flips when the highest CLS attention weight "
               "of the last layer is zeroed and the row renormalised (compare with sanity.flip_rate.random)"),
    MetricSpec("sanity.flip_rate.random", False, "[0, 1]",
               "the same when a random non-CLS weight is zeroed instead: the chance level that "
               "sanity.flip_rate.attention should exceed"),
    MetricSpec("sanity.uniform_attention.prediction_kept", False, "[0, 1]",
               "Wiegreffe & Pinter 2019: share of samples whose predicted class is unchanged when every attention "
               "layer's weights are replaced by uniform weights over the keys each query may attend (all layers at "
               "once, inside the forward); lower: the decisions rest on attention; at or above 0.95 attention does not "
               "drive the model, so heat maps of it explain little"),
    MetricSpec("sanity.uniform_attention.accuracy", False, "[0, 1]",
               "accuracy with every attention layer made uniform as in sanity.uniform_attention.prediction_kept; "
               "far below clean.accuracy: the model needs its attention, close to it: it does not"),
    MetricSpec("trust.hidden_importance.{explainer}", False, "[0, 1]",
               "Pruthi et al. 2020: share of samples whose most erasure-important token (largest drop in log p_y "
               "when that token's inputs alone are set to the removal baseline; samples where no erasure lowers "
               "it do not count) gets less than a uniform share 1/T of the explainer's attribution mass (sum of "
               "|attribution| over each token's inputs, normalised over the T tokens that cover inputs, CLS "
               "excluded)"),
    MetricSpec("localisation.precision_at_k.{explainer}", True, "[0, 1]",
               "on data with known relevant features: share of the k top-attributed features that are truly "
               "relevant (k = number of relevant features of the sample)"),
    MetricSpec("attention.zero_share", None, "[0, 1)",
               "share of exactly-zero weights in the last layer's CLS attention row (over every token, CLS "
               "included; mean over heads, then samples; every query row for models without CLS): about 0 for "
               "softmax and additive attention, the share of tokens outside the support for sparsemax/entmax15, "
               "where the gradient is exactly 0 too"),
    MetricSpec("attention.entropy", None, "[0, ln tokens]",
               "Shannon entropy -sum p ln p (nats, 0 ln 0 = 0) of the same rows, mean over heads, then samples: 0 "
               "when each head attends to one token, ln(tokens) when uniform"),
)


@dataclass(frozen=True)
class MetricValue:
    value: float
    ci95: tuple[float, float] | None = None
    n: int | None = None  # samples that counted, for means over per-sample values

    def to_dict(self) -> dict:
        payload = {"value": self.value, "ci95": list(self.ci95) if self.ci95 is not None else None}
        if self.n is not None:
            payload["n"] = self.n
        return payload


def format_eps(eps: float) -> str:
    return f"{eps:g}"


def spec_for(name: str, attacks: list[str], explainers: list[str]) -> MetricSpec | None:
    for spec in CATALOGUE:
        if spec.regex(attacks, explainers).match(name):
            return spec
    return None


class Bootstrap:
    """Percentile bootstrap over one fixed set of resampled rows.

    All metrics of a run resample the same rows (a paired bootstrap), drawn
    from the run's seed, so two metrics' intervals are comparable. The rows
    (resamples x n indices) are kept when small; for large n they are redrawn
    from the same stream in blocks of resamples whenever needed, so memory
    stays bounded (``BLOCK_ENTRIES`` indices at a time) and the numbers are
    the same either way.
    """

    KEEP_ENTRIES = 1 << 24
    BLOCK_ENTRIES = 1 << 22

    def __init__(self, n_samples: int, *, seed: int, resamples: int = BOOTSTRAP_RESAMPLES) -> None:
        self.n_samples, self.seed, self.resamples = n_samples, seed, resamples
        self._rows = None
        if n_samples and resamples * n_samples <= self.KEEP_ENTRIES:
            self._rows = next(self._draw(resamples))

    def _draw(self, block: int):
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, zlib.crc32(b"bootstrap")]))
        for start in range(0, self.resamples, block):
            yield rng.integers(0, self.n_samples, size=(min(block, self.resamples - start), self.n_samples))

    def blocks(self):
        """The resampled rows, (resamples, n) in consecutive blocks of resamples."""
        if self._rows is not None:
            yield self._rows
        elif self.n_samples:
            yield from self._draw(max(1, self.BLOCK_ENTRIES // self.n_samples))

    def interval(self, statistic, *arrays: np.ndarray) -> tuple[float, float] | None:
        """``statistic(*resampled)`` takes arrays of shape (resamples, n) and returns (resamples,)."""
        if not self.n_samples:
            return None
        return self.intervals({"_": (statistic, arrays)})["_"]

    def intervals(self, statistics: dict) -> dict:
        """Several intervals over one pass of the resampled rows: name -> (statistic, arrays)."""
        parts: dict = {name: [] for name in statistics}
        for rows in self.blocks():
            for name, (statistic, arrays) in statistics.items():
                with np.errstate(invalid="ignore", divide="ignore"):
                    parts[name].append(np.asarray(statistic(*(a[rows] for a in arrays)), dtype=np.float64))
        out = {}
        for name, chunks in parts.items():
            values = np.concatenate(chunks) if chunks else np.empty(0)
            values = values[np.isfinite(values)]
            if not chunks or len(values) < 0.5 * self.resamples:
                out[name] = None
            else:
                lo, hi = np.percentile(values, [2.5, 97.5])
                out[name] = (float(lo), float(hi))
        return out

    def mean(self, per_sample: np.ndarray, *, mask: np.ndarray | None = None) -> MetricValue | None:
        """The mean of ``per_sample`` (over rows where ``mask`` holds) with its interval."""
        return self.means({"_": (per_sample, mask)})["_"]

    def means(self, table: dict) -> dict:
        """Means with intervals of several per-sample arrays over one pass of the rows:
        name -> (values, mask or None); a name whose mask holds nowhere maps to None."""
        values, statistics = {}, {}
        for name, (per_sample, mask) in table.items():
            per_sample = np.asarray(per_sample, dtype=np.float64)
            if mask is None:
                mask = np.ones(len(per_sample), dtype=bool)
            if not mask.any():
                continue
            values[name] = float(per_sample[mask].mean())
            statistics[name] = (_weighted_mean, (np.where(mask, per_sample, 0.0), mask.astype(np.float64)))
        intervals = self.intervals(statistics) if self.n_samples else {}
        return {name: (MetricValue(values[name], intervals.get(name)) if name in values else None) for name in table}


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (values * weights).sum(1) / weights.sum(1)


def catalogue_markdown() -> str:
    """The README's metric table, generated from CATALOGUE (``python -m auditor.metrics``)."""
    lines = ["| Metric | Better | Range | Definition |", "| --- | --- | --- | --- |"]
    for spec in CATALOGUE:
        lines.append(f"| `{spec.pattern}` | {spec.arrow} {spec.direction} | {spec.value_range} | {spec.definition} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(catalogue_markdown())
