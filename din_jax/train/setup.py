"""Builds the parts of a run from a TrainConfig: data source, model, optimiser, state and compiled programs.

``create_programs`` is what training and the benchmark both run, so that a measured program is the trained one.
"""

import hashlib
import json
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import optax

from din_jax import checkpoint as ckpt
from din_jax.config import ConfigError, TrainConfig
from din_jax.data.dataset import load_dataset
from din_jax.data.synthetic import make_synthetic_dataset
from din_jax.fileio import json_default
from din_jax.models import build_model
from din_jax.train.optim import make_learning_rate_schedule, make_optimizer
from din_jax.train.regularization import Regularization
from din_jax.train.sparse_step import make_sparse_optimizer, make_sparse_train_step
from din_jax.train.step import (
    AXIS_NAME,
    TrainState,
    compute_dtype,
    create_train_state,
    init_variables,
    make_p_predict_chunk,
    make_p_train_chunk,
    make_train_step,
)


def load_source(config: TrainConfig):
    """The dataset (or synthetic data) a config names."""
    if config.use_synthetic_data:
        train, validation, test = config.synthetic_samples
        return make_synthetic_dataset(train, validation, test, max_seq_len=config.max_seq_len, seed=config.seed)
    return load_dataset(config.dataset)


def vocabulary(source) -> Dict[str, int]:
    return {"users": int(source.num_users), "items": int(source.num_items), "categories": int(source.num_categories)}


def build_model_for(config: TrainConfig, vocab: Dict[str, int], axis_name: Optional[str] = AXIS_NAME):
    model_config = dict(config.model_config)
    model_config["dtype"] = compute_dtype(config.data_type)
    try:
        return build_model(config.model, vocab["users"], vocab["items"], vocab["categories"], model_config, axis_name)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def dataset_fingerprint(source) -> str:
    """A sha256 naming a dataset's content (its ``meta.json``).

    ``created`` and the raw files' paths are left out: rebuilding the same
    files with the same parameters, or moving them, keeps the fingerprint;
    other raw files (their sha256), other build parameters or other split
    sizes change it.
    """
    content = {key: value for key, value in source.meta.items() if key != "created"}
    if isinstance(content.get("sources"), list):
        content["sources"] = [
            {k: v for k, v in entry.items() if k != "path"} if isinstance(entry, dict) else entry
            for entry in content["sources"]
        ]
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def restore_variables(template: Dict[str, Any], flat: Dict[str, Any], meta: Dict[str, Any], directory: str):
    """``{'params', 'batch_stats'}`` shaped like ``template`` from any checkpoint: ``best``, ``last`` or ``step_N``."""
    prefix = ckpt.variables_prefix(meta, flat)
    source = "checkpoint %s" % directory
    return {
        "params": ckpt.restore_tree(template["params"], flat, prefix=prefix + "params", source=source),
        "batch_stats": ckpt.restore_tree(template["batch_stats"], flat, prefix=prefix + "batch_stats", source=source),
    }


def load_variables_for_inference(path: str, config: TrainConfig, vocab: Dict[str, int]):
    """The model and its ``{'params', 'batch_stats'}`` from a checkpoint directory (``best``, ``last`` or ``step_N``)."""
    flat, meta = ckpt.load_checkpoint(path)
    model = build_model_for(config, vocab, axis_name=None)
    template = init_variables(model, 0, config.max_seq_len)
    return model, restore_variables(template, flat, meta, path)


def make_optimizer_for(config: TrainConfig, model) -> optax.GradientTransformation:
    """The optax optimiser, or the sparse-update one (``--embedding_updates sparse``)."""
    return make_sparse_optimizer(model, config) if config.embedding_updates == "sparse" else make_optimizer(config)


def make_p_train(
    model,
    devices: Optional[List[Any]],
    donate: bool = True,
    regularization: Optional[Regularization] = None,
    embedding_updates: str = "dense",
    positions_per_pass: int = 0,
    loss_scale: float = 1.0,
) -> Callable:
    """The pmapped train program of ``step.make_p_train_chunk`` with the dense or the sparse step.

    ``embedding_updates="sparse"`` needs a state made with ``make_sparse_optimizer``; ``positions_per_pass``
    applies to it (see ``make_sparse_train_step``); ``loss_scale``: see ``step.make_train_step``.
    """
    if embedding_updates == "sparse":
        train_step = make_sparse_train_step(
            model,
            AXIS_NAME,
            regularization=regularization,
            positions_per_pass=positions_per_pass,
            loss_scale=loss_scale,
        )
    else:
        train_step = make_train_step(model, AXIS_NAME, regularization=regularization, loss_scale=loss_scale)
    return make_p_train_chunk(train_step, devices, donate)


class Programs(NamedTuple):
    """A run's models, its fresh (host, unreplicated) state and its compiled programs."""

    model: Any
    eval_model: Any
    state: TrainState
    p_train: Callable
    p_predict: Callable
    schedule: Callable


def create_programs(
    config: TrainConfig,
    vocab: Dict[str, int],
    train_devices: Optional[List[Any]],
    predict_devices: List[Any],
    regularization: Optional[Regularization] = None,
) -> Programs:
    """The model, a fresh state and the train and predict programs of a config.

    Args:
      train_devices: the train program's devices; None for every device of every process (multi-process).
      regularization: MBA and/or L2 (``regularization.regularization_for(config, source)``).
    """
    model = build_model_for(config, vocab)
    eval_model = build_model_for(config, vocab, axis_name=None)
    state = create_train_state(model, make_optimizer_for(config, model), config.seed, config.max_seq_len)
    p_train = make_p_train(
        model,
        train_devices,
        donate=config.donate,
        regularization=regularization,
        embedding_updates=config.embedding_updates,
        positions_per_pass=config.positions_per_pass,
        loss_scale=config.effective_loss_scaling(),
    )
    p_predict = make_p_predict_chunk(eval_model, predict_devices, positions_per_pass=config.positions_per_pass)
    return Programs(model, eval_model, state, p_train, p_predict, make_learning_rate_schedule(config))
