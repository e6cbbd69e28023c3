"""Does attention hide what matters? Pruthi et al. 2020, "Learning to Deceive with Attention-Based
Explanations": a model can be trained so that its attention avoids the very tokens its decision rests on.
Erasure shows what the decision rests on; this check asks whether the explainer points there.

``trust.hidden_importance.EXPLAINER``, per sample with predicted class y (the explainers' target):

- erasure importance of a token t (each token that covers at least one input position; CLS covers none and
  is left out): d_t = log p_y(x) - log p_y(x with every input position of t set to the run's removal
  baseline), i.e. feature ablation grouped by the TokenMap, in log-probability so that a saturated softmax
  still ranks the tokens;
- the most erasure-important token t* = argmax_t d_t (ties: the lower token index). The sample counts only
  when d_t* > 0, i.e. some erasure lowers log p_y; otherwise it is NaN;
- the explainer's share of t*: s_t = sum of |attribution| over the token's input positions
  (:func:`auditor.stages.agreement.token_scores`), share_t = s_t / sum_u s_u over the same tokens (NaN when the
  attribution is all zero);
- the value is 1.0 when share_t* < 1 / T (T = the number of such tokens: less than a uniform share of the
  attribution mass), else 0.0.

The metric is the share of counted samples flagged, with the run's bootstrap interval; lower is better.
An honest explainer of a model that relies on one token gives that token far more than 1/T of its mass;
attention trained to avoid it (the deceptive models of Pruthi et al.) gives it almost nothing. The per-sample
token, drop and shares are kept (:class:`TrustOutcome`) so the report can show the samples whose most
important token got the least attention (:func:`worst_samples`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from auditor.stages.agreement import token_scores
from auditor.stages.faithfulness_metrics import masked_probabilities
from auditor.catalogue.specs import TRUST_SPECS as SPECS
from auditor.stages.base import Block, Stage
from detectors.base import TokenMap

METRIC = "trust.hidden_importance"
WORST_SAMPLES = 5
# the explainer whose worst samples the report shows: the first of these that ran
LEAD_EXPLAINERS = ("attention", "rollout", "attention-max", "grad-attention")


@dataclass
class TrustOutcome:
    """``per_sample``: metric name -> (n,) values, NaN where a sample does not count. ``rows``: per sample the
    most erasure-important ``token`` (-1 where none lowers log p_y), its ``drop`` in log p_y and, per
    explainer, ``share/EXPLAINER``: the share of that explainer's attribution mass the token received."""

    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    rows: dict[str, np.ndarray] = field(default_factory=dict)


def input_tokens(token_map: TokenMap) -> np.ndarray:
    """The indices of the tokens that cover at least one input position, ascending (CLS is not among them)."""
    owner = token_map.token_of_input.reshape(-1).long().cpu()
    return torch.nonzero(torch.bincount(owner, minlength=token_map.n_tokens) > 0).flatten().numpy()


def erasure_drops(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, baseline: torch.Tensor,
                  token_map: TokenMap, *, max_batch: int = 16384) -> np.ndarray:
    """(n, T) float64: log p_y(x) - log p_y(x with token t's inputs at the baseline), for each token of
    :func:`input_tokens` in order; ``max_batch`` model inputs per forward pass."""
    owner = token_map.token_of_input.reshape(-1).to(x.device)
    tokens = torch.as_tensor(input_tokens(token_map), device=x.device)
    erase = owner[None, :] == tokens[:, None]  # (T, F): the inputs each token covers
    masks = torch.cat([torch.zeros_like(erase[:1]), erase])  # row 0: nothing erased

    def rows_masks(rows):
        return masks.expand(len(x[rows]), -1, -1)

    log_p = masked_probabilities(model, x, target, baseline, rows_masks, len(masks), max_batch=max_batch,
                                 log=True).numpy()
    return log_p[:, :1] - log_p[:, 1:]


def attribution_shares(attribution: torch.Tensor, token_map: TokenMap) -> np.ndarray:
    """(n, T): each token's share of the attribution's absolute mass over the tokens of :func:`input_tokens`;
    NaN rows where the attribution is all zero."""
    scores = token_scores(attribution, token_map)
    total = scores.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, scores / np.where(total > 0, total, 1.0), np.nan)


