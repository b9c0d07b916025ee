"""DeepFM (Guo et al., IJCAI 2017) as the DIN paper's competitor: BaseModel plus an FM part.

The logit is ``BaseModel``'s MLP plus a factorisation machine sharing its embeddings, as in the DeepFM paper:
first order ``LinearTerms`` (as LR), second order ``sum_{i<j} <v_i, v_j>`` over ``field_vectors``.
Deliberately differs from the authors' code (``deepFM/model.py``), whose "FM part" is a dense layer over two
numbers (pooled history . candidate, the sum of their first coordinates), added in training but left out of
the scores they evaluate: here it is the FM of the fields, always in the logit.

Shape letters: B batch, F fields, E field width.
"""

from typing import Dict

import flax.linen as nn
import jax.numpy as jnp

from din_jax.models.base import BaseModel, add_item_bias, deep_logits, embed_and_pool, field_vectors
from din_jax.models.lr import LinearTerms, bag_of


def fm_second_order(fields_BxFxE):
    """``sum_{i<j} <v_i, v_j>`` per sample, float32 ``[B]`` (Rendle's O(F E) identity)."""
    fields_BxFxE = fields_BxFxE.astype(jnp.float32)
    sum_BxE = jnp.sum(fields_BxFxE, axis=1)
    return 0.5 * jnp.sum(sum_BxE * sum_BxE - jnp.sum(fields_BxFxE * fields_BxFxE, axis=1), axis=-1)


class DeepFM(BaseModel):
    """DeepFM: ``BaseModel``'s MLP plus FM terms; the first-order history bag is summed for ``pooling='sum'``,
    averaged otherwise."""

    @nn.compact
    def __call__(self, batch: Dict[str, jnp.ndarray], train: bool = False) -> jnp.ndarray:
        """Scores a batch dict (docs/DATASET_FORMAT.md); returns float32 logits ``[B]``."""
        inputs = embed_and_pool(self, batch, train)
        deep_B = deep_logits(self, inputs, (), train)
        first_B = LinearTerms(
            num_items=self.num_items,
            num_categories=self.num_categories,
            num_users=self.num_users,
            use_user=self.user_dim > 0,
            bag=bag_of(self.pooling),
            name="fm_first_order",
        )(batch)
        second_B = fm_second_order(field_vectors(self, inputs))
        return add_item_bias(deep_B + first_B + second_B, inputs)
