"""Models by name (presets, named configurations of them, are in din_jax.config)."""

import dataclasses
from typing import Any, Dict, Optional

import flax.linen as nn

from din_jax.layers import Registry
from din_jax.models.base import BaseModel
from din_jax.models.bst import BST
from din_jax.models.deepfm import DeepFM
from din_jax.models.dien import DIEN
from din_jax.models.din import DIN
from din_jax.models.lr import LogisticRegression
from din_jax.models.pnn import PNN
from din_jax.models.wide_deep import WideDeep

MODELS = Registry("model")
MODELS.register("din", DIN)
# The DIN paper's competitors (section 6.4), all on the same embedding layer.
MODELS.register("lr", LogisticRegression)
MODELS.register("base", BaseModel)
MODELS.register("wide_deep", WideDeep)
MODELS.register("pnn", PNN)
MODELS.register("deepfm", DeepFM)
# The DIN family's next models: interest evolution (AAAI 2019) and self-attention over the history (DLP-KDD 2019).
MODELS.register("dien", DIEN)
MODELS.register("bst", BST)


def register_model(name: str, factory, overwrite: bool = False):
    """Adds a model class to the registry (usable as ``--model NAME``)."""
    return MODELS.register(name, factory, overwrite)


def model_fields(name_or_factory) -> Dict[str, Any]:
    """The configurable fields of a registered model and their defaults."""
    cls = MODELS.get(name_or_factory)
    fields = {}
    for field in dataclasses.fields(cls):
        if field.name in ("parent", "name") or not field.init:
            continue
        fields[field.name] = field.default if field.default is not dataclasses.MISSING else None
    return fields


def reads_packed_history(name_or_factory) -> bool:
    """Whether a model scores packed batches; a model that reads each history as a row (a GRU, self-attention)
    sets the class attribute ``packed_history = False`` and trains on padded ones."""
    return bool(getattr(MODELS.get(name_or_factory), "packed_history", True))


def wants_history_negatives(name_or_factory, config: Optional[Dict[str, Any]] = None) -> bool:
    """Whether a model's training batches need a sampled negative per history position (DIEN's auxiliary loss):
    the model's static ``history_negatives(fields)`` for its fields with ``config`` applied (default: no)."""
    decide = getattr(MODELS.get(name_or_factory), "history_negatives", None)
    return bool(decide is not None and decide(dict(model_fields(name_or_factory), **(config or {}))))


def build_model(
    name: str,
    num_users: int,
    num_items: int,
    num_categories: int,
    config: Optional[Dict[str, Any]] = None,
    axis_name: Optional[str] = None,
) -> nn.Module:
    """Instantiates model ``name`` for the given vocabulary sizes.

    Args:
      config: model fields (unknown keys raise, so a typo never goes unseen).
      axis_name: the pmap axis for cross-device statistics, or None.
    """
    config = dict(config or {})
    known = model_fields(name)
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ValueError("model %r has no field(s) %s; its fields are %s" % (name, unknown, sorted(known)))
    return MODELS.get(name)(
        num_users=num_users, num_items=num_items, num_categories=num_categories, axis_name=axis_name, **config
    )


__all__ = [
    "BST",
    "DIEN",
    "DIN",
    "MODELS",
    "PNN",
    "BaseModel",
    "DeepFM",
    "LogisticRegression",
    "WideDeep",
    "build_model",
    "model_fields",
    "reads_packed_history",
    "register_model",
    "wants_history_negatives",
]