def most_important(drops: np.ndarray) -> np.ndarray:
    """(n,) the position (into :func:`input_tokens`) of each sample's largest drop, ties to the lower one;
    -1 where no drop is above 0."""
    top = np.argmax(drops, axis=1)  # the first maximum: the lower token index
    return np.where(drops[np.arange(len(drops)), top] > 0, top, -1) if len(drops) else top


def hidden_importance(top: np.ndarray, shares: np.ndarray, n_tokens: np.ndarray | None = None) -> np.ndarray:
    """(n,) 1.0 where the top token's share is below a uniform share 1/T, 0.0 where not; NaN where there is
    no top token or no share. ``n_tokens`` (n,): each sample's own T (text: its message's tokens)."""
    n = len(shares)
    uniform = 1.0 / (shares.shape[1] if n_tokens is None else np.maximum(n_tokens, 1))
    share = np.where(top >= 0, shares[np.arange(n), np.maximum(top, 0)], np.nan)
    return np.where(np.isfinite(share), (share < uniform).astype(np.float64), np.nan)


def trust_stage(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor,
                attributions: dict[str, torch.Tensor], *, baseline: torch.Tensor,
                max_batch: int = 16384, explained: torch.Tensor | None = None) -> TrustOutcome:
    """``trust.hidden_importance`` of every explainer that ran, per sample. ``target`` is the predicted class;
    ``baseline`` the run's removal baseline, (*shape) or per sample (n, *shape). Deterministic per sample, so
    shards gather to the whole. ``explained`` (text, one token per position): T is each message's own number
    of tokens ([CLS] and padding, never erased, get no share of the attribution)."""
    outcome = TrustOutcome()
    if not attributions:
        return outcome
    token_map = model.token_map
    drops = erasure_drops(model, x, target, baseline, token_map, max_batch=max_batch)
    top = most_important(drops)
    tokens = input_tokens(token_map)
    outcome.rows["token"] = np.where(top >= 0, tokens[np.maximum(top, 0)], -1).astype(np.int64)
    outcome.rows["drop"] = np.where(top >= 0, drops[np.arange(len(drops)), np.maximum(top, 0)], np.nan)
    for name, attribution in attributions.items():
        shares = attribution_shares(attribution, token_map)
        outcome.per_sample[f"{METRIC}.{name}"] = hidden_importance(
            top, shares, None if explained is None else explained.flatten(1).sum(1).cpu().numpy())
        outcome.rows[f"share/{name}"] = np.where(top >= 0, shares[np.arange(len(top)), np.maximum(top, 0)],
                                                 np.nan)
    return outcome


def planned_trust(explainers) -> list[str]:
    """The metric names :func:`trust_stage` writes for these explainers."""
    return [f"{METRIC}.{name}" for name in explainers]


def token_names(token_map: TokenMap, input_names: list[str]) -> dict[int, str]:
    """A readable name per token of :func:`input_tokens`: its input's name when it covers one input, else
    'token t (first … last)' over the names of the inputs it covers."""
    owner = token_map.token_of_input.reshape(-1).cpu().numpy()
    names = {}
    for token in input_tokens(token_map):
        covered = np.flatnonzero(owner == token)
        first, last = input_names[covered[0]], input_names[covered[-1]]
        names[int(token)] = first if len(covered) == 1 else f"token {token} ({first} … {last})"
    return names


def worst_samples(rows: dict[str, np.ndarray], index: np.ndarray, *, explainer: str,
                  n_tokens: int, k: int = WORST_SAMPLES) -> list[dict]:
    """The ``k`` counted samples whose most important token got the smallest share of ``explainer``'s mass
    (ties by global index): global ``index``, ``token``, ``drop``, ``share`` and the ``uniform`` share 1/T."""
    share = rows[f"share/{explainer}"]
    counted = np.flatnonzero(np.isfinite(share))
    order = counted[np.lexsort((index[counted], share[counted]))][:k]
    return [{"index": int(index[i]), "token": int(rows["token"][i]), "drop": float(rows["drop"][i]),
             "share": float(share[i]), "uniform": 1.0 / n_tokens} for i in order]


class TrustStage(Stage):
    name = "trust"
    specs = SPECS

    def planned(self, config, *, binary: bool) -> list[str]:
        return planned_trust(config.explainers)

    def run(self, block: Block) -> None:
        trusted = trust_stage(block.detector, block.x, block.pred, block.attributions, baseline=block.baseline,
                              max_batch=block.plan.forward_batch, explained=block.explained)
        block.per_sample.update(trusted.per_sample)
        if trusted.rows:
            block.table["trust"] = trusted.rows
