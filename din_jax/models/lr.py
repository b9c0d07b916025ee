"""Logistic regression over the sparse features: the paper's weakest baseline.

The DIN paper (section 6.4) runs LR as a shallow baseline; the authors' code
has no LR. Here LR is a linear model over the one-hot and multi-hot id
features every other model sees: the candidate item and its category, the
history items and their categories (a multi-hot bag, normalised by the
pooling: mean by default, as the other models' bag features) and optionally
the user, with no feature crosses.

It shares the embedding layer: the weights live in ``FeatureEmbedding``
tables of width 2 per item and per category, column 0 being the id's weight
as the candidate and column 1 its weight in the history. The two fields are
distinct features in LR, so their weights are not tied, and the tables are
still where mini-batch aware regularisation finds embedding rows. The user
weight has width 1.

``LinearTerms`` is also the first-order part of DeepFM and the raw-feature
half of Wide&Deep's wide part.

Shape letters: B batch, T history positions.
"""

from typing import Dict, Optional

import flax.linen as nn
import jax.numpy as jnp

from din_jax.layers import FeatureEmbedding, history_mask

# Columns of the width-2 weight tables.
_AS_CANDIDATE, _IN_HISTORY = 0, 1
BAGS = ("mean", "sum")


def bag_of(pooling) -> str:
    """The bag normalisation that goes with a model's history pooling: ``sum`` for ``sum``, else ``mean``."""
    return "sum" if pooling == "sum" else "mean"


def pool_bag(values_BxTxK, mask_BxT, bag: str):
    """Masked mean (``bag='mean'``) or sum over the history axis, float32 ``[B, K]``; empty histories give 0."""
    if bag not in BAGS:
        raise ValueError("unknown bag normalisation %r; choose from %s" % (bag, list(BAGS)))
    weights_BxT = mask_BxT.astype(jnp.float32)
    if bag == "mean":
        weights_BxT = weights_BxT / jnp.maximum(jnp.sum(weights_BxT, axis=-1, keepdims=True), 1.0)
    return jnp.einsum("bt,btk->bk", weights_BxT, values_BxTxK.astype(jnp.float32))


class LinearTerms(nn.Module):
    """``sum`` of the weights of the active sparse features (no bias), float32 ``[B]``.

    Attributes:
      num_items, num_categories, num_users: vocabulary sizes.
      use_user: add a weight per user id.
      bag: how the history bag is normalised: ``mean`` (weights averaged
        over the valid positions) or ``sum``.
    """

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
        history_BxTx4 = embedded["history"]
        mask_BxT = history_mask(batch["hist_len"], history_BxTx4.shape[1])
        pooled_Bx4 = pool_bag(history_BxTx4, mask_BxT, self.bag)
        logits_B = (candidate_Bx4[:, _AS_CANDIDATE] + candidate_Bx4[:, 2 + _AS_CANDIDATE]
                    + pooled_Bx4[:, _IN_HISTORY] + pooled_Bx4[:, 2 + _IN_HISTORY])
        if embedded["user"] is not None:
            logits_B = logits_B + embedded["user"][:, 0]
        return logits_B.astype(jnp.float32)


class LogisticRegression(nn.Module):
    """LR: a bias plus ``LinearTerms`` (submodule ``linear``).

    Attributes:
      num_items, num_categories, num_users: vocabulary sizes.
      user_dim: > 0 adds the user id as a feature. LR's weights are scalars,
        so only whether it is positive matters (it is the same flag as the
        other models' user embedding width).
      pooling: normalisation of the history bag, ``mean`` or ``sum``.
      dtype: unused (LR computes in float32); accepted like every model's.
      axis_name: unused (no cross-device statistics); accepted likewise.
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
