"""Training and defense settings: names, defaults, checks. Plain dataclasses without torch, so that the
command line's ``--help`` can show the defaults without loading it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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
