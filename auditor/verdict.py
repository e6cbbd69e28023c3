"""Can attention be trusted as an explanation of this detector? The verdict panel, as plain data.

Six questions, each answered from one metric of the table and its 95% bootstrap interval (never from
point values alone), in this order:

1. Is attention used at all? ``sanity.uniform_attention.prediction_kept`` (Wiegreffe & Pinter 2019):
   fail when at least ``UNIFORM_KEPT_LIMIT`` (95%) of predictions survive uniform attention (attention
   does not drive this model, so heat maps of it explain little); pass when the interval's upper end
   is below it; unclear otherwise.
2. Is it more faithful than chance? ``faithfulness.deletion_auc_diff.attention~random``: pass when the
   interval lies above 0, fail when it lies below 0, "no clear difference" otherwise.
3. Is it close to the best reference? ``faithfulness.deletion_auc_diff.attention~REF`` for the
   reference (integrated-gradients, feature-ablation) with the lowest difference, i.e. the most
   faithful one: fail when the interval lies below 0 (clearly less faithful than the best reference),
   pass otherwise (above 0: more faithful; containing 0: no clear difference).
4. Does it agree with the references beyond the noise floor? ``agreement.kendall_tau_vs_floor.attention``
   (Neely et al. 2022): fail when the interval lies below 0 (attention agrees with the references
   clearly less than they agree with each other), pass otherwise.
5. Does it pass the randomisation check? ``sanity.mprt.attention`` (Adebayo et al. 2018), the one
   MPRT rule :func:`mprt_verdict`: pass when the upper end is below ``MPRT_PASS_BELOW``, fail when the
   lower end is at or above it, unclear otherwise.
6. Does it not hide important inputs? ``trust.hidden_importance.attention`` (Pruthi et al. 2020): fail
   when the lower end lies above ``HIDDEN_IMPORTANCE_LIMIT`` (for most samples the input erasure shows
   matters most gets less than a uniform share of attention), pass when the upper end lies below it,
   unclear otherwise.

A question whose metric did not run says so (status ``not run``, with the reason when one is known).
A metric without an interval is judged on its value as if the interval were that point.
"""

from __future__ import annotations

from dataclasses import dataclass

from auditor.metrics import AGREEMENT_REFERENCES, MPRT_PASS_BELOW, MetricValue

TITLE = "Can attention be trusted as an explanation of this detector?"
UNIFORM_KEPT_LIMIT = 0.95
HIDDEN_IMPORTANCE_LIMIT = 0.5
STATUSES = ("pass", "fail", "unclear", "not run")


@dataclass(frozen=True)
class TrustLine:
    """One question of the panel: its answer (``status``, one of STATUSES), the sentence a reader sees and
    the metric it rests on (the report links to it)."""

    question: str
    status: str
    finding: str
    metric: str
    value: float | None = None
    ci95: tuple[float, float] | None = None


def _ends(value: MetricValue) -> tuple[float, float]:
    return tuple(value.ci95) if value.ci95 is not None else (value.value, value.value)


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _numbers(metric: str, value: MetricValue) -> str:
    low, high = _ends(value)
    return f"{metric} = {_fmt(value.value)}, 95% interval [{_fmt(low)}, {_fmt(high)}]"


def sign_of_interval(value: MetricValue) -> int:
    """+1 when the 95% interval lies above 0, -1 when below, 0 when it contains 0 ("no clear difference")."""
    low, high = _ends(value)
    return 1 if low > 0 else -1 if high < 0 else 0


def mprt_verdict(value: MetricValue) -> str:
    """"pass", "fail" or "unclear": the one MPRT rule of the catalogue, the report and this panel."""
    low, high = _ends(value)
    if high < MPRT_PASS_BELOW:
        return "pass"
    if low >= MPRT_PASS_BELOW:
        return "fail"
    return "unclear"


def _not_run(question: str, metric: str, skipped: dict[str, str]) -> TrustLine:
    why = skipped.get(metric)
    return TrustLine(question, "not run", f"Did not run{': ' + why if why else ' in this audit'}.", metric)


def _line(question: str, status: str, finding: str, metric: str, value: MetricValue) -> TrustLine:
    return TrustLine(question, status, f"{finding} ({_numbers(metric, value)}).", metric, value.value,
                     tuple(value.ci95) if value.ci95 is not None else None)


def trust_panel(metrics: dict[str, MetricValue], skipped: dict[str, str] | None = None) -> list[TrustLine]:
    """The six lines of the panel, in the module's order, from a metrics table."""
    skipped = skipped or {}
    return [_used(metrics, skipped), _chance(metrics, skipped), _best_reference(metrics, skipped),
            _noise_floor(metrics, skipped), _randomisation(metrics, skipped), _hidden(metrics, skipped)]


def _used(metrics, skipped) -> TrustLine:
    question, metric = "Is attention used at all?", "sanity.uniform_attention.prediction_kept"
    if metric not in metrics:
        return _not_run(question, metric, skipped)
    value = metrics[metric]
    if value.value >= UNIFORM_KEPT_LIMIT:
        return _line(question, "fail", f"No: at least {UNIFORM_KEPT_LIMIT:.0%} of predictions survive uniform "
                     "attention, so attention does not drive this model and heat maps of it explain little",
                     metric, value)
    if _ends(value)[1] < UNIFORM_KEPT_LIMIT:
        return _line(question, "pass", "Yes: replacing attention by uniform weights changes the predictions",
                     metric, value)
    return _line(question, "unclear", f"Unclear: the share of predictions kept under uniform attention may reach "
                 f"{UNIFORM_KEPT_LIMIT:.0%}", metric, value)


