"""Wide&Deep (Cheng et al., 2016) as the DIN paper's competitor: BaseModel plus a wide linear part.

Follows the DIN paper (section 6.4: a linear model over "cross-product" features) and, for the deep part, the
authors' base model. The wide part is linear over the raw sparse features (``LinearTerms``) and two crosses of
candidate × history, (category, history category) and (item, history category), one learnt scalar per cross
id, pooled over the valid history positions like the history bag. Cross ids are exact (``cand * C + hist``)
when they fit in ``wide_buckets`` rows, else hashed into them; mini-batch aware regularisation leaves these
weights alone (plain ``--l2`` does not).

Deliberately differs from the authors' code (``wide_deep/model.py``), whose "wide" part is a dense layer over
the products of three fixed coordinates (0, 64, 127) of the pooled history and the candidate: neither sparse
nor a cross of features, which is what Wide&Deep means.

Shape letters: B batch, P history positions (``din_jax.layers.History``).
"""

from typing import Dict

import flax.linen as nn
import jax.numpy as jnp

from din_jax.layers import lookup
from din_jax.models.base import BaseModel, add_item_bias, deep_logits, embed_and_pool
from din_jax.models.lr import LinearTerms, bag_of, pool_bag


def cross_ids(left_P, right_P, right_vocab: int, rows: int):
    """Row of each (left, right) pair in a table of ``rows`` rows, int32: ``left * right_vocab + right`` in uint32
    (wrapping around) modulo ``rows``, exact when every pair has its own row, else a deterministic hash. ``left``
    may have fewer axes (``[B]`` against ``[B, T]``)."""
    left_P = left_P.reshape(left_P.shape + (1,) * (right_P.ndim - left_P.ndim))
    pair_P = left_P.astype(jnp.uint32) * jnp.uint32(right_vocab) + right_P.astype(jnp.uint32)
    return (pair_P % jnp.uint32(rows)).astype(jnp.int32)


class WideDeep(BaseModel):
    """Wide&Deep: ``BaseModel``'s MLP plus a linear model over raw and crossed ids.

    ``wide_buckets``: rows of each cross table (hashing beyond). The wide part's bags are summed for
    ``pooling='sum'`` and averaged otherwise.
    """

    wide_buckets: int = 2**18

    @nn.compact
    def __call__(self, batch: Dict[str, jnp.ndarray], train: bool = False) -> jnp.ndarray:
        """Scores a batch dict (docs/DATASET_FORMAT.md); returns float32 logits ``[B]``."""
        if self.wide_buckets < 1:
            raise ValueError("wide_buckets must be >= 1, got %d" % self.wide_buckets)
        inputs = embed_and_pool(self, batch, train)
        deep_B = deep_logits(self, inputs, (), train)

        raw_B = LinearTerms(
            num_items=self.num_items,
            num_categories=self.num_categories,
            num_users=self.num_users,
            use_user=self.user_dim > 0,
            bag=bag_of(self.pooling),
            name="wide_linear",
        )(batch)
        category_rows = min(self.num_categories * self.num_categories, self.wide_buckets)
        item_rows = min(self.num_items * self.num_categories, self.wide_buckets)
        category_cross = self.param("category_cross", nn.initializers.zeros, (category_rows, 1), jnp.float32)
        item_cross = self.param("item_category_cross", nn.initializers.zeros, (item_rows, 1), jnp.float32)
        positions = inputs.positions
        hist_category_P = positions.flat(batch["hist_category"])
        category_P, item_P = positions.spread(batch["category"]), positions.spread(batch["item"])
        crossed_Px2 = jnp.concatenate(
            [
                lookup(category_cross, cross_ids(category_P, hist_category_P, self.num_categories, category_rows)),
                lookup(item_cross, cross_ids(item_P, hist_category_P, self.num_categories, item_rows)),
            ],
            axis=-1,
        )
        # The crosses are a bag over the history positions, normalised like the history bag.
        wide_B = raw_B + jnp.sum(pool_bag(crossed_Px2, positions, bag_of(self.pooling)), axis=-1)
        return add_item_bias(deep_B + wide_B, inputs)
