"""``audit train --detector text``: messages (``phishing[:N]``, a ``.csv`` with a text column, a ``.jsonl``
file) split as every other data set (:func:`detectors.text_data.split_text_table`), the tokeniser trained on
the training split, a :class:`detectors.text.TextTransformer` trained by
:func:`auditor.training.loop.train_detector`, and the checkpoint written with the tokeniser's JSON (metadata
``text``) in place of a scaler.

Text trains in one process with ``--defense none`` (cross-entropy) or ``pgd-at``, which on token ids is
embedding-space adversarial training (Miyato et al. 2017; :mod:`auditor.training.defenses`, ``--eps`` a
fraction of the mean embedding norm); the other defenses perturb inputs in [0, 1], which token ids are not,
and are refused (exit 2), as is ``--nproc``.
"""

from __future__ import annotations

from pathlib import Path

from auditor.training.config import DefenseConfig, TrainConfig, auto_batch_size
from auditor.training.loop import seed_everything, train_and_test
from auditor.run.shard import Parallel
from detectors import __version__
from detectors.checkpoint import save_checkpoint
from detectors.devices import resolve_device
from detectors.errors import BadInputError
from detectors.text import TextTransformer
from detectors.text_data import load_text_table, split_text_table

# epochs by default: on phishing (3,825 training messages, batch 64) the validation accuracy passes 0.95 by
# epoch 5; early stopping keeps the best epoch
TEXT_EPOCHS = 20


def train_text_and_save(*, detector: str, data_spec: str, text_column: str = "text", label_column: str = "label",
                        positive_class: str | None = None, epochs: int | None = None, batch_size: int | None = None,
                        lr: float = 2e-3, patience: int = 15, seed: int = 0, device: str = "auto", out_path,
                        defense: DefenseConfig | str = "none", progress: bool = True, attention: str = "softmax",
                        frozen_features: tuple[str, ...] = ()) -> dict:
    """Load, split and tokenise the messages, train the text detector, write the checkpoint; returns the
    summary (``test_accuracy`` included), as :func:`auditor.training.job.train_and_save` does for the others."""
    defense = DefenseConfig(name=defense) if isinstance(defense, str) else defense
    if detector != "text":
        raise BadInputError(f"{data_spec} holds messages; train it with --detector text")
    if defense.name not in ("none", "pgd-at"):
        raise BadInputError(f"--defense {defense.name} perturbs inputs in [0, 1], which token ids are not; text "
                            "detectors train with --defense none or pgd-at (adversarial training in embedding space)")
    if Parallel.from_environment().world > 1:
        raise BadInputError("text detectors train in one process; leave out --nproc")
    if frozen_features:
        raise BadInputError("--frozen-features names tabular features; text has none")
    out_path = Path(out_path)
    if out_path.exists() and out_path.is_dir():
        raise BadInputError(f"--out {str(out_path)!r} is a folder; name the checkpoint file, e.g. model.safetensors")
    table = load_text_table(data_spec, text_column=text_column, label_column=label_column,
                            positive_class=positive_class, seed=0)
    splits = split_text_table(table, seed=seed)
    tokenizer = splits.tokenizer
    seed_everything(seed)
    model = TextTransformer(tokenizer.vocab_size, tokenizer.max_length, len(table.class_names),
                            pad_id=tokenizer.pad_id, attention=attention)
    config = TrainConfig(epochs=epochs or TEXT_EPOCHS,
                         batch_size=batch_size or auto_batch_size(len(splits.train)), lr=lr, patience=patience,
                         seed=seed, defense=defense)
    target = resolve_device(device)
    summary = train_and_test(model, splits, config, device=target, progress=progress)
    metadata = {
        "features": splits.train.feature_names,
        "classes": splits.train.class_names,
        "positive_class": table.positive_class,
        "relevant_features": None,
        "input_shape": [tokenizer.max_length],
        "integer_features": [],
        "frozen_features": [],
        "scaler": None,
        "text": {"tokenizer": tokenizer.to_json(), "max_length": tokenizer.max_length,
                 "special_tokens": tokenizer.tokens(tokenizer.special_ids)},
        "data": {"name": data_spec, "split_seed": seed, "generator_seed": 0, "label_column": label_column,
                 "text_column": text_column,
                 "rows": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}},
        "defense": defense.to_dict(),
        "training": summary,
        "tool": {"name": "attention-audit", "version": __version__},
    }
    model.cpu()
    save_checkpoint(out_path, model, metadata=metadata)
    return summary