def _chance(metrics, skipped) -> TrustLine:
    question, metric = "Is it more faithful than chance?", "faithfulness.deletion_auc_diff.attention~random"
    if metric not in metrics:
        return _not_run(question, metric, skipped)
    value = metrics[metric]
    sign = sign_of_interval(value)
    if sign > 0:
        return _line(question, "pass", "Yes: removing attention's top features lowers the prediction sooner than "
                     "removing random ones", metric, value)
    if sign < 0:
        return _line(question, "fail", "No: attention is less faithful than a random ranking", metric, value)
    return _line(question, "unclear", "No clear difference from a random ranking", metric, value)


def _best_reference(metrics, skipped) -> TrustLine:
    question = "Is it close to the best reference explainer?"
    candidates = {reference: metrics[f"faithfulness.deletion_auc_diff.attention~{reference}"]
                  for reference in AGREEMENT_REFERENCES
                  if f"faithfulness.deletion_auc_diff.attention~{reference}" in metrics}
    if not candidates:
        return _not_run(question, f"faithfulness.deletion_auc_diff.attention~{AGREEMENT_REFERENCES[0]}", skipped)
    best = min(candidates, key=lambda reference: (candidates[reference].value, reference))
    metric, value = f"faithfulness.deletion_auc_diff.attention~{best}", candidates[best]
    sign = sign_of_interval(value)
    if sign < 0:
        return _line(question, "fail", f"No: attention is clearly less faithful than {best}, the best reference",
                     metric, value)
    if sign > 0:
        return _line(question, "pass", f"Yes: attention is more faithful than {best}, the best reference",
                     metric, value)
    return _line(question, "pass", f"Yes: no clear difference from {best}, the best reference", metric, value)


def _noise_floor(metrics, skipped) -> TrustLine:
    question = "Does it agree with the references as well as they agree with each other?"
    metric = "agreement.kendall_tau_vs_floor.attention"
    if metric not in metrics:
        return _not_run(question, metric, skipped)
    value = metrics[metric]
    sign = sign_of_interval(value)
    if sign < 0:
        return _line(question, "fail", "No: attention's ranking agrees with the references' clearly less than "
                     "they agree with each other (beyond the noise floor)", metric, value)
    if sign > 0:
        return _line(question, "pass", "Yes: attention agrees with the references more than they agree with each "
                     "other", metric, value)
    return _line(question, "pass", "Yes: no clear difference from the references' agreement with each other "
                 "(within the noise floor)", metric, value)


def _randomisation(metrics, skipped) -> TrustLine:
    question, metric = "Does it pass the randomisation check?", "sanity.mprt.attention"
    if metric not in metrics:
        return _not_run(question, metric, skipped)
    value = metrics[metric]
    status = mprt_verdict(value)
    finding = {"pass": f"Yes: once the model's weights are randomised the explanation keeps a rank correlation "
                       f"below {MPRT_PASS_BELOW:g} with the trained model's",
               "fail": f"No: the explanation keeps a rank correlation of at least {MPRT_PASS_BELOW:g} with the "
                       "trained model's after every weight is randomised, so it barely depends on what the model "
                       "learnt",
               "unclear": f"Unclear: the interval of the rank correlation after randomisation contains "
                          f"{MPRT_PASS_BELOW:g}"}[status]
    return _line(question, status, finding, metric, value)


def _hidden(metrics, skipped) -> TrustLine:
    question, metric = "Does it not hide important inputs?", "trust.hidden_importance.attention"
    if metric not in metrics:
        return _not_run(question, metric, skipped)
    value = metrics[metric]
    low, high = _ends(value)
    if low > HIDDEN_IMPORTANCE_LIMIT:
        return _line(question, "fail", "No: for most samples the input that erasure shows matters most gets less "
                     "than a uniform share of attention, so attention hides what matters", metric, value)
    if high < HIDDEN_IMPORTANCE_LIMIT:
        return _line(question, "pass", "Yes: for most samples attention gives the input that erasure shows "
                     "matters most at least a uniform share", metric, value)
    return _line(question, "unclear", f"Unclear: the interval of the share of samples whose most important input "
                 f"attention hides contains {HIDDEN_IMPORTANCE_LIMIT:g}", metric, value)


def panel_markdown(lines: list[TrustLine]) -> list[str]:
    """The panel as Markdown lines for summary.md."""
    out = [f"### {TITLE}", "", "| Question | Answer | Finding |", "| --- | --- | --- |"]
    for line in lines:
        answer = {"pass": "yes", "fail": "**NO**", "unclear": "unclear", "not run": "not run"}[line.status]
        finding = line.finding.replace("|", "\\|").replace(line.metric, f"`{line.metric}`")  # `~` is not strikethrough
        out.append(f"| {line.question} | {answer} | {finding} |")
    return out
