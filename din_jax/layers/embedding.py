"""The shared embedding layer of every model.

An item vector is the concatenation of the item embedding and its category
embedding; the candidate and the history use the same tables.

Shape letters: B batch, T history positions, D item-vector width
(item_dim + category_dim), U user width.
"""

import dataclasses
from typing import Any, Dict, List, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Parameter names of the tables, used by the train step to find embedding rows
# (sparse updates, mini-batch aware regularisation).
ITEM_TABLE = "item"
CATEGORY_TABLE = "category"
USER_TABLE = "user"
ITEM_BIAS_TABLE = "item_bias"

# Variable collections of the sparse embedding updates (din_jax/train/sparse_step.py):
# per table, the rows looked up in a forward pass ([N, E], zeros) are added to
# the gathered rows, so that the gradient with respect to them is the
# per-lookup row gradient; and the ids looked up (with a 0/1 validity weight,
# 0 at padded history positions) are recorded. Absent or immutable, they
# change nothing.
EMBEDDING_DELTA = "embedding_delta"
EMBEDDING_LOOKUPS = "embedding_lookups"


def lookup(table_VxE, ids):
    """Gathers rows of ``table`` for ids of any shape.

    The ids are flattened to 1-D before the gather and the result reshaped
    after: 1-D gathers (and their scatter-add gradients) take the fast path on
    IPU and are never slower elsewhere.
    """
    flat = jnp.take(table_VxE, ids.reshape(-1).astype(jnp.int32), axis=0)
    return flat.reshape(ids.shape + table_VxE.shape[1:])


class EmbeddingFields(nn.Module):
    """The fields of the embedding layer, shared with every model that owns one.

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

    def embedding_fields(self) -> Dict[str, Any]:
        """This module's values of the ``EmbeddingFields`` fields, to build a ``FeatureEmbedding`` from."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(EmbeddingFields)
                if field.name not in ("parent", "name")}


class FeatureEmbedding(EmbeddingFields):
    """Item, category, optional user embeddings and an optional per-item bias (fields: ``EmbeddingFields``)."""

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

        ones_B = jnp.ones(batch["item"].shape, jnp.float32)
        valid_BxT = history_mask(batch["hist_len"], batch["hist_item"].shape[1]).astype(jnp.float32)
        item_B, hist_item_BxT = self._lookup_rows(ITEM_TABLE, item_table, [batch["item"], batch["hist_item"]],
                                                  [ones_B, valid_BxT])
        category_B, hist_category_BxT = self._lookup_rows(
            CATEGORY_TABLE, category_table, [batch["category"], batch["hist_category"]], [ones_B, valid_BxT])
        candidate_BxD = jnp.concatenate([item_B, category_B], axis=-1)
        history_BxTxD = jnp.concatenate([hist_item_BxT, hist_category_BxT], axis=-1)
        user_BxU = None
        if self.user_dim > 0:
            if self.num_users <= 0:
                raise ValueError("user_dim > 0 needs num_users > 0")
            user_table = self.param(USER_TABLE, init, (self.num_users, self.user_dim), jnp.float32)
            user_BxU = self._lookup_rows(USER_TABLE, user_table, [batch["user"]], [ones_B])[0].astype(self.dtype)
        item_bias_B = None
        if self.use_item_bias:
            bias_table = self.param(ITEM_BIAS_TABLE, nn.initializers.zeros, (self.num_items, 1), jnp.float32)
            item_bias_B = self._lookup_rows(ITEM_BIAS_TABLE, bias_table, [batch["item"]], [ones_B])[0][..., 0]
        return {
            "candidate": candidate_BxD.astype(self.dtype),
            "history": history_BxTxD.astype(self.dtype),
            "user": user_BxU,
            "item_bias": item_bias_B,
        }

    def _lookup_rows(self, name: str, table_VxE, ids_list: List[jnp.ndarray],
                     valid_list: List[jnp.ndarray]) -> List[jnp.ndarray]:
        """The rows of ``table`` for each id array; the sparse-update hooks when they are active.

        Without the ``EMBEDDING_DELTA``/``EMBEDDING_LOOKUPS`` collections this
        is one ``lookup`` per id array. With them, the ids of all arrays are
        gathered at once (the order the delta rows and recorded ids follow),
        the recorded ids get the validity weights ``valid_list``, and the
        delta is added to the (gradient-stopped) rows.
        """
        record = self.is_mutable_collection(EMBEDDING_LOOKUPS) and not self.is_initializing()
        delta = self.get_variable(EMBEDDING_DELTA, name) if self.has_variable(EMBEDDING_DELTA, name) else None
        if not record and delta is None:
            return [lookup(table_VxE, ids) for ids in ids_list]
        flat_ids = jnp.concatenate([ids.reshape(-1).astype(jnp.int32) for ids in ids_list])
        rows_NxE = jnp.take(table_VxE, flat_ids, axis=0)
        if record:
            valid = jnp.concatenate([v.reshape(-1).astype(jnp.float32) for v in valid_list])
            if self.has_variable(EMBEDDING_LOOKUPS, name):
                raise ValueError("sparse embedding updates need one FeatureEmbedding call per forward pass")
            # put_variable, not sow: flax 0.6.0 reserves sown names, which clash with the table's.
            self.put_variable(EMBEDDING_LOOKUPS, name, (flat_ids, valid))
        if delta is not None:
            # The table gets no gradient of its own: the optimiser updates the
            # looked-up rows from the gradient of the delta.
            rows_NxE = jax.lax.stop_gradient(rows_NxE) + delta.astype(rows_NxE.dtype)
        out, start = [], 0
        for ids in ids_list:
            size = int(np.prod(ids.shape))
            out.append(rows_NxE[start:start + size].reshape(ids.shape + table_VxE.shape[1:]))
            start += size
        return out


def history_mask(hist_len_B, max_len: int):
    """Boolean ``[B, T]`` mask of the valid (left-aligned) history positions."""
    return jnp.arange(max_len, dtype=jnp.int32)[None, :] < hist_len_B.astype(jnp.int32)[:, None]
