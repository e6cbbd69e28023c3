"""Can attention be trusted as an explanation of this detector? The verdict and its panel, as plain data.

The verdict is the conjunction of four necessary conditions, each answered from one metric of the table and
its 95% bootstrap interval (never from point values alone):

1. ``used`` — is attention used at all? ``sanity.uniform_attention.prediction_kept`` (Wiegreffe & Pinter
   2019): fail when at least ``UNIFORM_KEPT_LIMIT`` (95%) of predictions survive uniform attention (attention
   does not drive this model, so heat maps of it explain little); pass when the interval's upper end is below
   it; unclear otherwise.
2. ``beats-chance`` — is it more faithful than chance by a stated minimum effect?
   ``faithfulness.deletion_gain.attention`` (1 - attention's deletion AUC / the mean deletion AUC of 8 random
   rankings of the same sample): pass when the interval's lower end is at or above ``MIN_DELETION_GAIN``
   (0.1: removing attention's top features lowers the area under the prediction's curve by at least a tenth
   of what random removal orders leave), fail when its upper end is below it, unclear otherwise. An interval
   merely above 0 is not enough: a text audit passed on a deletion-AUC difference of 0.009.
3. ``survives-randomisation`` — ``sanity.mprt.attention`` (Adebayo et al. 2018), the one MPRT rule
   :func:`mprt_verdict`: pass when the upper end is below ``MPRT_PASS_BELOW``, fail when the lower end is at
   or above it, unclear otherwise.
4. ``hides-nothing`` — does it not hide important inputs? ``trust.hidden_importance.attention`` (Pruthi et al.
   2020): fail when the lower end lies above ``HIDDEN_IMPORTANCE_LIMIT`` (for most samples the input erasure
   shows matters most gets less than a uniform share of attention), pass when the upper end lies below it,
   unclear otherwise.

:func:`trust_verdict` answers "yes" when every condition it is asked about passes, "no" when one fails, and
"not established" otherwise (a condition unclear, or its metric not run: the finding says what to run).
The panel (:func:`trust_panel`) shows these four lines first, then two lines of further evidence that the
verdict does not rest on (references disagree with each other too, Neely et al. 2022, so agreeing less than
they do is no proof of an unfaithful explanation):

5. Is it close to the best reference? ``faithfulness.deletion_auc_diff.attention~REF`` for the counted
   reference with the lowest difference (the most faithful one): fail when the interval lies below 0, pass
   otherwise.
6. Does it agree with the references beyond the noise floor? ``agreement.kendall_tau_vs_floor.attention``:
   fail when the interval lies below 0, pass otherwise.

A reference explainer counts only where it beats chance itself (the lower end of its
``faithfulness.deletion_gain`` interval above 0); lines 5 and 6 answer "not established" where no reference
(line 6: not both) counts. A line whose metric did not run says so (``not run``, with the reason when one is
known). A metric without an interval can answer NO or unclear from its value, never yes: a point is no
evidence, as an interval gate on it fails.

The default policy's trust gate reads :func:`trust_verdict` (``auditor.gates``), and so does the panel: the
exit code and the panel cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from auditor.metrics import AGREEMENT_REFERENCES, MIN_INTERVAL_ROWS, MPRT_PASS_BELOW, MetricValue

TITLE = "Can attention be trusted as an explanation of this detector?"
UNIFORM_KEPT_LIMIT = 0.95
MIN_DELETION_GAIN = 0.1
HIDDEN_IMPORTANCE_LIMIT = 0.5
STATUSES = ("pass", "fail", "unclear", "not run", "not established")
ANSWERS = ("yes", "no", "not established")
GAIN = "faithfulness.deletion_gain.{}"
CONDITIONS = ("used", "beats-chance", "survives-randomisation", "hides-nothing")
# what to run when a condition's metric did not run
RUN_HINTS = {
    "used": "the uniform-attention test needs attention the tool can edit: a built-in detector, "
            "nn.MultiheadAttention or an hf: model",
    "beats-chance": "add attention to --explainers and deletion_gain to --faithfulness-metrics",
    "survives-randomisation": "add attention to --explainers",
    "hides-nothing": "add attention to --explainers",
}


@dataclass(frozen=True)
class TrustLine:
    """One question of the panel: its answer (``status``, one of STATUSES), the sentence a reader sees, the
    metric it rests on (the report links to it) and, for a necessary condition of the verdict, its name."""

    question: str
    status: str
    finding: str
    metric: str
    value: float | None = None
    ci95: tuple[float, float] | None = None
    condition: str | None = None


@dataclass(frozen=True)
class TrustVerdict:
    """``answer`` (one of ANSWERS) over ``conditions``; ``finding`` says why, and what to run where a condition
    did not; ``lines`` is the whole panel."""


    answer: str
    finding: str
    conditions: tuple[str, ...]
    lines: tuple[TrustLine, ...]
    gated: bool = True  # whether the policy's trust gate judged it (a policy of one's own may have none)


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


def _not_run(question: str, metric: str, skipped: dict[str, str], condition: str | None = None) -> TrustLine:
    why = skipped.get(metric)
    return TrustLine(question, "not run", f"Did not run{': ' + why if why else ' in this audit'}.", metric,
                     condition=condition)


def _line(question: str, status: str, finding: str, metric: str, value: MetricValue,
          condition: str | None = None) -> TrustLine:
    if status == "pass" and value.ci95 is None:  # an interval gate fails without one; so does a condition
        status, finding = "unclear", "Unclear: no 95% interval to read (a point value is no evidence)"
    elif status == "pass" and value.n is not None and value.n < MIN_INTERVAL_ROWS:
        # the same rule as an interval gate's: a bootstrap of a handful of rows is as narrow as the rows are alike
        status, finding = "unclear", (f"Unclear: too few samples (n={value.n}) for a 95% interval, at least "
                                      f"{MIN_INTERVAL_ROWS} needed")
    return TrustLine(question, status, f"{finding} ({_numbers(metric, value)}).", metric, value.value,
                     tuple(value.ci95) if value.ci95 is not None else None, condition)


def trust_panel(metrics: dict[str, MetricValue], skipped: dict[str, str] | None = None) -> list[TrustLine]:
    """The six lines of the panel, the four necessary conditions first, from a metrics table."""
    skipped = skipped or {}
    return [_used(metrics, skipped), _chance(metrics, skipped), _randomisation(metrics, skipped),
            _hidden(metrics, skipped), _best_reference(metrics, skipped), _noise_floor(metrics, skipped)]


def trust_verdict(metrics: dict[str, MetricValue], skipped: dict[str, str] | None = None,
                  conditions: tuple[str, ...] = CONDITIONS) -> TrustVerdict:
    """The verdict over ``conditions`` (a policy may gate fewer than the four), read from the panel's lines."""
    lines = tuple(trust_panel(metrics, skipped))
    judged = [line for line in lines if line.condition in conditions]
    failed = [line for line in judged if line.status == "fail"]
    open_ = [line for line in judged if line.status != "pass"]
    if failed:
        answer = "no"
        finding = "No: " + "; ".join(f"{line.condition} fails ({line.metric})" for line in failed) + "."
    elif open_:
        answer = "not established"
        finding = "Not established: " + "; ".join(_open_reason(line, skipped or {}) for line in open_) + "."
    else:
        answer = "yes"
        finding = "Yes: " + ", ".join(conditions) + " hold."
    return TrustVerdict(answer, finding, tuple(conditions), lines)


