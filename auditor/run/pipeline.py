"""One audit: stream the rows through the stages (``auditor.stages.order``), gather every shard's row tables,
aggregate them once into the metrics table and the report's data.

Every stage reads the same detector and data and writes named numbers into one flat table; gates, JSON,
report and comparisons all read that table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attacks import Domain, attack_class
from attacks.text import EMBEDDING_NORMS
from auditor.stages.clean import ENSEMBLE_ACCURACY, clean_metrics, detection_data
from auditor.run.config import AuditConfig
from auditor.stages.faithfulness_metrics import REMOVAL_KINDS
from auditor.stages.localisation import relevant_mask_of
from auditor.stages.masking import CHECK_METRICS, evaluate_checks, evaluate_text_checks, verdict
from auditor.run.memory import MemoryPlan, plan_memory
from auditor.metrics import Bootstrap, MetricValue, format_eps
from auditor.run.persample import aggregate
from auditor.report.findings import AuditFindings
from auditor.run.findings import (GALLERY_SIZE, adversarial_gallery, gallery, hidden_importance_view,
                                 pick_attention_examples, pick_flipped)
from auditor.catalogue.attacks import curve_names, robustness_curves
from auditor.stages.sanity import SanityOutcome, mean_sanity_curves
from auditor.run.shard import RowTable, Shard, concatenate
from auditor.stages.base import Block
from auditor.stages.order import STAGES, check_produced
from auditor.run.subject import Subject
from auditor.run.tensorfile import Layout, RowWriter
from detectors.categorical import saved_rows
from detectors.base import Detector
from detectors.table import Dataset
from detectors.errors import BadInputError
from detectors.inputs import removal_baseline
from detectors.inputs.text import TokenIds

def run_audit(subject: Subject, config: AuditConfig, *, progress: bool = True, shard: Shard | None = None,
              save_to: dict[str, Path] | None = None) -> AuditFindings | None:
    """Audit ``subject``: this process's shard of the rows is streamed through the stages in chunks of
    whole attack chunks; the per-sample tables of every shard are gathered to rank 0, which aggregates
    them once over all rows (and returns the result; other ranks return None). ``save_to``: for the
    row-table groups that ``--save-adversarial``/``--save-explanations`` keep, the file laid out by
    :func:`saved_layouts` (``auditor.run.tensorfile.create``) that this rank writes its rows into, block by
    block, instead of gathering them."""
    shard = shard or Shard()
    detector, data, device = subject.detector, subject.data, subject.device
    detector.eval()
    if subject.deterministic is False:  # the model's own draws come from torch's global stream: seeded
        torch.manual_seed(config.seed)
    x = torch.as_tensor(data.x, device=device)
    y = torch.as_tensor(data.y, device=device)
    if x.shape[1:] != torch.Size(detector.input_shape):
        raise BadInputError(
            f"expected x of shape (N, {', '.join(map(str, detector.input_shape))}), got {tuple(x.shape)}"
        )
    baseline = removal_baseline(config.removal_baseline or subject.kind.removal_baselines[0], x, subject.baseline)
    relevant = relevant_mask_of(data, len(x))
    if subject.token_domain is not None:  # text: token substitutions within the tokeniser's rules
        domain = subject.token_domain
    else:
        domain = subject.domain if subject.domain is not None else Domain.unit(detector.input_shape)
        config = config.with_l2_grid(int(domain.mutable.sum()))
    attacks = config.build_attacks()
    plan = plan_memory(detector, x[:2], budget_gb=config.max_memory_gb, batch_size=config.batch_size,
                       per_row_bytes=_row_bytes(x, config))
    if set(save_to or {}) != set(saved_layouts(config, data)):
        raise ValueError(f"the configuration saves {sorted(saved_layouts(config, data))}, but files were given for "
                         f"{sorted(save_to or {})}")
    timing: dict[str, float] = {}
    tokens = TokenIds.of(subject.tokenizer) if subject.tokenizer is not None else None
    writers: dict[str, RowWriter] = {}
    try:
        writers.update({group: _open_saved(path, shard) for group, path in (save_to or {}).items()})
        parts = []
        rows = torch.as_tensor(shard.rows(len(x)), device=device)
        for start in range(0, len(rows), plan.stream_rows):
            index = rows[start:start + plan.stream_rows]
            # a per-sample removal baseline (blur) is sliced to the block's rows
            block_baseline = baseline[index] if baseline.shape == x.shape else baseline
            block_relevant = relevant[index.cpu().numpy()] if relevant is not None else None
            table = audit_rows(detector, x[index], y[index], index, config, attacks, domain=domain,
                               baseline=block_baseline, relevant=block_relevant, positive=data.positive_class,
                               plan=plan, timing=timing, progress=progress, n_rows=len(x), tokens=tokens)
            for group, writer in writers.items():  # a block's rows are consecutive: written at the first one's place
                writer.write(int(index[0]), saved_rows(table.pop(group), data.feature_names, data.categories))
            parts.append(table)
        local: RowTable | Exception = concatenate(parts)
    except Exception as error:  # sent to rank 0 instead of the rows, so no rank waits forever
        local = error
    finally:  # closed before the gather: rank 0 renames the files once every rank is past it
        for writer in writers.values():
            writer.close()
    tables = shard.gather(local)
    if tables is None:
        return None
    return summarise(tables, subject, config, attacks, timing=timing, plan=plan)


# the files --save-adversarial / --save-explanations write, by the row-table group they hold
SAVED_FILES = {"adversarial": "adversarial.safetensors", "explanations": "explanations.safetensors"}


def saved_layouts(config: AuditConfig, data: Dataset) -> dict[str, Layout]:
    """For each group of :data:`SAVED_FILES` the configuration asks for, every tensor its file holds, with
    dtype and full shape (one row per audited sample, in the data's row order): known before the audit, so
    the file is laid out first and filled block by block."""
    n, shape = len(data), tuple(data.x.shape[1:])
    x, y = (data.x.dtype, (n, *shape)), (data.y.dtype, (n,))
    layouts = {}
    if config.save_adversarial:
        from auditor.catalogue.attacks import TARGETED_SUFFIX

        # text: the substitution attacks' messages (token ids); embedding-pgd's points are no message
        kept = [attack for attack in config.attacks
                if attack_class(attack).norm not in EMBEDDING_NORMS and config.runs(attack)]
        targeted = [attack for attack in kept if config.target_class is not None and attack_class(attack).targetable]
        layouts["adversarial"] = {"x": x, "y": y, **{f"adv/{attack}@{format_eps(eps)}": x for attack in kept
                                                     for eps in config.grid(attack_class(attack).norm)},
                                  **{f"adv/{attack}{TARGETED_SUFFIX}@{format_eps(eps)}": x for attack in targeted
                                     for eps in config.grid(attack_class(attack).norm)}}
    if config.save_explanations:
        # attributions are float32 (token ids are int64, an attribution of them is not)
        attribution = (np.dtype(np.float32), (n, *shape))
        layouts["explanations"] = {"x": x, "y": y, "pred": (np.dtype(np.int64), (n,)),
                                   **{f"attr/{name}": attribution for name in config.explainers}}
    return layouts


def _open_saved(path: Path, shard: Shard) -> RowWriter:
    try:
        return RowWriter(path)
    except FileNotFoundError:
        raise BadInputError(f"rank {shard.rank} cannot open {path}, which rank 0 created: with "
                            "--save-adversarial/--save-explanations a run across machines needs --out on a "
                            "filesystem every machine shares") from None


def _row_bytes(x: torch.Tensor, config: AuditConfig) -> int:
    """What the stages hold per streamed row: attributions per explainer, adversarial rows (written to their
    file block by block when saved, so one block's worth), curves."""
    one = x[0].numel() * 4
    runs = len(config.attacks) * (2 if config.target_class is not None else 1)
    kept = runs * max(len(config.eps), len(config.eps_l2 or ())) if config.save_adversarial else 1
    return one * (len(config.explainers) + kept + 2) + len(config.explainers) * 2 * 8 * 66


# groups of a row table that are not one entry per row: per block, re-picked or merged on rank 0
PER_BLOCK_GROUPS = ("gallery", "fractions", "sanity_labels", "notes", "attention_examples", "flipped")


def audit_rows(detector: Detector, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor, config: AuditConfig,
               attacks: dict, *, domain: Domain, baseline: torch.Tensor, relevant: np.ndarray | None,
               positive: int | None, plan: MemoryPlan, timing: dict[str, float], progress: bool,
               n_rows: int | None = None, tokens: TokenIds | None = None) -> RowTable:
    """Every stage of :data:`auditor.stages.order.STAGES`, in order, on a block of rows with global indices ``index``
    (a multiple of the attack chunk from its start). ``baseline`` is the removal baseline, (*shape) or the
    block's rows (n, *shape); ``relevant`` the block's rows of the localisation ground truth; ``n_rows`` how many
    rows the whole audit has (default: this block is all of them); ``tokens`` a text tokeniser's special ids.
    Returns the block's row table:
    ``index``, ``proba`` (clean probabilities), ``per_sample`` (metric name -> values, aggregated later),
    ``curves`` (name -> (rows, points)), ``sanity_curves`` (explainer -> (rows, cascade steps)), ``masking``
    (the masking checks' own attacks), ``trust`` (the erasure rows) and, when asked, ``adversarial`` /
    ``explanations`` tensors. The groups in :data:`PER_BLOCK_GROUPS` are not one entry per row: ``gallery``
    holds the block's first correct and misclassified rows (global ``index`` and attributions),
    ``attention_examples`` and ``flipped`` the block's candidates for the report (global indices; re-picked on
    rank 0), ``fractions`` and ``sanity_labels`` one row per block (the curves' x-axes, the same in every block),
    ``notes`` the stages' reasons for skipped metrics."""
    block = Block(detector=detector, x=x, y=y, index=index, config=config, attacks=attacks, domain=domain,
                  baseline=baseline, relevant=relevant, positive=positive, plan=plan, progress=progress,
                  n_rows=len(x) if n_rows is None else n_rows, timing=timing, tokens=tokens)
    block.table["rows"] = {"index": block.index_np}
    for stage in STAGES:
        stage.timed_run(block)
    table = block.table
    table["notes"] = {name: np.asarray([why], dtype=object) for name, why in block.notes.items()}
    table["per_sample"] = block.per_sample
    pred, attributions = block.pred, block.attributions
    correct = (pred == y).cpu().numpy()
    chosen = np.concatenate([np.flatnonzero(correct)[:GALLERY_SIZE], np.flatnonzero(~correct)[:GALLERY_SIZE]])
    table["gallery"] = {"index": block.index_np[chosen],
                        **{name: a[chosen].cpu().numpy() for name, a in attributions.items()}}
    if config.save_explanations:
        table["explanations"] = {"x": x.cpu().numpy(), "y": y.cpu().numpy(), "pred": pred.cpu().numpy(),
                                 **{f"attr/{k}": v.cpu().numpy() for k, v in attributions.items()}}
    return table


def summarise(tables: RowTable, subject: Subject, config: AuditConfig, attacks: dict, *,
              timing: dict[str, float], plan: MemoryPlan) -> AuditFindings:
    """Rank 0: the gathered rows of every shard become metrics, intervals, checks and report data (from what
    the stages kept: no model is run here)."""
    data = subject.data
    detector = subject.detector
    n_classes = detector.n_classes
    order = np.argsort(tables["rows"]["index"], kind="stable")
    if not np.array_equal(tables["rows"]["index"][order], np.arange(len(data))):
        raise RuntimeError("the gathered shards do not cover every audited row exactly once")
    rows = {group: {name: values[order] for name, values in table.items()}
            for group, table in tables.items() if group not in PER_BLOCK_GROUPS}
    bootstrap = Bootstrap(len(data), seed=config.seed)
    proba_np = rows["rows"]["proba"]
    metrics, skipped = clean_metrics(data.y, proba_np, positive=data.positive_class, n_classes=n_classes,
                                     bootstrap=bootstrap)
    confusion = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(confusion, (data.y, proba_np.argmax(1)), 1)
    if config.randomised_model:  # clean.accuracy is each draw's own, from the per-sample table (auditor.stages.clean)
        metrics[ENSEMBLE_ACCURACY] = metrics.pop("clean.accuracy")
    sample_metrics, sample_skipped = aggregate(rows.get("per_sample", {}), bootstrap)
    metrics.update(sample_metrics)
    skipped.update(sample_skipped)
    skipped.update({name: str(values[0]) for name, values in tables.get("notes", {}).items()})
    checks = []
    if config.masking_checks and ("masking" in rows or config.text):  # text: no rows where hotflip did not run
        evaluate = evaluate_text_checks if config.text else evaluate_checks
        checks = evaluate(metrics, rows.get("masking", {}), attacks, config.grids(), n=len(data))
        for kind, name in CHECK_METRICS.items():
            value = verdict(checks, kind)
            if value is not None:
                metrics[name] = MetricValue(value)
            else:
                skipped[name] = f"none of the {kind} checks could run with these attacks and eps values"
    check_produced(config, binary=n_classes == 2, metrics=metrics, skipped=skipped)
    fractions = {name: values[0].tolist() for name, values in tables.get("fractions", {}).items()}
    removal = {}
    for name in config.explainers:
        kinds = [kind for kind in REMOVAL_KINDS if f"{kind}.{name}" in rows.get("curves", {})]
        if kinds:  # only the curves the chosen metrics need were computed
            removal[name] = {"fractions": fractions[f"{kinds[0]}.{name}"],
                             **{kind: rows["curves"][f"{kind}.{name}"].mean(0, dtype=np.float64).tolist()
                                for kind in kinds}}
    sanity_labels = tables.get("sanity_labels", {})
    sanity_curves = mean_sanity_curves(SanityOutcome(curves={
        name: ([str(label) for label in sanity_labels[name][0]], values)
        for name, values in rows.get("sanity_curves", {}).items()}))
    flipped = pick_flipped(tables.get("flipped", {}).get("example", []), list(attacks))
    hidden = hidden_importance_view(rows.get("trust", {}), rows["rows"]["index"], data, detector, proba_np)
    result = AuditFindings(
        metrics=metrics, skipped=skipped, timing={k: round(v, 3) for k, v in timing.items()}, n_samples=len(data),
        robustness_curves=robustness_curves(
            metrics, curve_names(list(attacks), config.build_targeted_attacks()),
            config.grids()), removal_curves=removal,
        confusion=confusion.tolist(), gallery=gallery(data, proba_np, tables["gallery"]),
        masking=[c.to_dict() for c in checks],
        sanity_curves=sanity_curves, hidden_importance=hidden,
        detection=detection_data(data.y, proba_np, positive=data.positive_class, class_names=data.class_names),
        attention_examples=pick_attention_examples(tables.get("attention_examples", {}).get("example", []),
                                                   list(attacks)),
        adversarial_gallery=adversarial_gallery(data, proba_np, flipped, metrics, config),
    )
    result.memory = plan.to_dict()
    if subject.tokenizer is not None:
        spell_tokens([*result.gallery, *result.adversarial_gallery], result.attention_examples, subject.tokenizer)
        pad_id = TokenIds.of(subject.tokenizer).pad_id
        for entry in result.hidden_importance:  # the word beside its position's name; 1/L of the message's L tokens
            ids = data.x[entry["index"]]
            word = subject.tokenizer.tokens([ids[data.feature_names.index(entry["token"])]])[0]
            entry["token"] = f"{word} ({entry['token']})"
            entry["uniform"] = 1.0 / max(1, int((ids != pad_id).sum()) - 1)
    return result


def spell_tokens(samples: list, attention_examples: list, tokenizer) -> None:
    """The report's words of each text sample and attention example: its message's tokens after [CLS], up to the
    padding (``tokens``), the clean message's beside an adversarial sample's (``clean_tokens``) and the attacked
    message's beside an attention example's (``adv_tokens``); an adversarial sample's ``changes`` name the
    substituted tokens instead of their ids."""
    pad_id = TokenIds.of(tokenizer).pad_id

    def words(x: list) -> list[str]:
        ids = [int(i) for i in x[1:]]
        return tokenizer.tokens(ids[:ids.index(pad_id)] if pad_id in ids else ids)

    for sample in samples:
        sample.tokens = words(sample.x)
        sample.clean_tokens = words(sample.clean_x) if sample.clean_x else []
        sample.changes = [(position, *tokenizer.tokens([before, after])) for position, before, after in sample.changes]
    for example in attention_examples:
        example.tokens = words(example.x)
        example.adv_tokens = words(example.x_adv) if example.x_adv else []
