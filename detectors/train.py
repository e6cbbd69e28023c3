"""Training: AdamW, seeded, early stopping on the validation split, defenses,
CUDA with bf16 autocast, and data-parallel training under torchrun.

Defenses (recorded in the checkpoint so that checkpoints can be compared):

``none``
    plain cross-entropy.
``pgd-at``
    Madry et al. 2018: cross-entropy on PGD examples (L-inf ``eps``, ``steps``
    steps of ``step_size`` x eps, random start), made by this tool's ``pgd``.
``trades``
    Zhang et al. 2019: CE(f(x), y) + beta * KL(f(x') || f(x)), x' maximising
    that KL within eps (torchattacks' TPGD, the TRADES inner maximisation).
``attention-consistency``
    adversarial training as ``pgd-at`` plus lambda * JSD between the clean and
    the perturbed CLS attention (mean over heads and layers), the defense
    against attacks that forge attention. With sparse attention (sparsemax,
    entmax15) the JSD term has no gradient through tokens outside the support
    of either distribution: only the supported tokens are pulled together.

Run ``torchrun --nproc-per-node N -m detectors.train ...`` (the options of
``audit train``) for DistributedDataParallel: gloo on CPUs, NCCL on GPUs; each
rank trains on its shard of every global batch, only rank 0 writes files.
``--resume`` continues from ``<out>.resume.pt``, written beside ``--out`` after
every epoch and removed once the final checkpoint is written.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torchattacks
from torch import nn
from torch.nn import functional as F
from torch.utils.data import BatchSampler, DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from detectors.base import Detector
from detectors.data import Splits
from detectors.errors import BadInputError

DEFENSES = ("none", "pgd-at", "trades", "attention-consistency")
DEFENSE_OPTIONS = {
    "none": (),
    "pgd-at": ("eps", "steps", "step_size"),
    "trades": ("eps", "steps", "step_size", "beta"),
    "attention-consistency": ("eps", "steps", "step_size", "lambda_attention"),
}


@dataclass(frozen=True)
class DefenseConfig:
    name: str = "none"
    eps: float = 0.05
    steps: int = 5
    step_size: float = 0.5  # fraction of eps per step
    beta: float = 6.0
    lambda_attention: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in DEFENSES:
            raise BadInputError(f"unknown defense {self.name!r}; choose one of {', '.join(DEFENSES)}")
        if not (0 < self.eps <= 1) or self.steps < 1 or self.step_size <= 0 or self.beta < 0 \
                or self.lambda_attention < 0:
            raise BadInputError("defense settings out of range: need 0 < eps <= 1, steps >= 1, step size > 0, "
                                "beta >= 0, lambda >= 0")

    @classmethod
    def from_options(cls, name: str, **given) -> "DefenseConfig":
        """Refuse an option the chosen defense does not use, naming a defense that would."""
        used = DEFENSE_OPTIONS.get(name, ())
        for option, value in given.items():
            if value is not None and option not in used:
                users = [d for d, opts in DEFENSE_OPTIONS.items() if option in opts]
                flag = "--" + option.replace("_", "-")
                raise BadInputError(f"{flag} is not used by --defense {name}; it applies to {', '.join(users)}")
        return cls(name=name, **{k: v for k, v in given.items() if v is not None})

    def to_dict(self) -> dict:
        return {"name": self.name, **{key: getattr(self, key) for key in DEFENSE_OPTIONS[self.name]}}


LARGE_TRAIN_ROWS = 4000


def auto_batch_size(train_rows: int) -> int:
    """64 for small training sets (better minima), 256 from 4,000 rows on (epochs stay seconds on a CPU)."""
    return 64 if train_rows < LARGE_TRAIN_ROWS else 256


def auto_epochs(train_rows: int) -> int:
    """60 epochs for small training sets, 20 from 4,000 rows on: a large set gives more steps per epoch,
    and past 20 epochs the validation loss there only creeps down while a defense costs minutes."""
    return 60 if train_rows < LARGE_TRAIN_ROWS else 20


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-2
    patience: int = 15
    seed: int = 0
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    compile: bool = False
    # features an attacker may not change: the defenses' training-time attacks leave them as they are
    frozen_features: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        payload = asdict(self)
        payload["defense"] = self.defense.to_dict()
        payload["frozen_features"] = list(self.frozen_features)
        return payload


@dataclass
class TrainSummary:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    val_accuracy: float
    train_accuracy: float
    seconds: float
    device: str
    processes: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Parallel:
    """Where this process stands under torchrun (a world of one without it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share_cpu(self) -> int:
        """On CPU, give this process its share of the cores: torch threads = cores / processes on this machine
        (never more than it has now). Several processes each running one thread per core fight over the cores:
        measured on 2 cores, a 2-process audit with 2 threads each took 63.7 s, with 1 thread each 33.3 s."""
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if local > 1:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            torch.set_num_threads(max(1, min(torch.get_num_threads(), cores // local)))
        return torch.get_num_threads()

    @classmethod
    def from_environment(cls) -> "Parallel":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(rank=int(os.environ.get("RANK", "0")), world=world,
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def seed_everything(seed: int) -> None:
    """Seed torch's global generator (weight initialisation, dropout, TRADES' start)."""
    torch.manual_seed(seed)


def _attention_distribution(attentions: list[torch.Tensor]) -> torch.Tensor:
    """CLS attention over the other tokens, mean over heads and layers, renormalised: (batch, tokens - 1)."""
    rows = torch.stack([a[:, :, 0, 1:].mean(dim=1) for a in attentions]).mean(dim=0)
    return rows / rows.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def jensen_shannon(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-row JSD in nats (bounded by ln 2)."""
    m = 0.5 * (p + q)
    kl = lambda a, b: (a * (a.clamp_min(1e-12).log() - b.clamp_min(1e-12).log())).sum(-1)  # noqa: E731
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


class DefenseLoss:
    """The training objective of one defense.

    ``model`` returns (logits, attentions) and is what gradients flow through
    (wrapped for DDP when there are several processes); adversarial examples
    are crafted on the bare ``module`` in eval mode, with no gradient sync.
    """

    def __init__(self, config: DefenseConfig, input_shape: tuple[int, ...], seed: int, *,
                 frozen: torch.Tensor | None = None) -> None:
        from attacks import Domain, make_attack

        self.config, self.seed = config, seed
        self.domain = Domain.unit(input_shape, frozen=frozen)
        self.pgd = make_attack("pgd", steps=config.steps, step_size=config.step_size, restarts=1, schedule="constant")

    def adversarial(self, module: Detector, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                    epoch: int) -> torch.Tensor:
        return self.pgd(module, x, y, eps=self.config.eps, domain=self.domain, seed=self.seed * 100003 + epoch,
                        index=index)

    def trades_examples(self, module: Detector, x: torch.Tensor) -> torch.Tensor:
        was_training = module.training
        try:
            attack = torchattacks.TPGD(module, eps=self.config.eps, alpha=self.config.step_size * self.config.eps,
                                       steps=self.config.steps)
            x_adv = attack(x)
        finally:
            module.train(was_training)
        return self.domain.project(x_adv, x, eps=self.config.eps)

    def __call__(self, model: nn.Module, module: Detector, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor,
                 epoch: int, autocast) -> torch.Tensor:
        name = self.config.name
        if name == "none":
            with autocast():
                return F.cross_entropy(model(x)[0], y)
        if name == "pgd-at":
            x_adv = self.adversarial(module, x, y, index, epoch)
            with autocast():
                return F.cross_entropy(model(x_adv)[0], y)
        if name == "trades":
            x_adv = self.trades_examples(module, x)
            with autocast():
                logits = model(torch.cat([x, x_adv]))[0]
                clean, adv = logits[: len(x)], logits[len(x):]
                robust = F.kl_div(F.log_softmax(adv.float(), 1), F.softmax(clean.float(), 1), reduction="batchmean")
                return F.cross_entropy(clean, y) + self.config.beta * robust
        x_adv = self.adversarial(module, x, y, index, epoch)
        with autocast():
            logits, attentions = model(torch.cat([x, x_adv]))
            p = _attention_distribution([a[: len(x)].float() for a in attentions])
            q = _attention_distribution([a[len(x):].float() for a in attentions])
            return F.cross_entropy(logits[len(x):], y) + self.config.lambda_attention * jensen_shannon(p, q).mean()


class _WithAttention(nn.Module):
    """``forward`` returns (logits, attentions), so DistributedDataParallel sees every pass that needs gradients."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.detector.forward_with_attention(x)


def _resume_path(out_path: Path) -> Path:
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
    frozen = torch.tensor([name in config.frozen_features for name in splits.train.feature_names])
    objective = DefenseLoss(config.defense, tuple(model.input_shape), config.seed,
                            frozen=frozen.reshape(tuple(model.input_shape)))

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    state = {"epoch": 0, "best_loss": math.inf, "best_epoch": 0, "stale": 0,
             "best_state": copy.deepcopy(model.state_dict())}
    if resume_from is not None and resume_from.is_file():
        saved = torch.load(resume_from, map_location=device, weights_only=True)
        if saved.get("config") != _config_key(config) or saved.get("hparams", model.hparams()) != model.hparams():
            raise BadInputError(f"{resume_from} was written by a run with other settings; "
                                "remove it or train without --resume")
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        state.update({k: saved[k] for k in ("epoch", "best_loss", "best_epoch", "stale", "best_state")})

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
        val_loss, val_acc = _evaluate(model, x_val, y_val, 1024)
        bar.set_postfix(val_loss=f"{val_loss:.4f}", val_acc=f"{val_acc:.3f}")
        if val_loss < state["best_loss"] - 1e-5:
            state.update(best_loss=val_loss, best_epoch=epoch, stale=0, best_state=copy.deepcopy(model.state_dict()))
        else:
            state["stale"] += 1
        state["epoch"] = epoch
        if resume_to is not None and parallel.is_main:
            _save_resume(resume_to, model, optimiser, state, config)
        if _agree_to_stop(state["stale"] >= config.patience, parallel, device):
            break
    bar.close()
    model.load_state_dict(state["best_state"])
    val_loss, val_acc = _evaluate(model, x_val, y_val, 1024)
    _, train_acc = _evaluate(model, torch.as_tensor(splits.train.x, device=device),
                             torch.as_tensor(splits.train.y, device=device), 1024)
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


def _agree_to_stop(stop: bool, parallel: Parallel, device: torch.device) -> bool:
    """Rank 0 decides, so every rank leaves the loop at the same epoch."""
    if parallel.world == 1:
        return stop
    flag = torch.tensor([1.0 if stop else 0.0], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


@torch.inference_mode()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size]).float()
        target = y[start:start + batch_size]
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        correct += int((logits.argmax(1) == target).sum())
    return loss_sum / len(y), correct / len(y)


def integer_features(table) -> list[str]:
    """Tabular features whose every value is a whole number (counts, buckets, codes): attacks round them."""
    if table.x.ndim != 2:
        return []
    whole = np.all(np.equal(np.mod(table.x, 1), 0), axis=0)
    return [name for name, is_whole in zip(table.feature_names, whole) if is_whole]


def train_and_save(*, detector: str, data_spec: str, label_column: str = "label", positive_class: str | None = None,
                   epochs: int | None = None, batch_size: int | None = None, lr: float = 2e-3, patience: int = 15, seed: int = 0,
                   device: str = "auto", out_path, defense: DefenseConfig | str = "none", compile: bool = False,
                   resume: bool = False, progress: bool = True, frozen_features: tuple[str, ...] = (),
                   attention: str = "softmax") -> dict:
    """Load and split the data, train the detector, write the checkpoint (rank 0); returns the summary.
    ``frozen_features``: features an attacker may not change; recorded in the checkpoint (``audit run`` freezes
    them unless told otherwise) and left untouched by the defenses' training-time attacks.
    ``attention``: the detector's attention function (:data:`detectors.blocks.ATTENTION_VARIANTS`), recorded
    in the checkpoint as the detector's hparams ``attention``."""
    from detectors import __version__
    from detectors.checkpoint import save_checkpoint
    from detectors.data import load_table, split_table
    from detectors.devices import resolve_device
    from detectors.registry import detector_for_data

    parallel = Parallel.from_environment()
    defense = DefenseConfig(name=defense) if isinstance(defense, str) else defense
    out_path = Path(out_path)
    if out_path.exists() and out_path.is_dir():
        raise BadInputError(f"--out {str(out_path)!r} is a folder; name the checkpoint file, e.g. model.safetensors")
    if parallel.is_main:
        out_path.parent.mkdir(parents=True, exist_ok=True)  # the resume file is written there after epoch 1
    target_device = resolve_device(device)
    if parallel.world > 1:
        if target_device.type == "cuda":
            target_device = torch.device("cuda", parallel.local_rank)
            torch.cuda.set_device(target_device)
        else:
            parallel.share_cpu()
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if target_device.type == "cuda" else "gloo")
    try:
        table = load_table(data_spec, label_column=label_column, positive_class=positive_class, seed=0)
        unknown = [name for name in frozen_features if name not in table.feature_names]
        if unknown:
            raise BadInputError(f"--frozen-features: {', '.join(map(repr, unknown[:3]))} not among the features of "
                                f"{table.name} ({', '.join(map(repr, table.feature_names[:6]))}"
                                f"{' ...' if len(table.feature_names) > 6 else ''})")
        splits = split_table(table, seed=seed)
        seed_everything(seed)
        model = detector_for_data(detector, table.input_shape, len(table.class_names), data_spec,
                                  attention=attention)
        batch_size = batch_size or auto_batch_size(len(splits.train))
        epochs = epochs or auto_epochs(len(splits.train))
        config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, patience=patience, seed=seed,
                             defense=defense, compile=compile, frozen_features=tuple(frozen_features))
        resume_file = _resume_path(out_path)
        if resume and not resume_file.is_file() and parallel.is_main:
            print(f"no {resume_file} to resume from; starting afresh", file=sys.stderr)
        summary = train_detector(model, splits, config, device=target_device, progress=progress, parallel=parallel,
                                 resume_from=resume_file if resume else None, resume_to=resume_file).to_dict()
        _, test_accuracy = _evaluate(model, torch.as_tensor(splits.test.x, device=target_device),
                                     torch.as_tensor(splits.test.y, device=target_device), 1024)
        summary["test_accuracy"] = round(test_accuracy, 6)
        summary["config"] = config.to_dict()
        metadata = {
            "features": splits.train.feature_names,
            "classes": splits.train.class_names,
            "positive_class": table.positive_class,
            "relevant_features": table.relevant_features,
            "input_shape": list(table.input_shape),
            "integer_features": integer_features(table),
            "frozen_features": list(frozen_features),
            "scaler": splits.scaler.to_dict(),
            "data": {"name": data_spec, "split_seed": seed, "generator_seed": 0, "label_column": label_column,
                     "rows": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}},
            "defense": defense.to_dict(),
            "training": summary,
            "tool": {"name": "attention-audit", "version": __version__},
        }
        if parallel.is_main:
            model.cpu()
            save_checkpoint(out_path, model, metadata=metadata, train_mean=splits.train.x.mean(axis=0))
            resume_file.unlink(missing_ok=True)
        if parallel.world > 1:
            dist.barrier()
        return summary
    finally:
        if parallel.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":  # torchrun --nproc-per-node N -m detectors.train [audit train options]
    from auditor.cli import main

    main(["train", *sys.argv[1:]])
