"""Logistic regression over the sparse features: the DIN paper's shallow baseline (section 6.4; the authors'
code has none).

A linear model, no crosses, over the ids every other model sees: candidate item and category, the history items
and categories (a multi-hot bag, mean by default like the other models' pooling, or sum) and optionally the
user. The weights live in ``FeatureEmbedding`` tables (so mini-batch aware regularisation finds them) of width 2
per item and category: column 0 the id's weight as the candidate, column 1 in the history (distinct features,
untied weights); the user's has width 1. ``LinearTerms`` is also DeepFM's first order and half of Wide&Deep's
wide part.

Shape letters: B batch, P history positions (``din_jax.layers.History``).
"""

from typing import Dict, Optional

import flax.linen as nn
import jax.numpy as jnp

from din_jax.layers import FeatureEmbedding, History

# Columns of the width-2 weight tables.
_AS_CANDIDATE, _IN_HISTORY = 0, 1
BAGS = ("mean", "sum")


def bag_of(pooling) -> str:
    """The bag normalisation that goes with a model's history pooling: ``sum`` for ``sum``, else ``mean``."""
    return "sum" if pooling == "sum" else "mean"


def pool_bag(values_PxK, positions: History, bag: str):
    """Masked mean (``bag='mean'``) or sum over each sample's history, float32 ``[B, K]``; empty histories give 0."""
    if bag not in BAGS:
        raise ValueError("unknown bag normalisation %r; choose from %s" % (bag, list(BAGS)))
    weights_P = positions.valid_P.astype(jnp.float32)
    if bag == "mean":
        weights_P = weights_P / positions.spread(jnp.maximum(positions.count(), 1.0))
    return positions.weighted_sum(weights_P, values_PxK.astype(jnp.float32))


class LinearTerms(nn.Module):
    """The sum of the active sparse features' weights (no bias), float32 ``[B]``; ``use_user``: a weight per user
    id too; ``bag``: the history bag's weights averaged over the valid positions (``mean``) or summed."""

    num_items: int
    num_categories: int
    num_users: int = 0
    use_user: bool = False
    bag: str = "mean"

    @nn.compact
    def __call__(self, batch: Dict[str, jnp.ndarray]) -> jnp.ndarray:
        embedded = FeatureEmbedding(
            num_items=self.num_items,
            num_categories=self.num_categories,
            num_users=self.num_users,
            item_dim=2,
            category_dim=2,
            user_dim=1 if self.use_user else 0,
            use_item_bias=False,
            dtype=jnp.float32,
            name="embedding",
        )(batch)
        # Columns: item as candidate, item in history, category as candidate, category in history.
        candidate_Bx4 = embedded["candidate"]
        pooled_Bx4 = pool_bag(embedded["history"], embedded["positions"], self.bag)
        logits_B = (
            candidate_Bx4[:, _AS_CANDIDATE]
            + candidate_Bx4[:, 2 + _AS_CANDIDATE]
            + pooled_Bx4[:, _IN_HISTORY]
            + pooled_Bx4[:, 2 + _IN_HISTORY]
        )
        if embedded["user"] is not None:
            logits_B = logits_B + embedded["user"][:, 0]
        return logits_B.astype(jnp.float32)


class LogisticRegression(nn.Module):
    """LR: a bias plus ``LinearTerms`` (submodule ``linear``).

    ``user_dim`` > 0 adds the user id (only its sign matters: the other models' user width as a flag);
    ``pooling``: the history bag's normalisation, ``mean`` or ``sum``; ``dtype`` and ``axis_name`` are accepted
    like every model's and unused (float32, no cross-device statistics).
    """

    num_items: int
    num_categories: int
    num_users: int = 0
    user_dim: int = 0
    pooling: str = "mean"
    dtype: jnp.dtype = jnp.float32
    axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, batch: Dict[str, jnp.ndarray], train: bool = False) -> jnp.ndarray:
        """Scores a batch dict (docs/DATASET_FORMAT.md); returns float32 logits ``[B]``."""
        del train  # no dropout, no batch statistics
        if self.pooling not in BAGS:
            raise ValueError("lr pools the history bag with %s, got pooling=%r" % (list(BAGS), self.pooling))
        bias = self.param("bias", nn.initializers.zeros, (), jnp.float32)
        linear_B = LinearTerms(
            num_items=self.num_items,
            num_categories=self.num_categories,
            num_users=self.num_users,
            use_user=self.user_dim > 0,
            bag=self.pooling,
            name="linear",
        )(batch)
        return linear_B + bias
