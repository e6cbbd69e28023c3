"""Training overhead (sections 8 and 11): ``audit train`` against a bare AdamW loop over the same detector,
batches and validation pass, each in a fresh process of its own, so start-up, imports and loading the data
count on both sides. The bare loops import only what they use (torch and the detector's data), not the
benchmark suite.

The bare loop follows :func:`auditor.training.loop.train_detector` with seed 0 on one process: the detector
built after ``torch.manual_seed(0)``, AdamW (lr 2e-3, weight decay 1e-2), ``auto_batch_size`` rows a batch,
epoch e's rows in the order of ``torch.randperm`` seeded with e (the order of the loop's
``DistributedSampler``, seed 0, at epoch e) under ``torch.manual_seed(e)`` (the loop's dropout seed), then
one pass over the validation split in 1,024-row batches (as the loop's validation pass). Where the last epoch is
the one kept, it ends with the command's very weights (checked: phishing:2000 for 3 epochs, flows:3000 for 4):
the batches are the same batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.processes import timed_process

LR, WEIGHT_DECAY, VALIDATION_BATCH = 2e-3, 1e-2, 1024


def bare_training(device: str = "cpu") -> None:
    """``audit train --data flows --epochs 2`` done by hand: the tabular detector of flows."""
    from detectors.data import load_table, split_table
    from detectors.registry import detector_for_data

    table = load_table("flows", seed=0)
    splits = split_table(table, seed=0)
    torch.manual_seed(0)
    model = detector_for_data("tabular", table.input_shape, len(table.class_names), "flows")
    bare_loop(model, splits, epochs=2, device=device)


def bare_text_training(data: str, epochs: int, device: str = "cpu") -> torch.nn.Module:
    """``audit train --detector text --data data --epochs epochs`` done by hand: the messages split and the
    tokeniser trained as the command does, the text detector at its defaults (width 32, 2 layers). Returns
    the model after the last epoch, which is the command's checkpoint when that epoch has the lowest
    validation loss."""
    from detectors.text import TextTransformer
    from detectors.text_data import load_text_table, split_text_table

    table = load_text_table(data, seed=0)
    splits = split_text_table(table, seed=0)
    tokenizer = splits.tokenizer
    torch.manual_seed(0)
    model = TextTransformer(tokenizer.vocab_size, tokenizer.max_length, len(table.class_names),
                            pad_id=tokenizer.pad_id)
    return bare_loop(model, splits, epochs=epochs, device=device)


def bare_loop(model: torch.nn.Module, splits, *, epochs: int, device: str) -> torch.nn.Module:
    """``epochs`` epochs of AdamW over ``splits.train`` with a validation pass after each (module docstring)."""
    from auditor.training.config import auto_batch_size

    model.to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    x, y = torch.as_tensor(splits.train.x, device=device), torch.as_tensor(splits.train.y, device=device)
    x_val, y_val = torch.as_tensor(splits.val.x, device=device), torch.as_tensor(splits.val.y, device=device)
    batch = auto_batch_size(len(x))
    for epoch in range(1, epochs + 1):
        torch.manual_seed(epoch)
        torch.empty((), dtype=torch.int64).random_()  # the loop's DataLoader draws its base seed here
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch)).to(device)
        for start in range(0, len(x), batch):
            rows = order[start:start + batch]
            optimiser.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[rows]), y[rows]).backward()
            optimiser.step()
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(y_val), VALIDATION_BATCH):
                F.cross_entropy(model(x_val[start:start + VALIDATION_BATCH]), y_val[start:start + VALIDATION_BATCH],
                                reduction="sum").item()
    return model


def fresh_process_seconds(train: list[str], bare: list[str], *, repeats: int = 3) -> tuple[float, float]:
    """Best wall seconds of ``train`` and of ``bare``, each run in a fresh process ``repeats`` times, the two
    alternating, after one warm-up run of each."""
    timed_process(train), timed_process(bare)
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(timed_process(train)[0])
        theirs.append(timed_process(bare)[0])
    return min(ours), min(theirs)
