"""A deceptive and an honest twin: two tiny tabular detectors whose label hinges on one feature.

Pruthi et al. 2020 ("Learning to Deceive with Attention-Based Explanations") train models with an extra loss
that penalises attention on the tokens the decision rests on; the models keep their accuracy and their
attention looks elsewhere. Here the data has ``N_FEATURES`` features uniform in [0, 1] and the label is
``x[KEY] > 0.5``. Both twins are the tool's own ``FeatureTokenTransformer`` (one block: every feature reaches
CLS only through the last layer's attention), trained alike on the same batches; the deceptive one adds
λ(t) · mean over samples and heads of −log(1 − a), with ``a`` the last layer's CLS attention on the key
feature's token, λ rising linearly from 0 to ``PENALTY`` over the first half of training (from the start the
model collapses to chance; with the ramp it first learns the task, then learns to read the key through a
sliver of attention). Each twin takes 200 Adam steps on one thread: about 4 s on this shared, busy
2-core machine.
Measured on the fixture's 200 held-out rows: accuracy 1.000 (honest) and 0.990 (deceptive);
``trust.hidden_importance.attention`` 0.000 and 0.990 [0.975, 1.0] (other seeds of the pair, on 400 rows:
0.010/0.983, 0.007/0.963).

Used by the ``deceptive_twins`` fixture (tests/conftest.py); :func:`write_twin` and :func:`write_twin_csv`
turn a twin into a checkpoint and its data into a CSV for command-line audits.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from detectors.tabular import FeatureTokenTransformer

N_FEATURES = 6
KEY = 2  # the feature the label hinges on; its token is KEY + 1 (token 0 is CLS)
PENALTY = 1.0
STEPS = 200
BATCH = 128
TRAIN_ROWS = 1024
HPARAMS = dict(dim=16, depth=1, heads=2, mlp_dim=32, dropout=0.0)


@dataclass
class Twins:
    honest: FeatureTokenTransformer
    deceptive: FeatureTokenTransformer
    x: torch.Tensor  # held-out rows, in [0, 1]
    y: torch.Tensor
    key: int = KEY


def twin_data(rows: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(rows, N_FEATURES, generator=torch.Generator().manual_seed(seed))
    return x, (x[:, KEY] > 0.5).long()


def key_attention_penalty(attentions: list[torch.Tensor]) -> torch.Tensor:
    """Pruthi et al.'s penalty: mean over samples and heads of −log(1 − last layer's CLS attention on KEY)."""
    mass = attentions[-1][:, :, 0, KEY + 1]
    return -torch.log1p(-mass.clamp(max=1 - 1e-6)).mean()


def train_twin(*, deceptive: bool, seed: int = 0) -> FeatureTokenTransformer:
    """One twin, trained with Adam (lr 5e-3 decaying linearly to 0) for STEPS batches of BATCH rows drawn from
    one stream, on one CPU thread (the same numbers wherever the tests run, and no fight over cores)."""
    x, y = twin_data(TRAIN_ROWS, seed=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FeatureTokenTransformer(N_FEATURES, 2, **HPARAMS)
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0 - step / STEPS)
    batches = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.train()
    try:
        for step in range(STEPS):
            rows = torch.randint(0, TRAIN_ROWS, (BATCH,), generator=batches)
            logits, attentions = model.forward_with_attention(x[rows])
            loss = F.cross_entropy(logits, y[rows])
            if deceptive:
                loss = loss + PENALTY * min(1.0, 2 * step / STEPS) * key_attention_penalty(attentions)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def make_twins() -> Twins:
    x, y = twin_data(200, seed=2)
    return Twins(honest=train_twin(deceptive=False), deceptive=train_twin(deceptive=True), x=x, y=y)


def write_twin_csv(path: Path, x: torch.Tensor, y: torch.Tensor) -> Path:
    """The rows as a CSV with columns f0..f5 and label (values already in [0, 1])."""
    with Path(path).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([f"f{i}" for i in range(N_FEATURES)] + ["label"])
        for row, label in zip(x.tolist(), y.tolist()):
            writer.writerow([f"{value:.6f}" for value in row] + [int(label)])
    return Path(path)


def write_twin(path: Path, model: FeatureTokenTransformer, data_csv: Path) -> Path:
    """A checkpoint of ``model`` that ``audit run --model PATH --data DATA_CSV`` reads: identity scaling
    ([0, 1] features), the training mean 0.5 as the removal baseline."""
    from detectors.checkpoint import save_checkpoint
    from detectors.table import Scaler

    scaler = Scaler(lo=np.zeros(N_FEATURES), hi=np.ones(N_FEATURES))
    metadata = {
        "features": [f"f{i}" for i in range(N_FEATURES)], "classes": ["0", "1"], "positive_class": 1,
        "relevant_features": [f"f{KEY}"], "input_shape": [N_FEATURES], "integer_features": [],
        "scaler": scaler.to_dict(),
        "data": {"name": str(data_csv), "split_seed": 0, "generator_seed": 0, "label_column": "label"},
        "defense": {"name": "none"},
    }
    save_checkpoint(path, model, metadata=metadata, train_mean=np.full(N_FEATURES, 0.5))
    return Path(path)


# -- attention that decides, and attention that is only looked at (issue 25) ------------------------------------------
#
# A user's CLS transformer over feature tokens, audited as a ``python:`` model (one nn.MultiheadAttention, its
# weights captured and edited by hooks). Both twins train on the same batches with an auxiliary loss that points
# CLS's attention at the key feature, so both heat maps look right. The *unused* twin's attention output
# projection is zero and frozen and its prediction is read from the residual feature tokens: the attention runs
# and points at the key, yet decides nothing (uniform attention keeps every prediction). The *used* twin reads
# its prediction from the CLS token after attention, so the decision flows through the attended key.

MHA_DIM, MHA_HEADS = 8, 2


class FeatureEmbedding(torch.nn.Module):
    """Token 0 is CLS; feature i is token i + 1, x_i times a learnt direction plus a learnt position."""

    def __init__(self) -> None:
        super().__init__()
        self.direction = torch.nn.Parameter(torch.randn(N_FEATURES, MHA_DIM))
        self.position = torch.nn.Parameter(torch.randn(N_FEATURES + 1, MHA_DIM) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x[:, :, None] * self.direction + self.position[1:]
        return torch.cat([self.position[:1].expand(len(x), 1, MHA_DIM), features], dim=1)


class MultiheadTwin(torch.nn.Module):
    def __init__(self, *, used: bool) -> None:
        super().__init__()
        self.used = used
        self.embed = FeatureEmbedding()
        self.attn = torch.nn.MultiheadAttention(MHA_DIM, MHA_HEADS, batch_first=True)
        if not used:
            with torch.no_grad():
                self.attn.out_proj.weight.zero_()
                self.attn.out_proj.bias.zero_()
            self.attn.out_proj.requires_grad_(False)
        width = MHA_DIM if used else MHA_DIM * N_FEATURES
        self.head = torch.nn.Sequential(torch.nn.Linear(width, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

    def logits_and_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.embed(x)
        mixed, weights = self.attn(tokens, tokens, tokens, need_weights=True, average_attn_weights=False)
        residual = tokens + mixed
        read = residual[:, 0] if self.used else residual[:, 1:].flatten(1)
        return self.head(read), weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_and_attention(x)[0]


def train_multihead_twin(*, used: bool, seed: int = 0) -> MultiheadTwin:
    """As :func:`train_twin`, with the auxiliary loss mean over samples and heads of −log(CLS attention on the key
    feature) at full weight from the first step."""
    x, y = twin_data(TRAIN_ROWS, seed=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MultiheadTwin(used=used)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0 - step / STEPS)
    batches = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.train()
    try:
        for _ in range(STEPS):
            rows = torch.randint(0, TRAIN_ROWS, (BATCH,), generator=batches)
            logits, weights = model.logits_and_attention(x[rows])
            pointing = -torch.log(weights[:, :, 0, KEY + 1].clamp(min=1e-6)).mean()
            loss = F.cross_entropy(logits, y[rows]) + pointing
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def make_unused() -> MultiheadTwin:
    """The factory ``audit run --model python:tests/twins.py:make_unused`` calls (weights from --weights)."""
    return MultiheadTwin(used=False)


def make_used() -> MultiheadTwin:
    return MultiheadTwin(used=True)
