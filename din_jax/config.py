"""The configuration of a training or inference run, validated in one place."""

import dataclasses
from typing import Any, Dict, Optional, Tuple

OPTIMIZERS = ("sgd", "adam", "adagrad")
LR_SCHEDULES = ("fixed", "paper", "file")
DATA_TYPES = ("float32", "float16", "bfloat16")
SELECT_METRICS = ("gauc", "auc", "logloss")


class ConfigError(ValueError):
    """A setting is invalid; the message names the setting (the flag)."""


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run. Flag names in ``experiments/`` are the field names.

    ``model_config`` holds the model's fields (see ``din_jax.models``).
    """

    model: str = "din"
    model_config: Dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: Optional[str] = None
    use_synthetic_data: bool = False
    synthetic_samples: Tuple[int, int, int] = (20000, 4000, 4000)
    max_seq_len: int = 100
    epochs: int = 2
    micro_batch_size: int = 32
    eval_micro_batch_size: int = 128
    device_iterations: int = 1600
    replicas: int = 0
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    lr_schedule: str = "fixed"
    lr_decay_steps: int = 336000
    lr_decay_factor: float = 0.1
    lr_file: Optional[str] = None
    clip_norm: float = 0.0
    data_type: str = "float32"
    seed: int = 1234
    model_path: Optional[str] = None
    eval_every: int = 0
    select_metric: str = "gauc"
    resample_negatives: bool = False
    donate: bool = True
    prefetch: int = 2
    log_every: int = 1  # host calls between log lines

    def validate(self) -> "TrainConfig":
        """Checks every field; raises ConfigError naming the flag."""
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("data_type", self.data_type, DATA_TYPES)
        _choice("select_metric", self.select_metric, SELECT_METRICS)
        for name in ("max_seq_len", "micro_batch_size", "eval_micro_batch_size", "device_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError("--%s must be >= 1, got %r" % (name, getattr(self, name)))
        for name in ("epochs", "replicas", "eval_every", "prefetch", "lr_decay_steps"):
            if getattr(self, name) < 0:
                raise ConfigError("--%s must be >= 0, got %r" % (name, getattr(self, name)))
        if not self.learning_rate > 0:
            raise ConfigError("--learning_rate must be > 0, got %r" % self.learning_rate)
        if self.clip_norm < 0:
            raise ConfigError("--clip_norm must be >= 0 (0 disables clipping), got %r" % self.clip_norm)
        if self.lr_schedule == "file" and not self.lr_file:
            raise ConfigError("--lr_schedule file needs --lr_file")
        if not self.use_synthetic_data and not self.dataset:
            raise ConfigError("give --dataset DIR (a directory built by data_prep/build.py) or --use_synthetic_data")
        if self.log_every < 1:
            raise ConfigError("--log_every must be >= 1, got %r" % self.log_every)
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _choice(name: str, value: Any, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError("--%s must be one of %s, got %r" % (name, list(choices), value))
