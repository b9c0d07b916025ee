"""The configuration of a run: TrainConfig, the presets, and how flags, presets and checkpoints resolve into it.

Every command and the ablation harness build their configs here, from a preset name and the flags given
explicitly (``overrides``, keyed by flag name): a given flag always wins over the preset, the preset over the
defaults. ``config_from_checkpoint`` is the inverse of ``checkpoint_metadata``.
"""

import dataclasses
import math
import os
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from absl import logging

from din_jax.models import model_fields, reads_packed_history

OPTIMIZERS = ("sgd", "adam", "adagrad")
LR_SCHEDULES = ("fixed", "paper", "file")
DATA_TYPES = ("float32", "float16", "bfloat16")
# Without scaling, float16 loses the attention unit's first-layer gradient
# (experiments/float16_gradients.py, docs/PERFORMANCE.md).
DEFAULT_FLOAT16_LOSS_SCALING = 1024.0
SELECT_METRICS = ("gauc", "auc", "logloss")
EMBEDDING_UPDATES = ("dense", "sparse")
BATCHINGS = ("packed", "padded")


class ConfigError(ValueError):
    """A setting is invalid; the message names the setting (the flag)."""


@dataclasses.dataclass
class TrainConfig:
    """Every setting of a run; each field means what the flag of the same name says (``train.py --helpfull``).

    ``model_config`` holds the model's fields (``din_jax.models.model_fields``).
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
    loss_scaling: float = 0.0  # 0: 1024 with float16, else 1; powers of two keep float32 gradients bit for bit
    seed: int = 1234
    model_path: Optional[str] = None
    eval_every: int = 0
    early_stop_patience: int = 0  # evaluations without a better validation metric before training stops; 0: never
    select_metric: str = "gauc"
    resample_negatives: Optional[bool] = None  # None: on when the dataset can redraw its negatives
    donate: bool = True
    prefetch: int = 2
    log_every: int = 1  # host calls between log lines
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    resume: bool = False  # continue from the newest checkpoint of model_path
    embedding_updates: str = "dense"
    length_buckets: Tuple[int, ...] = ()
    positions_per_pass: int = 0
    batching: str = "packed"
    packed_positions: int = 0  # packed buffer length of a training micro-batch; 0: from the data (batching.py)

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
        for name in ("replicas", "eval_every", "early_stop_patience", "prefetch", "lr_decay_steps", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError("--%s must be >= 0, got %r" % (name, getattr(self, name)))
        dropout = self.model_config.get("dropout_rate", 0.0)
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ConfigError("--dropout must be a rate in [0, 1), got %r" % (dropout,))
        if not self.learning_rate > 0:
            raise ConfigError("--learning_rate must be > 0, got %r" % self.learning_rate)
        if self.clip_norm < 0:
            raise ConfigError("--clip_norm must be >= 0 (0 disables clipping), got %r" % self.clip_norm)
        for name, zero in (
            ("mba_lambda", "0 disables it"),
            ("l2", "0 disables it"),
            ("loss_scaling", "0: 1024 with float16, else 1"),
        ):
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
            raise ConfigError(
                "--checkpoint_every must be >= 0 (0: only at the end of each epoch), got %r" % self.checkpoint_every
            )
        if self.keep_checkpoints < 1:
            raise ConfigError("--keep_checkpoints must be >= 1, got %r" % self.keep_checkpoints)
        if self.resume and not self.model_path:
            raise ConfigError("--resume needs --model_path (the run directory to continue)")
        _choice("embedding_updates", self.embedding_updates, EMBEDDING_UPDATES)
        _choice("batching", self.batching, BATCHINGS)
        if self.packed_positions != 0 and self.packed_positions < self.max_seq_len:
            raise ConfigError(
                "--packed_positions must be 0 (from the data) or at least --max_seq_len=%d (one whole history), "
                "got %r" % (self.max_seq_len, self.packed_positions)
            )
        if self.batching == "packed" and not _reads_packed(self.model):
            raise ConfigError(
                "--batching packed: model %s reads each history as a row (a GRU or self-attention over its "
                "positions); use --batching padded" % self.model
            )
        if self.batching == "packed" and len(tuple(self.length_buckets or ())) > 1:
            raise ConfigError("--length_buckets group padded batches: use them with --batching padded")
        if self.positions_per_pass < 0:
            raise ConfigError(
                "--positions_per_pass must be >= 0 (0: the whole micro-batch at once), got %r" % self.positions_per_pass
            )
        if self.embedding_updates == "sparse" and self.l2 > 0:
            raise ConfigError(
                "--l2 regularises every embedding row, which --embedding_updates sparse does not "
                "touch: use --embedding_updates dense with --l2 (--mba_lambda works with both)"
            )
        buckets = tuple(self.length_buckets or ())
        if any(not isinstance(b, int) or not 1 <= b <= self.max_seq_len for b in buckets) or any(
            b <= a for a, b in zip(buckets, buckets[1:])
        ):
            raise ConfigError(
                "--length_buckets must be increasing integers in [1, --max_seq_len=%d], got %s"
                % (self.max_seq_len, ",".join(str(b) for b in buckets))
            )
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _reads_packed(model: Any) -> bool:
    """``reads_packed_history``; an unknown model is reported where it is built, not here."""
    try:
        return reads_packed_history(model)
    except ValueError:
        return True


def _choice(name: str, value: Any, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError("--%s must be one of %s, got %r" % (name, list(choices), value))


# -- presets: model fields plus the training settings that go with them --------------------------------------

_AUTHORS_SIZES = dict(item_dim=64, category_dim=64, user_dim=0, use_item_bias=True)
_ATTENTION = dict(attention="din", attention_hidden=(80, 40), attention_activation="sigmoid")
_AUTHORS_MLP = dict(mlp_hidden=(80, 40), activation="sigmoid")
# SGD, batch 32, the learning rate 1.0 dropped to 0.1 after 336,000 steps, gradients clipped to global norm 5 (every
# model of the authors' code: tf.clip_by_global_norm(gradients, 5); without it SGD at 1.0 diverges in a few steps).
_AUTHORS_SGD = dict(
    optimizer="sgd", learning_rate=1.0, lr_schedule="paper", lr_decay_steps=336000, micro_batch_size=32, clip_norm=5.0
)


def _preset(model: str, train_config: Dict[str, Any], **model_config: Any) -> Dict[str, Any]:
    return {"model": model, "model_config": model_config, "train_config": dict(train_config)}


# fmt: off
PRESETS: Dict[str, Dict[str, Any]] = {
    # The authors' Amazon code (zhougr1993/DeepInterestNetwork, din/): item 64 + category 64, attention 80-40
    # sigmoid with a masked softmax over score / sqrt(D), MLP 80-40 sigmoid, per-item bias.
    "din_amazon": _preset("din", _AUTHORS_SGD, **_AUTHORS_SIZES, **_ATTENTION, attention_normalization="softmax",
                          **_AUTHORS_MLP),
    # The paper's DIN (sections 4 and 6): unnormalised attention weights, MLP 200-80 with PReLU (--activation dice
    # for DIN + Dice).
    "din_paper": _preset("din", _AUTHORS_SGD, **_AUTHORS_SIZES, **_ATTENTION, attention_normalization="none",
                         mlp_hidden=(200, 80), activation="prelu"),
    # Graphcore's TF1 IPU port (DIEN code base): item 18 + category 18 (their attention size 36), user 18, MLP
    # 200-80 with Dice that also sees the sum-pooled history, attention 80-40 sigmoid with a masked softmax.
    "din_graphcore": _preset(
        "din", dict(optimizer="sgd", learning_rate=0.1, lr_schedule="fixed", micro_batch_size=32), item_dim=18,
        category_dim=18, user_dim=18, use_item_bias=False, **_ATTENTION, attention_normalization="softmax",
        mlp_hidden=(200, 80), activation="dice", use_history_sum=True),
    # The competitors as the authors' Amazon code configures them (base_model/, wide_deep/, pnn/, deepFM/):
    # mean-pooled history, MLP 80-40 sigmoid; DeepFM with Adam 0.001. The model parts follow this project's
    # definitions (see each module); the authors' "PNN" is the element-wise product of history and candidate.
    "base_amazon": _preset("base", _AUTHORS_SGD, **_AUTHORS_SIZES, pooling="mean", **_AUTHORS_MLP),
    "wide_deep_amazon": _preset("wide_deep", _AUTHORS_SGD, **_AUTHORS_SIZES, pooling="mean", **_AUTHORS_MLP),
    "pnn_amazon": _preset("pnn", _AUTHORS_SGD, **_AUTHORS_SIZES, pooling="mean", product="elementwise",
                          **_AUTHORS_MLP),
    "deepfm_amazon": _preset("deepfm", dict(optimizer="adam", learning_rate=0.001, lr_schedule="fixed",
                                            micro_batch_size=32, clip_norm=5.0), **_AUTHORS_SIZES, pooling="mean", **_AUTHORS_MLP),
}
# fmt: on


def get_preset(name: str) -> Dict[str, Any]:
    """A copy of preset ``name`` that callers may edit."""
    if name not in PRESETS:
        raise ConfigError("--preset: unknown preset %r; choose from %s" % (name, sorted(PRESETS)))
    preset = PRESETS[name]
    return {
        "model": preset["model"],
        "model_config": dict(preset["model_config"]),
        "train_config": dict(preset["train_config"]),
    }


# -- flags and presets -> TrainConfig -------------------------------------------------------------------------


def _int_tuple(flag: str, value: Any) -> Tuple[int, ...]:
    """Comma-separated integers (a string, or the list an absl list flag gives) as a tuple; errors name the flag."""
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        return tuple(int(x) for x in items if str(x).strip() != "")
    except (TypeError, ValueError):
        raise ConfigError(
            "--%s must be comma-separated integers, got %s" % (flag, ",".join(str(x) for x in items))
        ) from None


def _widths(flag: str, value: Any) -> Tuple[int, ...]:
    widths = _int_tuple(flag, value)
    if any(width < 1 for width in widths):
        raise ConfigError("--%s: every layer width must be >= 1, got %s" % (flag, ",".join(map(str, widths))))
    return widths


def _typed(kind: Callable[[Any], Any]) -> Callable[[str, Any], Any]:
    return lambda flag, value: kind(value)


# Flag name -> (model field, converter). The defaults are the flags' (Graphcore's sizes), not the classes'.
# fmt: off
MODEL_FLAGS: Dict[str, Tuple[str, Callable[[str, Any], Any]]] = {
    "attention": ("attention", _typed(str)), "attention_normalization": ("attention_normalization", _typed(str)),
    "attention_hidden": ("attention_hidden", _widths), "attention_activation": ("attention_activation", _typed(str)),
    "split_attention": ("split_attention", _typed(bool)), "activation": ("activation", _typed(str)),
    "mlp_hidden": ("mlp_hidden", _widths), "item_dim": ("item_dim", _typed(int)),
    "category_dim": ("category_dim", _typed(int)), "user_dim": ("user_dim", _typed(int)),
    "item_bias": ("use_item_bias", _typed(bool)), "history_sum": ("use_history_sum", _typed(bool)),
    "dropout": ("dropout_rate", _typed(float)), "pooling": ("pooling", _typed(str)),
    "pnn_product": ("product", _typed(str)), "wide_buckets": ("wide_buckets", _typed(int)),
    "attention_heads": ("attention_heads", _typed(int)), "evolution": ("evolution", _typed(str)),
    "aux_loss_weight": ("aux_loss_weight", _typed(float)), "transformer_blocks": ("transformer_blocks", _typed(int)),
    "bst_output": ("bst_output", _typed(str)), "causal_attention": ("causal_attention", _typed(bool)),
}
MODEL_FLAG_DEFAULTS: Dict[str, Any] = {
    "model": "din", "attention_size": 36, "item_dim": None, "category_dim": None, "user_dim": 0,
    "item_bias": True, "history_sum": False, "attention": "din", "attention_normalization": "none",
    "attention_hidden": (80, 40), "attention_activation": "sigmoid", "split_attention": True,
    "activation": "prelu", "mlp_hidden": (200, 80), "dropout": 0.0, "pooling": "mean", "pnn_product": "inner",
    "wide_buckets": 2 ** 18, "attention_heads": 2, "evolution": "augru", "aux_loss_weight": 1.0,
    "transformer_blocks": 1, "bst_output": "target", "causal_attention": False,
}
# fmt: on
_WIDTH_FLAGS = {
    "attention_size": ("item_dim", "category_dim"),
    "item_dim": ("item_dim",),
    "category_dim": ("category_dim",),
}
# TrainConfig fields set by flags of the same name.
TRAIN_FLAGS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("model", "model_config"))
# Graphcore's name for --lr_schedule.
ALIASES = ("lr_type",)


def _model_fields_of_flags(flag: Dict[str, Any], names: Sequence[str]) -> Dict[str, Any]:
    """The model fields the flags ``names`` set, in order (``attention_size``: both widths; a width flag of None:
    nothing)."""
    fields: Dict[str, Any] = {}
    for name in names:
        if name == "attention_size":
            size = int(flag[name])
            if size < 2 or size % 2:
                raise ConfigError("--attention_size must be an even number >= 2 (item + category), got %d" % size)
            fields["item_dim"] = fields["category_dim"] = size // 2
        elif name in ("item_dim", "category_dim"):
            if flag[name] is not None and int(flag[name]) < 1:
                raise ConfigError("--%s must be >= 1" % name)
            if flag[name] is not None:
                fields[name] = int(flag[name])
        else:
            field, convert = MODEL_FLAGS[name]
            fields[field] = convert(name, flag[name])
    return fields


def resolve_model(
    preset: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None, defaults: Optional[Dict[str, Any]] = None
) -> Tuple[str, Dict[str, Any]]:
    """The model name and the fields it has: defaults, then the preset, then the explicit flags.

    Fields the model lacks (``--attention`` means nothing to ``lr``) are dropped, with a warning for those set
    explicitly or by the preset, so that a grid can hand the same flags to every model.
    """
    overrides = dict(overrides or {})
    flag = dict(MODEL_FLAG_DEFAULTS, **(defaults or {}))
    flag.update({name: value for name, value in overrides.items() if name in flag})
    chosen = get_preset(preset) if preset else None
    model = chosen["model"] if chosen and "model" not in overrides else flag["model"]
    config: Dict[str, Any] = dict(chosen["model_config"]) if chosen else {}
    names = [
        n for n, (field, _) in MODEL_FLAGS.items() if n not in _WIDTH_FLAGS and (n in overrides or field not in config)
    ]
    if "attention_size" in overrides or "item_dim" not in config:
        names.append("attention_size")
    config.update(_model_fields_of_flags(flag, names + ["item_dim", "category_dim"]))
    try:
        known = model_fields(model)
    except ValueError as error:
        raise ConfigError("--model: %s" % error) from None
    explicit: Dict[str, list] = {}
    for name in overrides:
        fields = _WIDTH_FLAGS.get(name) or ((MODEL_FLAGS[name][0],) if name in MODEL_FLAGS else ())
        for field in fields:
            explicit.setdefault(field, []).append(name)
    preset_fields = set(chosen["model_config"]) if chosen else set()
    ignored = sorted(f for f in config if f not in known and (f in explicit or f in preset_fields))
    if ignored:
        names = sorted({"--" + name for field in ignored for name in explicit.get(field, ["preset"])})
        logging.warning("model %s has no field(s) %s: ignoring %s", model, ignored, ", ".join(names))
    return model, {field: value for field, value in config.items() if field in known}


def resolve_config(
    preset: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None, defaults: Optional[Dict[str, Any]] = None
) -> TrainConfig:
    """The validated TrainConfig of a preset and the flags given explicitly (flag name -> value).

    ``defaults``: a command's own flag defaults where they differ from TrainConfig's (the preset wins over them).

    Raises:
      ConfigError: an unknown flag name or preset, or an invalid value; the message names the flag.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(MODEL_FLAG_DEFAULTS) - set(TRAIN_FLAGS) - set(ALIASES))
    if unknown:
        raise ConfigError("unknown setting(s) %s" % ", ".join("--" + name for name in unknown))
    defaults = dict(defaults or {})
    model, model_config = resolve_model(preset, overrides, defaults)
    preset_train = get_preset(preset)["train_config"] if preset else {}
    values = {name: defaults[name] for name in TRAIN_FLAGS if name in defaults}
    values.update({name: preset_train[name] for name in TRAIN_FLAGS if name in preset_train})
    values.update({name: overrides[name] for name in TRAIN_FLAGS if name in overrides})
    if overrides.get("lr_type") is not None:
        if "lr_schedule" in overrides and overrides["lr_schedule"] != overrides["lr_type"]:
            raise ConfigError(
                "--lr_type %s contradicts --lr_schedule %s" % (overrides["lr_type"], overrides["lr_schedule"])
            )
        values["lr_schedule"] = overrides["lr_type"]
    if not _reads_packed(model) and "batching" not in overrides and "batching" not in preset_train:
        values["batching"] = "padded"  # the default, packed, is for models that pool positions
    if "length_buckets" in values:
        values["length_buckets"] = _int_tuple("length_buckets", values["length_buckets"])
    if "synthetic_samples" in values:
        try:
            samples = tuple(int(x) for x in values["synthetic_samples"])
        except (TypeError, ValueError):
            samples = ()
        if len(samples) != 3 or min(samples) < 1:
            raise ConfigError("--synthetic_samples must be three positive integers train,validation,test")
        values["synthetic_samples"] = samples
    return TrainConfig(model=model, model_config=model_config, **values).validate()


