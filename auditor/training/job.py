"""``audit train``: load and split the data, train the detector, write the checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from auditor.run.shard import Parallel
from auditor.training.config import DefenseConfig, TrainConfig, auto_batch_size, auto_epochs
from auditor.training.loop import resume_path, seed_everything, train_and_test
from detectors import __version__
from detectors.categorical import category_counts, most_frequent_codes
from detectors.checkpoint import save_checkpoint
from detectors.data import load_table, split_table
from detectors.devices import resolve_device
from detectors.errors import BadInputError
from detectors.inputs import kind_of_rank
from detectors.registry import build_detector, detector_for_data
from detectors.text_data import is_text_data


def integer_features(table) -> list[str]:
    """Named columns (tabular features) whose every value is a whole number (counts, buckets, codes): attacks
    round them. Inputs without named columns (pixels, time steps) have none; a categorical column's whole
    numbers are category indices, which no attack rounds."""
    if not kind_of_rank(len(table.input_shape)).named_columns:
        return []
    whole = np.all(np.equal(np.mod(table.x, 1), 0), axis=0)
    return [name for name, is_whole in zip(table.feature_names, whole) if is_whole and name not in table.categories]


def train_and_save(*, detector: str, data_spec: str, label_column: str = "label", positive_class: str | None = None,
                   epochs: int | None = None, batch_size: int | None = None, lr: float = 2e-3, patience: int = 15, seed: int = 0,
                   device: str = "auto", out_path, defense: DefenseConfig | str = "none", compile: bool = False,
                   resume: bool = False, progress: bool = True, frozen_features: tuple[str, ...] = (),
                   attention: str = "softmax", text_column: str = "text",
                   categorical_columns: tuple[str, ...] = ()) -> dict:
    """Load and split the data, train the detector, write the checkpoint (rank 0); returns the summary.
    ``frozen_features``: features an attacker may not change; recorded in the checkpoint (``audit run`` freezes
    them unless told otherwise) and left untouched by the defenses' training-time attacks.
    ``attention``: the detector's attention function (:data:`detectors.blocks.ATTENTION_VARIANTS`), recorded
    in the checkpoint as the detector's hparams ``attention``. Text (``--detector text``, or messages: phishing,
    a .jsonl file) goes to :func:`auditor.training.text.train_text_and_save`, the messages read from
    ``text_column``. ``categorical_columns``: a CSV's columns read as categories although they hold numbers
    (a column that is not all numbers is categorical anyway); the categories are recorded in the checkpoint."""
    if detector == "text" or is_text_data(data_spec):
        from auditor.training.text import train_text_and_save

        if categorical_columns:
            raise BadInputError("--categorical-columns names columns of tabular data; text has none")

        return train_text_and_save(detector=detector, data_spec=data_spec, text_column=text_column,
                                   label_column=label_column, positive_class=positive_class, epochs=epochs,
                                   batch_size=batch_size, lr=lr, patience=patience, seed=seed, device=device,
                                   out_path=out_path, defense=defense, progress=progress, attention=attention,
                                   frozen_features=frozen_features)
    parallel = Parallel.from_environment()
    defense = DefenseConfig(name=defense) if isinstance(defense, str) else defense
    out_path = Path(out_path)
    if out_path.exists() and out_path.is_dir():
        raise BadInputError(f"--out {str(out_path)!r} is a folder; name the checkpoint file, e.g. model.safetensors")
    if parallel.is_main:
        out_path.parent.mkdir(parents=True, exist_ok=True)  # the resume file is written there after epoch 1
    target_device = parallel.device(resolve_device(device))
    parallel.start(target_device)
    try:
        table = load_table(data_spec, label_column=label_column, positive_class=positive_class, seed=0,
                           categorical_columns=tuple(categorical_columns))
        not_read = [name for name in categorical_columns if name not in table.categories]
        if not_read:
            raise BadInputError(f"--categorical-columns: {', '.join(map(repr, not_read[:3]))} not among the feature "
                                f"columns of {table.name}'s CSV ({', '.join(map(repr, table.feature_names[:6]))}"
                                f"{' ...' if len(table.feature_names) > 6 else ''})")
        unknown = [name for name in frozen_features if name not in table.feature_names]
        if unknown:
            raise BadInputError(f"--frozen-features: {', '.join(map(repr, unknown[:3]))} not among the features of "
                                f"{table.name} ({', '.join(map(repr, table.feature_names[:6]))}"
                                f"{' ...' if len(table.feature_names) > 6 else ''})")
        splits = split_table(table, seed=seed)
        seed_everything(seed)
        model = detector_for_data(detector, table.input_shape, len(table.class_names), data_spec,
                                  attention=attention)
        if table.categories:
            model = build_detector(model.kind, {**model.hparams(),
                                                "categories": category_counts(table.feature_names, table.categories)})
        batch_size = batch_size or auto_batch_size(len(splits.train))
        epochs = epochs or auto_epochs(len(splits.train))
        config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed,
                             defense=defense, compile=compile, frozen_features=tuple(frozen_features))
        resume_file = resume_path(out_path)
        if resume and not resume_file.is_file() and parallel.is_main:
            print(f"no {resume_file} to resume from; starting afresh", file=sys.stderr)
        summary = train_and_test(model, splits, config, device=target_device, progress=progress, parallel=parallel,
                                 resume_from=resume_file if resume else None, resume_to=resume_file)
        metadata = {
            "features": splits.train.feature_names,
            "classes": splits.train.class_names,
            "positive_class": table.positive_class,
            "relevant_features": table.relevant_features,
            "input_shape": list(table.input_shape),
            "integer_features": integer_features(table),
            "frozen_features": list(frozen_features),
            "categorical": {name: table.categories[name] for name in table.feature_names if name in table.categories},
            "scaler": splits.scaler.to_dict(),
            "data": {"name": data_spec, "split_seed": seed, "generator_seed": 0, "label_column": label_column,
                     "rows": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}},
            "defense": defense.to_dict(),
            "training": summary,
            "tool": {"name": "attention-audit", "version": __version__},
        }
        if parallel.is_main:
            model.cpu()
            save_checkpoint(out_path, model, metadata=metadata,
                            train_mean=most_frequent_codes(splits.train.x, splits.train.feature_names, table.categories))
            resume_file.unlink(missing_ok=True)
        parallel.share(None)  # every rank waits until rank 0 has written the checkpoint
        return summary
    finally:
        parallel.close()
