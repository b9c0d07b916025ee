"""Builds the parts of a run from a TrainConfig: data source, model, restored variables."""

import hashlib
import json
import os
from typing import Any, Dict, Optional

from din_jax import checkpoint as ckpt
from din_jax.config import ConfigError, TrainConfig
from din_jax.models import build_model
from din_jax.train.step import AXIS_NAME, compute_dtype, init_variables


def load_source(config: TrainConfig):
    """The dataset (or synthetic data) a config names."""
    if config.use_synthetic_data:
        from din_jax.data.synthetic import make_synthetic_dataset

        train, validation, test = config.synthetic_samples
        return make_synthetic_dataset(train, validation, test, max_seq_len=config.max_seq_len, seed=config.seed)
    from din_jax.data.dataset import load_dataset

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
        content["sources"] = [{k: v for k, v in entry.items() if k != "path"} if isinstance(entry, dict) else entry
                              for entry in content["sources"]]
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), default=ckpt._json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def checkpoint_metadata(config: TrainConfig, vocab: Dict[str, int], step: int, extra: Optional[Dict[str, Any]] = None,
                        data_fingerprint: Optional[str] = None):
    meta = {
        "model": config.model,
        "model_config": config.model_config,
        "data_type": config.data_type,
        "max_seq_len": config.max_seq_len,
        "vocabulary": vocab,
        "dataset": os.path.abspath(config.dataset) if config.dataset else None,
        "use_synthetic_data": config.use_synthetic_data,
        # The synthetic splits are drawn one after the other from one seed, so
        # the test set depends on every split's size.
        "synthetic_samples": list(config.synthetic_samples) if config.use_synthetic_data else None,
        "seed": config.seed,
        # How train.py scored the splits, so that infer.py scores them the same way.
        "eval_micro_batch_size": config.eval_micro_batch_size,
        "length_buckets": list(getattr(config, "length_buckets", ())),
        "step": int(step),
    }
    if data_fingerprint is not None:
        meta["data_fingerprint"] = data_fingerprint  # what --resume checks the dataset against
    meta.update(extra or {})
    return meta


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