# -- checkpoint metadata <-> TrainConfig ----------------------------------------------------------------------


def checkpoint_metadata(
    config: TrainConfig,
    vocab: Dict[str, int],
    step: int,
    extra: Optional[Dict[str, Any]] = None,
    data_fingerprint: Optional[str] = None,
):
    """What a checkpoint records of its run, enough for ``config_from_checkpoint`` to score as the run did."""
    meta = {
        "model": config.model,
        "model_config": config.model_config,
        "data_type": config.data_type,
        "max_seq_len": config.max_seq_len,
        "vocabulary": vocab,
        "dataset": os.path.abspath(config.dataset) if config.dataset else None,
        "use_synthetic_data": config.use_synthetic_data,
        # The synthetic splits are drawn one after the other from one seed: the test set depends on every size.
        "synthetic_samples": list(config.synthetic_samples) if config.use_synthetic_data else None,
        "seed": config.seed,
        "eval_micro_batch_size": config.eval_micro_batch_size,
        "length_buckets": list(config.length_buckets),
        "batching": config.batching,
        "step": int(step),
    }
    if data_fingerprint is not None:
        meta["data_fingerprint"] = data_fingerprint  # what --resume checks the dataset against
    meta.update(extra or {})
    return meta


def config_from_checkpoint(meta: Dict[str, Any], overrides: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """The run's settings from a checkpoint's metadata, overridden by the flags given explicitly (not validated).

    A model flag that changes a shape shows up later as a mismatch with the checkpoint's arrays.
    """
    overrides = dict(overrides or {})
    if overrides.get("preset"):
        raise ConfigError("--preset is for train.py: the model and its sizes come from the checkpoint")
    for key in ("model", "model_config", "max_seq_len"):
        if key not in meta:
            raise ConfigError("the checkpoint's metadata has no %r" % key)
    if (
        meta.get("use_synthetic_data")
        and "max_seq_len" in overrides
        and "dataset" not in overrides
        and overrides["max_seq_len"] != meta.get("max_seq_len")
    ):
        raise ConfigError(
            "--max_seq_len %d: the checkpoint was trained on synthetic data drawn with max_seq_len %s, "
            "and another value draws another test set" % (overrides["max_seq_len"], meta["max_seq_len"])
        )
    model_config = dict(meta["model_config"])
    # Every model flag given explicitly sets its field, whatever the model (a mismatch shows at loading).
    given = [name for name in MODEL_FLAGS if name in overrides and name not in _WIDTH_FLAGS]
    given += [name for name in ("attention_size", "item_dim", "category_dim") if name in overrides]
    model_config.update(_model_fields_of_flags(dict(MODEL_FLAG_DEFAULTS, **overrides), given))
    defaults = TrainConfig()

    def pick(name: str, stored: Any) -> Any:
        if name in overrides:
            return overrides[name]
        return getattr(defaults, name) if stored is None else stored

    use_synthetic = bool(overrides.get("use_synthetic_data")) or (
        "dataset" not in overrides and bool(meta.get("use_synthetic_data", False))
    )
    micro_batch_size = overrides.get("micro_batch_size", defaults.micro_batch_size)
    buckets = overrides["length_buckets"] if "length_buckets" in overrides else meta.get("length_buckets") or ()
    return TrainConfig(
        model=overrides.get("model", meta["model"]),
        model_config=model_config,
        dataset=None if use_synthetic else pick("dataset", meta.get("dataset")),
        use_synthetic_data=use_synthetic,
        synthetic_samples=tuple(int(x) for x in pick("synthetic_samples", meta.get("synthetic_samples"))),
        max_seq_len=int(pick("max_seq_len", meta.get("max_seq_len"))),
        data_type=pick("data_type", meta.get("data_type")),
        micro_batch_size=micro_batch_size,
        eval_micro_batch_size=micro_batch_size,
        device_iterations=overrides.get("device_iterations", defaults.device_iterations),
        replicas=overrides.get("replicas", defaults.replicas),
        seed=int(pick("seed", meta.get("seed"))),
        prefetch=overrides.get("prefetch", defaults.prefetch),
        length_buckets=_int_tuple("length_buckets", buckets),
        # Either batching gives the same predictions; length buckets need padded batches.
        batching=overrides.get(
            "batching",
            "padded" if len(buckets) > 1 or not _reads_packed(overrides.get("model", meta["model"])) else "packed",
        ),
    )
