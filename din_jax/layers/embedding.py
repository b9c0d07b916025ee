"""The shared embedding layer of every model.

An item vector is the concatenation of the item embedding and its category
embedding; the candidate and the history use the same tables.

Shape letters: B batch, T history positions, D item-vector width
(item_dim + category_dim), U user width.
"""

from typing import Dict, Optional

import flax.linen as nn
import jax.numpy as jnp

# Parameter names of the tables, used by the train step to find embedding rows
# (sparse updates, mini-batch aware regularisation).
ITEM_TABLE = "item"
CATEGORY_TABLE = "category"
USER_TABLE = "user"
ITEM_BIAS_TABLE = "item_bias"


def lookup(table_VxE, ids):
    """Gathers rows of ``table`` for ids of any shape.

    The ids are flattened to 1-D before the gather and the result reshaped
    after: 1-D gathers (and their scatter-add gradients) take the fast path on
    IPU and are never slower elsewhere.
    """
    flat = jnp.take(table_VxE, ids.reshape(-1).astype(jnp.int32), axis=0)
    return flat.reshape(ids.shape + table_VxE.shape[1:])


class FeatureEmbedding(nn.Module):
    """Item, category, optional user embeddings and an optional per-item bias.

    Attributes:
      num_items, num_categories, num_users: vocabulary sizes.
      item_dim, category_dim: widths; the item vector is item ⊕ category.
      user_dim: width of the user embedding, 0 for none (the authors' Amazon
        model has none; the DIEN/Graphcore variant has one).
      use_item_bias: a learnt scalar per candidate item added to the logit, as
        in the authors' code.
      dtype: dtype of the returned vectors (tables stay float32).
    """

    num_items: int
    num_categories: int
    num_users: int = 0
    item_dim: int = 64
    category_dim: int = 64
    user_dim: int = 0
    use_item_bias: bool = True
    dtype: jnp.dtype = jnp.float32

    @property
    def item_vector_dim(self) -> int:
        return self.item_dim + self.category_dim

    @nn.compact
    def __call__(self, batch: Dict[str, jnp.ndarray]) -> Dict[str, Optional[jnp.ndarray]]:
        """Embeds a batch dict (see docs/DATASET_FORMAT.md).

        Returns:
          ``candidate`` [B, D], ``history`` [B, T, D], ``user`` [B, U] or None,
          ``item_bias`` [B] or None.
        """
        # Glorot-uniform over the whole table, like the TensorFlow default the
        # authors' code relied on: small rows for large vocabularies.
        init = nn.initializers.glorot_uniform()
        item_table = self.param(ITEM_TABLE, init, (self.num_items, self.item_dim), jnp.float32)
        category_table = self.param(CATEGORY_TABLE, init, (self.num_categories, self.category_dim), jnp.float32)

        candidate_BxD = jnp.concatenate(
            [lookup(item_table, batch["item"]), lookup(category_table, batch["category"])], axis=-1
        )
        history_BxTxD = jnp.concatenate(
            [lookup(item_table, batch["hist_item"]), lookup(category_table, batch["hist_category"])], axis=-1
        )
        user_BxU = None
        if self.user_dim > 0:
            if self.num_users <= 0:
                raise ValueError("user_dim > 0 needs num_users > 0")
            user_table = self.param(USER_TABLE, init, (self.num_users, self.user_dim), jnp.float32)
            user_BxU = lookup(user_table, batch["user"]).astype(self.dtype)
        item_bias_B = None
        if self.use_item_bias:
            bias_table = self.param(ITEM_BIAS_TABLE, nn.initializers.zeros, (self.num_items, 1), jnp.float32)
            item_bias_B = lookup(bias_table, batch["item"])[..., 0]
        return {
            "candidate": candidate_BxD.astype(self.dtype),
            "history": history_BxTxD.astype(self.dtype),
            "user": user_BxU,
            "item_bias": item_bias_B,
        }


def history_mask(hist_len_B, max_len: int):
    """Boolean ``[B, T]`` mask of the valid (left-aligned) history positions."""
    return jnp.arange(max_len, dtype=jnp.int32)[None, :] < hist_len_B.astype(jnp.int32)[:, None]