def panel_verdict(metrics: dict[str, MetricValue], skipped: dict[str, str], gates: list[dict]) -> TrustVerdict:
    """The verdict the panel shows, from results.json's gates: over the conditions the policy's trust gate judged,
    or over all four (``gated`` False) where the policy has no trust gate."""
    gate = next((gate for gate in gates if gate.get("kind") == "verdict"), None)
    verdict = trust_verdict(metrics, skipped, tuple(gate["conditions"]) if gate else CONDITIONS)
    return verdict if gate else replace(verdict, gated=False)


def _open_reason(line: TrustLine, skipped: dict[str, str]) -> str:
    if line.status == "unclear":
        why = "has too few samples" if line.finding.startswith("Unclear: too few samples") else \
            "is missing" if line.finding.startswith("Unclear: no 95% interval") else "straddles its limit"
        return f"{line.condition} is unclear (the interval of {line.metric} {why}: audit more rows)"
    why = skipped.get(line.metric)
    return f"{line.condition} did not run ({line.metric}{': ' + why if why else ''}; {RUN_HINTS[line.condition]})"


def _used(metrics, skipped) -> TrustLine:
    question, metric, condition = "Is attention used at all?", "sanity.uniform_attention.prediction_kept", "used"
    if metric not in metrics:
        return _not_run(question, metric, skipped, condition)
    value = metrics[metric]
    if value.value >= UNIFORM_KEPT_LIMIT:
        return _line(question, "fail", f"No: at least {UNIFORM_KEPT_LIMIT:.0%} of predictions survive uniform "
                     "attention, so attention does not drive this model and heat maps of it explain little",
                     metric, value, condition)
    if _ends(value)[1] < UNIFORM_KEPT_LIMIT:
        return _line(question, "pass", "Yes: replacing attention by uniform weights changes the predictions",
                     metric, value, condition)
    return _line(question, "unclear", f"Unclear: the share of predictions kept under uniform attention may reach "
                 f"{UNIFORM_KEPT_LIMIT:.0%}", metric, value, condition)


def _chance(metrics, skipped) -> TrustLine:
    question = f"Is it more faithful than chance, by a deletion gain of at least {MIN_DELETION_GAIN:g}?"
    metric, condition = GAIN.format("attention"), "beats-chance"
    if metric not in metrics:
        return _not_run(question, metric, skipped, condition)
    value = metrics[metric]
    low, high = _ends(value)
    if low >= MIN_DELETION_GAIN:
        return _line(question, "pass", "Yes: removing attention's top features lowers the prediction clearly sooner "
                     "than removing features in a random order", metric, value, condition)
    if high < MIN_DELETION_GAIN:
        return _line(question, "fail", f"No: attention's deletion gain over random orders is below "
                     f"{MIN_DELETION_GAIN:g}", metric, value, condition)
    return _line(question, "unclear", f"Unclear: the interval of attention's deletion gain contains "
                 f"{MIN_DELETION_GAIN:g}", metric, value, condition)


