"""The embedding layer every model shares: item ⊕ category vectors of the candidate and the history, the user vector
and the per-item bias, and the collections through which the train step updates embedding rows sparsely.

Shape letters as in ``din_jax.layers``.
"""

import dataclasses
from typing import Any, Dict, List

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from din_jax.history import History

# Parameter names of the tables, used by the train step to find embedding rows (sparse updates, MBA).
ITEM_TABLE = "item"
CATEGORY_TABLE = "category"
USER_TABLE = "user"
ITEM_BIAS_TABLE = "item_bias"

# Collections of the sparse embedding updates (din_jax/train/sparse_step.py): per table, zero rows ``[N, E]``
# added to the gathered rows (their gradient is the per-lookup row gradient), and the ids looked up with a 0/1
# validity weight (0 at padded history positions). Absent or immutable, they change nothing.
EMBEDDING_DELTA = "embedding_delta"
EMBEDDING_LOOKUPS = "embedding_lookups"
# Batch keys of a negative item (and its category) per history position, for DIEN's auxiliary loss
# (din_jax/data/negatives.py ``add_history_negatives``): training batches of models that ask for them only.
HISTORY_NEGATIVES = ("hist_neg_item", "hist_neg_category")
# The collection where a model puts extra loss terms (DIEN's auxiliary loss); the train step adds them to the loss.
LOSSES = "losses"


def lookup(table_VxE, ids):
    """Rows of ``table`` for ids of any shape, gathered 1-D (the fast path on IPU, never slower elsewhere)."""
    flat = jnp.take(table_VxE, ids.reshape(-1).astype(jnp.int32), axis=0)
    return flat.reshape(ids.shape + table_VxE.shape[1:])


class EmbeddingFields(nn.Module):
    """The embedding layer's fields, shared with every model that owns one: vocabulary sizes, widths (the item
    vector is item ⊕ category; ``user_dim`` 0: no user vector, as in the authors' Amazon model), a learnt
    per-item logit bias as in the authors' code, ``dtype`` of the vectors (tables stay float32)."""

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
        names = [field.name for field in dataclasses.fields(EmbeddingFields) if field.name not in ("parent", "name")]
        return {name: getattr(self, name) for name in names}


class FeatureEmbedding(EmbeddingFields):
    """Item ⊕ category vectors of the candidate and the history (same tables), user vector, per-item bias."""

    @nn.compact
    def __call__(self, batch: Dict[str, jnp.ndarray]) -> Dict[str, Any]:
        """Embeds a batch dict (docs/DATASET_FORMAT.md): ``candidate`` [B, D], ``history`` [P, D] (flat, see
        ``History``), ``user`` [B, U] or None, ``item_bias`` [B] or None, ``positions``, the batch's ``History``, and
        ``history_negatives`` [P, D], the vectors of the batch's ``HISTORY_NEGATIVES`` if it has them, else None."""
        # Glorot-uniform over the whole table, the TensorFlow default the authors' code relied on.
        init = nn.initializers.glorot_uniform()
        item_table = self.param(ITEM_TABLE, init, (self.num_items, self.item_dim), jnp.float32)
        category_table = self.param(CATEGORY_TABLE, init, (self.num_categories, self.category_dim), jnp.float32)

        positions = History.of(batch)
        ones_B = positions.sample_valid_B.astype(jnp.float32)
        valid_P = positions.valid_P.astype(jnp.float32)
        item_ids = [batch["item"], positions.flat(batch["hist_item"])]
        category_ids = [batch["category"], positions.flat(batch["hist_category"])]
        valid = [ones_B, valid_P]
        # DIEN's sampled negative next items (``HISTORY_NEGATIVES``), from the same tables in the same lookup.
        negatives = HISTORY_NEGATIVES[0] in batch
        if negatives:
            item_ids.append(positions.flat(batch[HISTORY_NEGATIVES[0]]))
            category_ids.append(positions.flat(batch[HISTORY_NEGATIVES[1]]))
            valid.append(valid_P)
        items = self._lookup_rows(ITEM_TABLE, item_table, item_ids, valid)
        categories = self._lookup_rows(CATEGORY_TABLE, category_table, category_ids, valid)
        candidate_BxD = jnp.concatenate([items[0], categories[0]], axis=-1).astype(self.dtype)
        history_PxD = jnp.concatenate([items[1], categories[1]], axis=-1).astype(self.dtype)
        negatives_PxD = jnp.concatenate([items[2], categories[2]], axis=-1).astype(self.dtype) if negatives else None
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
            "candidate": candidate_BxD,
            "history": history_PxD,
            "user": user_BxU,
            "item_bias": item_bias_B,
            "positions": positions,
            "history_negatives": negatives_PxD,
        }

    def _lookup_rows(self, name: str, table_VxE, ids_list, valid_list) -> List[jnp.ndarray]:
        """One ``lookup`` per id array, or, with the sparse-update collections, one gather of all the ids
        (the order of the delta rows and recorded ids), recording them with ``valid_list`` and adding the delta."""
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
            # The table gets no gradient: the optimiser updates the looked-up rows from the delta's gradient.
            rows_NxE = jax.lax.stop_gradient(rows_NxE) + delta.astype(rows_NxE.dtype)
        out, start = [], 0
        for ids in ids_list:
            size = int(np.prod(ids.shape))
            out.append(rows_NxE[start : start + size].reshape(ids.shape + table_VxE.shape[1:]))
            start += size
        return out
