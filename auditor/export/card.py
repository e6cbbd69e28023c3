"""An audit as a section of a Hugging Face model card (``audit card DIR [--into README.md]``): the
``model-index`` metadata (task, data set, metrics with their names, values and the attack and budget that
produced them) as YAML front matter, then a short Markdown summary: the robustness headline, the trust
verdict and a link to the report.

The metadata is built and checked by ``huggingface_hub``'s own ``EvalResult`` and ``ModelCard`` (the ``hf``
extra), so what it writes is what the Hub reads. Merging into an existing card keeps its metadata and its
text: only this tool's results in ``model-index`` and the section between its two markers are replaced.
"""

from __future__ import annotations

import os
from pathlib import Path

from auditor.metrics import MetricValue
from auditor.report.outputs import write_atomically
from auditor.verdict import panel_markdown, panel_verdict
from detectors.errors import BadInputError

SOURCE = "attention-audit"
START = "<!-- attention-audit:start -->"
END = "<!-- attention-audit:end -->"
TASKS = {"tabular": "tabular-classification", "image": "image-classification", "text": "text-classification",
         "sequence": "time-series-classification"}
HEADLINE_NORMS = ("linf", "l2")  # the worst cases the card's summary states


def eval_results(document: dict, report_link: str) -> list:
    """``model-index`` results: the clean detection metrics and robust accuracy under each attack and budget,
    their source the audit's report."""
    EvalResult = _hub().EvalResult
    data = document["data"]
    kind = data.get("input_kind", "tabular")
    budget = "budget" if kind == "text" else "eps"  # text: tokens changed, or embedding-pgd's eps
    common = {"task_type": TASKS.get(kind, f"{kind}-classification"), "dataset_type": data["name"],
              "dataset_name": data["name"], "dataset_split": data.get("split"), "source_name": SOURCE,
              "source_url": report_link}
    results = []
    for name, entry in document["metrics"].items():
        group, _, rest = name.partition(".")
        if group == "clean":
            results.append(EvalResult(metric_type=rest, metric_value=entry["value"], metric_name=name, **common))
        elif name.startswith("robust.accuracy.") and "@" in name:
            attack, _, eps = name.removeprefix("robust.accuracy.").partition("@")
            results.append(EvalResult(metric_type="robust_accuracy", metric_value=entry["value"], metric_name=name,
                                      metric_args={"attack": attack, budget: float(eps)}, **common))
    return results


def summary_markdown(document: dict, report_link: str) -> str:
    """The card's section: verdict, robustness headline, trust verdict, link to the report, between markers."""
    from auditor.catalogue.attacks import NORM_LABELS, WORST

    metrics = {name: MetricValue.from_dict(entry) for name, entry in document["metrics"].items()}
    gates = document.get("gates", [])
    data = document["data"]
    lines = [START, f"## Robustness and attention audit ({SOURCE} {document.get('tool', {}).get('version', '')})",
             "",
             f"Audited on {data['n_samples']} samples of {data['name']} ({data.get('split', 'given')} rows): "
             f"**{'PASSED' if document['passed'] else 'FAILED'}**, {sum(g['passed'] for g in gates)}/{len(gates)} "
             f"gates of the policy ({document.get('policy', {}).get('source', 'default')}) passed.", ""]
    clean = metrics.get("clean.accuracy")
    for worst, norm in ((WORST[norm], NORM_LABELS[norm].name) for norm in HEADLINE_NORMS):
        points = sorted((float(name.split("@", 1)[1]), value) for name, value in metrics.items()
                        if name.startswith(f"robust.accuracy.{worst}@"))
        if points:
            start = f"clean {_value(clean)} → " if clean is not None else ""
            cells = " → ".join(f"{eps:g}: {_value(value)}" for eps, value in points)
            lines += [f"Robust accuracy, worst case over every {norm} evasion attack, by budget: {start}{cells}.", ""]
    # the verdict the audit's own gates judged, as its summary.md and report show it
    verdict = panel_verdict(metrics, document.get("skipped", {}), gates)
    lines += [*panel_markdown(verdict), "", f"Full report: [report.html]({report_link}).", END]
    return "\n".join(lines) + "\n"


def render_card(folder: Path, *, into: Path | None = None) -> str:
    """The card section for the audit in ``folder`` (front matter, then Markdown); with ``into``, merged into
    that model card (written in place) and the merged card returned."""
    document = _document(folder)
    hub = _hub()
    report = (folder / "report.html").resolve()
    link = os.path.relpath(report, into.resolve().parent) if into is not None else str(folder / "report.html")
    link = Path(link).as_posix()
    results = eval_results(document, link)
    section = summary_markdown(document, link)
    model_name = _model_name(document)
    if into is None or not into.exists():
        card = hub.ModelCard(f"---\n{hub.ModelCardData(model_name=model_name, eval_results=results).to_yaml()}\n"
                             f"---\n{section}")
    else:
        try:
            card = hub.ModelCard.load(into)
        except (ValueError, TypeError, OSError) as error:
            raise BadInputError(f"--into {str(into)!r} is not a readable model card ({error})") from None
        kept = [r for r in (card.data.eval_results or []) if r.source_name != SOURCE]
        card.data.eval_results = kept + results
        card.data.model_name = card.data.model_name or model_name
        card.text = _merged_text(card.text, section)
    if into is not None:
        write_atomically(into.parent, {into.name: str(card).encode("utf-8")})
    return str(card)


def _merged_text(text: str, section: str) -> str:
    start, end = text.find(START), text.find(END)
    if start >= 0 and end > start:
        return text[:start] + section.rstrip("\n") + text[end + len(END):]
    return text.rstrip("\n") + ("\n\n" if text.strip() else "") + section


def _model_name(document: dict) -> str:
    from auditor.export.mlflow_runs import experiment_name

    return experiment_name(str(document["model"]["path"]))


def _document(folder: Path) -> dict:
    from auditor.report.compare import load_audit

    return load_audit(folder, folder.name).document


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise BadInputError("audit card needs the hf extra: pip install 'attention-audit[hf]'") from None
    return huggingface_hub


def _value(value: MetricValue) -> str:
    interval = f" [{value.ci95[0]:.3g}, {value.ci95[1]:.3g}]" if value.ci95 else ""
    return f"**{value.value:.3g}**{interval}"
