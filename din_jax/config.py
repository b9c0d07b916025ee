"""The configuration of a training or inference run, validated in one place."""

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

OPTIMIZERS = ("sgd", "adam", "adagrad")
LR_SCHEDULES = ("fixed", "paper", "file")
DATA_TYPES = ("float32", "float16", "bfloat16")
# Without scaling, float16 loses the attention unit's first-layer gradient
# (experiments/float16_gradients.py, docs/PERFORMANCE.md).
DEFAULT_FLOAT16_LOSS_SCALING = 1024.0
SELECT_METRICS = ("gauc", "auc", "logloss")
EMBEDDING_UPDATES = ("dense", "sparse")


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
    mba_lambda: float = 0.0  # mini-batch aware regularisation (DIN paper section 5.1; the paper uses 0.01)
    l2: float = 0.0  # plain L2 on every parameter, added to the gradient as l2 * w
    data_type: str = "float32"
    # The loss is multiplied by this before backpropagation and the gradients
    # divided by it after, so that float16 cotangents stay above float16's
    # smallest numbers; 0: automatic (1024 with float16, else 1, which changes
    # nothing). Powers of two keep float32 gradients bit for bit.
    loss_scaling: float = 0.0
    seed: int = 1234
    model_path: Optional[str] = None
    eval_every: int = 0
    select_metric: str = "gauc"
    resample_negatives: bool = False
    donate: bool = True
    prefetch: int = 2
    log_every: int = 1  # host calls between log lines
    # Training checkpoints <model_path>/checkpoints/step_N: every N steps (at
    # the first host call boundary at or past it) and at the end of every
    # epoch; 0: only at the end of epochs. The last keep_checkpoints are kept.
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    resume: bool = False  # continue from the newest checkpoint of model_path
    # Throughput (docs/PERFORMANCE.md): "sparse" updates only the embedding
    # rows each micro-batch looks up (din_jax/train/sparse_step.py; lazy Adam); "dense"
    # updates whole tables.
    embedding_updates: str = "dense"
    # History-length buckets (din_jax/data/batching.py), e.g. (8, 16, 32, 64,
    # 100); () or just max_seq_len: one bucket, every batch padded to
    # max_seq_len (the IPU's single program).
    length_buckets: Tuple[int, ...] = ()
    # History positions (rows x T) per pass inside a micro-batch (0: all at
    # once): large micro-batches are computed in cache-sized parts; the same
    # gradient (sparse updates, models without batch statistics) and the same
    # predictions.
    positions_per_pass: int = 0

    def effective_loss_scaling(self) -> float:
        """``loss_scaling``, with 0 resolved: 1024 for float16, whose gradients underflow without it, else 1."""
        if self.loss_scaling:
            return float(self.loss_scaling)
        return DEFAULT_FLOAT16_LOSS_SCALING if self.data_type == "float16" else 1.0

    def validate(self) -> "TrainConfig":
        """Checks every field; raises ConfigError naming the flag."""
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("data_type", self.data_type, DATA_TYPES)
        _choice("select_metric", self.select_metric, SELECT_METRICS)
        for name in ("max_seq_len", "micro_batch_size", "eval_micro_batch_size", "device_iterations", "epochs"):
            if getattr(self, name) < 1:
                raise ConfigError("--%s must be >= 1, got %r" % (name, getattr(self, name)))
        for name in ("replicas", "eval_every", "prefetch", "lr_decay_steps"):
            if getattr(self, name) < 0:
                raise ConfigError("--%s must be >= 0, got %r" % (name, getattr(self, name)))
        if not self.learning_rate > 0:
            raise ConfigError("--learning_rate must be > 0, got %r" % self.learning_rate)
        if self.clip_norm < 0:
            raise ConfigError("--clip_norm must be >= 0 (0 disables clipping), got %r" % self.clip_norm)
        for name, zero in (("mba_lambda", "0 disables it"), ("l2", "0 disables it"),
                           ("loss_scaling", "0: 1024 with float16, else 1")):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError("--%s must be a finite number >= 0 (%s), got %r" % (name, zero, value))
        if self.lr_schedule == "file" and not self.lr_file:
            raise ConfigError("--lr_schedule file needs --lr_file")
        if not self.use_synthetic_data and not self.dataset:
            raise ConfigError("give --dataset DIR (a directory built by data_prep/build.py) or --use_synthetic_data")
        if self.log_every < 1:
            raise ConfigError("--log_every must be >= 1, got %r" % self.log_every)
        if self.checkpoint_every < 0:
            raise ConfigError("--checkpoint_every must be >= 0 (0: only at the end of each epoch), got %r"
                              % self.checkpoint_every)
        if self.keep_checkpoints < 1:
            raise ConfigError("--keep_checkpoints must be >= 1, got %r" % self.keep_checkpoints)
        if self.resume and not self.model_path:
            raise ConfigError("--resume needs --model_path (the run directory to continue)")
        _choice("embedding_updates", self.embedding_updates, EMBEDDING_UPDATES)
        if self.positions_per_pass < 0:
            raise ConfigError("--positions_per_pass must be >= 0 (0: the whole micro-batch at once), got %r"
                              % self.positions_per_pass)
        if self.embedding_updates == "sparse" and self.l2 > 0:
            raise ConfigError("--l2 regularises every embedding row, which --embedding_updates sparse does not "
                              "touch: use --embedding_updates dense with --l2 (--mba_lambda works with both)")
        buckets = tuple(self.length_buckets or ())
        if any(not isinstance(b, int) or not 1 <= b <= self.max_seq_len for b in buckets) or \
                any(b <= a for a, b in zip(buckets, buckets[1:])):
            raise ConfigError("--length_buckets must be increasing integers in [1, --max_seq_len=%d], got %s"
                              % (self.max_seq_len, ",".join(str(b) for b in buckets)))
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _choice(name: str, value: Any, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError("--%s must be one of %s, got %r" % (name, list(choices), value))
