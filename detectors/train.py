"""Training loop: AdamW, seeded, early stopping on the validation split.

Defenses beyond ``none`` arrive with the detectors issue; the checkpoint
already records which one trained the model.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from detectors.base import Detector
from detectors.data import Splits


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-2
    patience: int = 15
    seed: int = 0


@dataclass
class TrainSummary:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    val_accuracy: float
    train_accuracy: float
    seconds: float
    device: str

    def to_dict(self) -> dict:
        return asdict(self)


def train_detector(model: Detector, splits: Splits, config: TrainConfig, *, device: torch.device,
                   progress: bool = True) -> TrainSummary:
    """Train in place; the weights of the epoch with the lowest validation loss are kept."""
    started = time.perf_counter()
    model.to(device)
    x_train = torch.as_tensor(splits.train.x, device=device)
    y_train = torch.as_tensor(splits.train.y, device=device)
    x_val = torch.as_tensor(splits.val.x, device=device)
    y_val = torch.as_tensor(splits.val.y, device=device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    order_rng = torch.Generator().manual_seed(config.seed)
    best_loss, best_epoch, best_state, stale = float("inf"), 0, copy.deepcopy(model.state_dict()), 0
    bar = tqdm(range(1, config.epochs + 1), desc="train", unit="epoch", disable=not progress, leave=False)
    epoch = 0
    for epoch in bar:
        model.train()
        order = torch.randperm(len(y_train), generator=order_rng).to(device)
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            optimiser.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimiser.step()
        val_loss, val_acc = _evaluate(model, x_val, y_val, config.batch_size * 8)
        bar.set_postfix(val_loss=f"{val_loss:.4f}", val_acc=f"{val_acc:.3f}")
        if val_loss < best_loss - 1e-5:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= config.patience:
                break
    bar.close()
    model.load_state_dict(best_state)
    val_loss, val_acc = _evaluate(model, x_val, y_val, config.batch_size * 8)
    _, train_acc = _evaluate(model, x_train, y_train, config.batch_size * 8)
    model.eval()
    return TrainSummary(
        epochs_run=epoch, best_epoch=best_epoch, best_val_loss=round(val_loss, 6), val_accuracy=round(val_acc, 6),
        train_accuracy=round(train_acc, 6), seconds=round(time.perf_counter() - started, 3), device=str(device),
    )


@torch.inference_mode()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    model.eval()
    losses, correct = [], 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        losses.append(nn.functional.cross_entropy(logits, target, reduction="sum").item())
        correct += int((logits.argmax(1) == target).sum())
    return float(np.sum(losses) / len(y)), correct / len(y)


def seed_everything(seed: int) -> None:
    """Seed torch's global generator for weight initialisation (training only)."""
    torch.manual_seed(seed)


def train_and_save(*, detector: str, data_spec: str, label_column: str, positive_class: str | None, defense: str,
                   epochs: int, batch_size: int, lr: float, patience: int, seed: int, device: str,
                   out_path, progress: bool = True) -> dict:
    """Load and split the data, train the detector, write the checkpoint; returns the training summary."""
    from detectors import __version__
    from detectors.checkpoint import save_checkpoint
    from detectors.data import load_table, split_table
    from detectors.devices import resolve_device
    from detectors.registry import build_detector

    target_device = resolve_device(device)
    table = load_table(data_spec, label_column=label_column, positive_class=positive_class, seed=0)
    splits = split_table(table, seed=seed)
    seed_everything(seed)
    model = build_detector(detector, {"n_features": table.x.shape[1], "n_classes": len(table.class_names)})
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed)
    summary = train_detector(model, splits, config, device=target_device, progress=progress).to_dict()
    x_test = torch.as_tensor(splits.test.x, device=target_device)
    _, test_accuracy = _evaluate(model, x_test, torch.as_tensor(splits.test.y, device=target_device), 1024)
    summary["test_accuracy"] = round(test_accuracy, 6)
    summary["config"] = asdict(config)
    metadata = {
        "features": splits.train.feature_names,
        "classes": splits.train.class_names,
        "positive_class": table.positive_class,
        "relevant_features": table.relevant_features,
        "scaler": splits.scaler.to_dict(),
        "data": {"name": data_spec, "split_seed": seed, "generator_seed": 0, "label_column": label_column,
                 "rows": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}},
        "defense": {"name": defense},
        "training": summary,
        "tool": {"name": "attention-audit", "version": __version__},
    }
    model.cpu()
    save_checkpoint(out_path, model, metadata=metadata, train_mean=splits.train.x.mean(axis=0))
    return summary
