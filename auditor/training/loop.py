"""The training loop: AdamW, seeded, early stopping on the validation split, bf16 autocast on CUDA,
DistributedDataParallel under torchrun. ``--resume`` continues from ``<out>.resume.pt``, written beside
``--out`` after every epoch and removed once the final checkpoint is written."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import BatchSampler, DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from auditor.run.shard import Parallel
from auditor.training.config import TrainConfig, TrainSummary
from auditor.training.defenses import DefenseLoss
from detectors.base import Detector
from detectors.table import Splits
from detectors.errors import BadInputError

# rows per evaluation pass. The validation loss, which early stopping compares and so decides the weights kept,
# is summed over 1,024-row passes; the final accuracies on the training and test splits are argmax counts that
# decide nothing, taken in 256-row passes, whose attention activations stay in cache (a text detector's
# training split is counted in half the time of 1,024-row passes).
VALIDATION_BATCH, ACCURACY_BATCH = 1024, 256


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (weight initialisation, dropout, TRADES' start)."""
    torch.manual_seed(seed)


class _WithAttention(nn.Module):
    """``forward`` returns (logits, attentions), so DistributedDataParallel sees every pass that needs gradients."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.detector.forward_with_attention(x)


def resume_path(out_path: Path) -> Path:
    """Where a run writing ``out_path`` keeps its state after every epoch."""
    return out_path.with_name(out_path.name + ".resume.pt")


def train_detector(model: Detector, splits: Splits, config: TrainConfig, *, device: torch.device,
                   progress: bool = True, parallel: Parallel = Parallel(), resume_from: Path | None = None,
                   resume_to: Path | None = None) -> TrainSummary:
    """Train in place; the weights of the epoch with the lowest validation loss are kept."""
    started = time.perf_counter()
    model.to(device)
    cuda = device.type == "cuda"
    train_set = TensorDataset(torch.as_tensor(splits.train.x), torch.as_tensor(splits.train.y),
                              torch.arange(len(splits.train)))
    sampler = DistributedSampler(train_set, num_replicas=parallel.world, rank=parallel.rank, shuffle=True,
                                 seed=config.seed)
    per_rank = max(1, config.batch_size // parallel.world)
    # one tensor index per batch rather than per-row collation: TensorDataset accepts a list of indices
    loader = DataLoader(train_set, batch_size=None, sampler=BatchSampler(sampler, per_rank, drop_last=False),
                        pin_memory=cuda)
    x_val = torch.as_tensor(splits.val.x, device=device)
    y_val = torch.as_tensor(splits.val.y, device=device)

    trained: nn.Module = _WithAttention(model)
    if parallel.world > 1:
        trained = nn.parallel.DistributedDataParallel(trained, device_ids=[device.index] if cuda else None)
    if config.compile:
        trained = torch.compile(trained)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # categorical columns move only by a discrete search, which training-time attacks do not run
    frozen = torch.tensor([name in config.frozen_features or name in splits.train.categories
                           for name in splits.train.feature_names])
    objective = DefenseLoss(config.defense, tuple(model.input_shape), config.seed,
                            frozen=frozen.reshape(tuple(model.input_shape)))

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    state = {"epoch": 0, "best_loss": math.inf, "best_accuracy": None, "best_epoch": 0, "stale": 0,
             "best_state": copy.deepcopy(model.state_dict())}
    if resume_from is not None and resume_from.is_file():
        saved = torch.load(resume_from, map_location=device, weights_only=True)
        if saved.get("config") != _config_key(config) or saved.get("hparams", model.hparams()) != model.hparams():
            raise BadInputError(f"{resume_from} was written by a run with other settings; "
                                "remove it or train without --resume")
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        state.update({k: saved[k] for k in ("epoch", "best_loss", "best_epoch", "stale", "best_state")},
                     best_accuracy=saved.get("best_accuracy"))  # None in a state written before it was kept

    bar = tqdm(range(state["epoch"] + 1, config.epochs + 1), desc=f"train ({config.defense.name})", unit="epoch",
               disable=(None if progress else True) if parallel.is_main else True, leave=False)
    epoch = state["epoch"]
    for epoch in bar:
        seed_everything(config.seed * 7919 + 1000 * parallel.rank + epoch)
        sampler.set_epoch(epoch)
        model.train()
        for xb, yb, index in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            optimiser.zero_grad(set_to_none=True)
            loss = objective(trained, model, xb, yb, index, epoch, autocast)
            loss.backward()
            optimiser.step()
        val_loss, val_acc = evaluate(model, x_val, y_val, VALIDATION_BATCH)
        bar.set_postfix(val_loss=f"{val_loss:.4f}", val_acc=f"{val_acc:.3f}")
        if val_loss < state["best_loss"] - 1e-5:
            state.update(best_loss=val_loss, best_accuracy=val_acc, best_epoch=epoch, stale=0,
                         best_state=copy.deepcopy(model.state_dict()))
        else:
            state["stale"] += 1
        state["epoch"] = epoch
        if resume_to is not None and parallel.is_main:
            _save_resume(resume_to, model, optimiser, state, config)
        if parallel.share(state["stale"] >= config.patience):  # rank 0 decides: every rank stops at once
            break
    bar.close()
    model.load_state_dict(state["best_state"])
    # the kept epoch's validation figures were measured on these very weights; measured again only where no
    # epoch was kept (a validation loss that is never finite) or a resumed state predates best_accuracy
    val_loss, val_acc = state["best_loss"], state["best_accuracy"]
    if val_acc is None:
        val_loss, val_acc = evaluate(model, x_val, y_val, VALIDATION_BATCH)
    _, train_acc = evaluate(model, torch.as_tensor(splits.train.x, device=device),
                             torch.as_tensor(splits.train.y, device=device), ACCURACY_BATCH)
    model.eval()
    return TrainSummary(
        epochs_run=epoch, best_epoch=state["best_epoch"], best_val_loss=round(val_loss, 6),
        val_accuracy=round(val_acc, 6), train_accuracy=round(train_acc, 6),
        seconds=round(time.perf_counter() - started, 3), device=str(device), processes=parallel.world,
    )


def _config_key(config: TrainConfig) -> dict:
    key = config.to_dict()
    key.pop("epochs")  # more epochs may be asked of a resumed run
    key.pop("compile")
    return key


def _save_resume(path: Path, model: nn.Module, optimiser, state: dict, config: TrainConfig) -> None:
    temporary = path.with_name(path.name + ".tmp")
    torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(), "config": _config_key(config),
                "hparams": model.hparams(), **state}, temporary)
    os.replace(temporary, path)


def train_and_test(model: Detector, splits: Splits, config: TrainConfig, *, device: torch.device,
                   **options) -> dict:
    """:func:`train_detector` (``options`` passed on), then the accuracy on the test split: the training summary
    every checkpoint records, with ``test_accuracy`` and the ``config``."""
    summary = train_detector(model, splits, config, device=device, **options).to_dict()
    _, test_accuracy = evaluate(model, torch.as_tensor(splits.test.x, device=device),
                                torch.as_tensor(splits.test.y, device=device), ACCURACY_BATCH)
    return {**summary, "test_accuracy": round(test_accuracy, 6), "config": config.to_dict()}


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on (x, y), ``batch_size`` rows per pass."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size]).float()
        target = y[start:start + batch_size]
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        correct += int((logits.argmax(1) == target).sum())
    return loss_sum / len(y), correct / len(y)