def counted_references(metrics: dict[str, MetricValue]) -> list[str]:
    """The reference explainers that beat chance themselves: the lower end of their deletion gain above 0."""
    return [reference for reference in AGREEMENT_REFERENCES
            if GAIN.format(reference) in metrics and _ends(metrics[GAIN.format(reference)])[0] > 0]


def _no_yardstick(question: str, metric: str, references: list[str], metrics) -> TrustLine:
    gains = ", ".join(f"{reference} {_numbers(GAIN.format(reference), metrics[GAIN.format(reference)])}"
                      if GAIN.format(reference) in metrics else f"{reference}: {GAIN.format(reference)} not computed"
                      for reference in references)
    return TrustLine(question, "not established", f"Not established: a reference counts only where it beats chance "
                     f"itself (its deletion gain's interval above 0), and here {gains}.", metric)


def _best_reference(metrics, skipped) -> TrustLine:
    question = "Is it close to the best reference explainer?"
    candidates = [reference for reference in AGREEMENT_REFERENCES
                  if f"faithfulness.deletion_auc_diff.attention~{reference}" in metrics]
    if not candidates:
        return _not_run(question, f"faithfulness.deletion_auc_diff.attention~{AGREEMENT_REFERENCES[0]}", skipped)
    counted = [reference for reference in counted_references(metrics) if reference in candidates]
    if not counted:
        return _no_yardstick(question, f"faithfulness.deletion_auc_diff.attention~{candidates[0]}", candidates,
                             metrics)
    diffs = {reference: metrics[f"faithfulness.deletion_auc_diff.attention~{reference}"] for reference in counted}
    best = min(diffs, key=lambda reference: (diffs[reference].value, reference))
    metric, value = f"faithfulness.deletion_auc_diff.attention~{best}", diffs[best]
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
    uncounted = [reference for reference in AGREEMENT_REFERENCES if reference not in counted_references(metrics)]
    if uncounted:  # the floor is the references' agreement with each other: both must be references
        return _no_yardstick(question, metric, uncounted, metrics)
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
    question, metric, condition = "Does it pass the randomisation check?", "sanity.mprt.attention", \
        "survives-randomisation"
    if metric not in metrics:
        return _not_run(question, metric, skipped, condition)
    value = metrics[metric]
    status = mprt_verdict(value)
    finding = {"pass": f"Yes: once the model's weights are randomised the explanation keeps a rank correlation "
                       f"below {MPRT_PASS_BELOW:g} with the trained model's",
               "fail": f"No: the explanation keeps a rank correlation of at least {MPRT_PASS_BELOW:g} with the "
                       "trained model's after every weight is randomised, so it barely depends on what the model "
                       "learnt",
               "unclear": f"Unclear: the interval of the rank correlation after randomisation contains "
                          f"{MPRT_PASS_BELOW:g}"}[status]
    return _line(question, status, finding, metric, value, condition)


def _hidden(metrics, skipped) -> TrustLine:
    question, metric, condition = "Does it not hide important inputs?", "trust.hidden_importance.attention", \
        "hides-nothing"
    if metric not in metrics:
        return _not_run(question, metric, skipped, condition)
    value = metrics[metric]
    low, high = _ends(value)
    if low > HIDDEN_IMPORTANCE_LIMIT:
        return _line(question, "fail", "No: for most samples the input that erasure shows matters most gets less "
                     "than a uniform share of attention, so attention hides what matters", metric, value, condition)
    if high < HIDDEN_IMPORTANCE_LIMIT:
        return _line(question, "pass", "Yes: for most samples attention gives the input that erasure shows "
                     "matters most at least a uniform share", metric, value, condition)
    return _line(question, "unclear", f"Unclear: the interval of the share of samples whose most important input "
                 f"attention hides contains {HIDDEN_IMPORTANCE_LIMIT:g}", metric, value, condition)


ANSWER_WORDS = {"pass": "yes", "fail": "**NO**", "unclear": "unclear", "not run": "not run",
                "not established": "not established"}


def panel_markdown(verdict: TrustVerdict) -> list[str]:
    """The verdict and its panel as Markdown lines for summary.md."""
    gated = "" if verdict.gated else " (this policy does not gate it)"
    out = [f"### {TITLE}", "", f"**Verdict: {verdict.answer}**{gated}. {verdict.finding}", "",
           "| Question | Necessary condition | Answer | Finding |", "| --- | --- | --- | --- |"]
    for line in verdict.lines:
        finding = line.finding.replace("|", "\\|").replace(line.metric, f"`{line.metric}`")  # `~` is not strikethrough
        necessary = f"`{line.condition}`" + ("" if line.condition in verdict.conditions else " (not gated)") \
            if line.condition else "no (further evidence)"
        out.append(f"| {line.question} | {necessary} | {ANSWER_WORDS[line.status]} | {finding} |")
    return out
