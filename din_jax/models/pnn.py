"""Product-based Neural Network (Qu et al., ICDM 2016) as the DIN paper's competitor.

BaseModel plus a product layer: the inner products of every pair of field vectors (``field_vectors``) join the
MLP's input, as in IPNN and FuxiCTR's PNN (the embeddings are the product layer's "linear signal").
Deliberately differs from the authors' code (``pnn/model.py``), whose "PNN" is the base model whose MLP also sees
pooled history * candidate (DIN's MLP input with mean pooling), no inner products: ``product='elementwise'``
gives that, ``'both'`` the two together.

Shape letters: B batch, F fields, E field width.
"""

from typing import Dict

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from din_jax.models.base import BaseModel, add_item_bias, deep_logits, embed_and_pool, field_vectors

PRODUCTS = ("inner", "elementwise", "both")


def pairwise_inner_products(fields_BxFxE):
    """``<f_i, f_j>`` for every pair ``i < j`` of fields, ``[B, F (F - 1) / 2]``."""
    num_fields = fields_BxFxE.shape[1]
    gram_BxFxF = jnp.einsum("bfe,bge->bfg", fields_BxFxE, fields_BxFxE)
    rows, cols = np.triu_indices(num_fields, k=1)
    return gram_BxFxF[:, rows, cols]


class PNN(BaseModel):
    """PNN: ``BaseModel`` whose MLP also sees products: ``product`` ``inner``, ``elementwise`` or ``both``."""

    product: str = "inner"

    @nn.compact
    def __call__(self, batch: Dict[str, jnp.ndarray], train: bool = False) -> jnp.ndarray:
        """Scores a batch dict (docs/DATASET_FORMAT.md); returns float32 logits ``[B]``."""
        if self.product not in PRODUCTS:
            raise ValueError("unknown PNN product %r; choose from %s" % (self.product, list(PRODUCTS)))
        inputs = embed_and_pool(self, batch, train)
        extra = []
        if self.product in ("inner", "both"):
            extra.append(pairwise_inner_products(field_vectors(self, inputs)))
        if self.product in ("elementwise", "both"):
            extra.append(inputs.pooled_BxD * inputs.candidate_BxD)
        return add_item_bias(deep_logits(self, inputs, extra, train), inputs)
