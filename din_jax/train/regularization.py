"""Mini-batch aware regularisation (MBA) and plain L2, added to the gradient in the train step.

MBA (Zhou et al., KDD 2018, section 5.1, eq. 4-5) penalises only the embedding rows of the ids in the (global)
mini-batch, each scaled by the inverse of the id's training frequency ``n_j``:

    w_j <- w_j - lr * (g_j + lambda * alpha_mj / n_j * w_j)

so rare ids are regularised more and rows unseen in the batch not at all. Why these rules (several devices, which
tables, adaptive optimisers): docs/TRAINING.md. ``l2`` adds ``l2 * w`` on every parameter, for comparison.
"""

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from din_jax.layers import CATEGORY_TABLE, HISTORY_NEGATIVES, ITEM_TABLE, USER_TABLE, History

MBA_TABLES = (ITEM_TABLE, CATEGORY_TABLE, USER_TABLE)
_MBA = "mini-batch aware regularisation: "


class Regularization(NamedTuple):
    """What the train step adds to the gradient (a coefficient of 0 disables its term).

    ``inverse_frequencies``: table name (``item``, ``category``, ``user``) -> float32 ``1 / n_j``, 0 where ``n_j``
    is 0 (such ids never occur in a training batch).
    """

    mba_lambda: float
    l2: float
    inverse_frequencies: Mapping[str, np.ndarray]


def compute_inverse_frequencies(counts: np.ndarray) -> np.ndarray:
    """``1 / n_j`` as float32, 0 where ``n_j`` is 0 (guards the division)."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or np.any(counts < 0) or not np.all(np.isfinite(counts)):
        raise ValueError("frequencies must be a 1-D array of non-negative counts")
    return np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), 0.0).astype(np.float32)


def make_regularization(
    mba_lambda: float = 0.0, l2: float = 0.0, frequencies: Optional[Mapping[str, np.ndarray]] = None
) -> Optional[Regularization]:
    """A ``Regularization``, or None when both coefficients are 0 (the train step then adds nothing).

    ``mba_lambda`` > 0 (the paper: 0.01) needs ``frequencies``, table name -> ``n_j`` counts: ``item`` and
    ``category`` at least, ``user`` for models with a user embedding.
    """
    if not (mba_lambda >= 0 and l2 >= 0):
        raise ValueError("mba_lambda and l2 must be >= 0, got %r and %r" % (mba_lambda, l2))
    if mba_lambda == 0 and l2 == 0:
        return None
    inverse: Dict[str, np.ndarray] = {}
    if mba_lambda > 0:
        frequencies = dict(frequencies or {})
        missing = [table for table in (ITEM_TABLE, CATEGORY_TABLE) if table not in frequencies]
        if missing:
            raise ValueError("mini-batch aware regularisation needs the training frequencies of %s" % missing)
        inverse = {table: compute_inverse_frequencies(counts) for table, counts in frequencies.items()}
    return Regularization(float(mba_lambda), float(l2), inverse)


def regularization_for(config: Any, source: Any) -> Optional[Regularization]:
    """The regularisation a ``TrainConfig`` asks for, with ``n_j`` from the ``Dataset``'s frequencies."""
    mba_lambda = float(getattr(config, "mba_lambda", 0.0))
    l2 = float(getattr(config, "l2", 0.0))
    frequencies = None
    if mba_lambda > 0:
        # n_j at the history length training uses (a dataset counts at its build's; other lengths are counted).
        length = config.max_seq_len
        counts = (source.item_frequencies(length), source.category_frequencies(length), source.user_frequencies(length))
        frequencies = {table: np.asarray(n) for table, n in zip((ITEM_TABLE, CATEGORY_TABLE, USER_TABLE), counts)}
    return make_regularization(mba_lambda, l2, frequencies)


def _occurrences(batch: Mapping[str, jnp.ndarray]) -> Dict[str, Tuple[jnp.ndarray, jnp.ndarray]]:
    # Per table: the batch's ids and a 0/1 weight for each (0 on padded history positions). DIEN's sampled
    # negatives are looked up too, so they count as present, as the sparse step's recorded lookups do.
    positions = History.of(batch)
    sample_B = positions.sample_valid_B.astype(jnp.float32)
    valid_P = positions.valid_P.astype(jnp.float32)
    items, categories, valid = [batch["hist_item"]], [batch["hist_category"]], [valid_P]
    if HISTORY_NEGATIVES[0] in batch:
        items.append(batch[HISTORY_NEGATIVES[0]])
        categories.append(batch[HISTORY_NEGATIVES[1]])
        valid.append(valid_P)
    weights = jnp.concatenate([sample_B] + valid)
    return {
        ITEM_TABLE: (jnp.concatenate([batch["item"]] + [positions.flat(x) for x in items]), weights),
        CATEGORY_TABLE: (jnp.concatenate([batch["category"]] + [positions.flat(x) for x in categories]), weights),
        USER_TABLE: (batch["user"], sample_B),
    }


def batch_presence(batch, vocab_sizes: Mapping[str, int], axis_name: Optional[str] = None) -> Dict[str, jnp.ndarray]:
    """``alpha_mj``: table name -> bool ``[vocab]``, whether each id occurs in the (global) micro-batch.

    ``vocab_sizes`` names the tables wanted and their rows; the per-device counts are summed over ``axis_name``,
    so an id seen on any device is present everywhere.
    """
    occurrences = _occurrences(batch)
    presence = {}
    for table, size in vocab_sizes.items():
        ids, weights = occurrences[table]
        # A scatter-add of 0/1 weights: padded positions add 0, so they mark nothing.
        counts_V = jnp.zeros((size,), jnp.float32).at[ids.reshape(-1).astype(jnp.int32)].add(weights)
        if axis_name is not None:
            counts_V = jax.lax.psum(counts_V, axis_name)
        presence[table] = counts_V > 0
    return presence


def find_embedding_tables(params: Mapping[str, Any]) -> List[Tuple[str, ...]]:
    """Paths of the ``item``/``category``/``user`` tables of every ``FeatureEmbedding`` in ``params``."""
    flat = traverse_util.flatten_dict(flax.core.unfreeze(params))
    tables = []
    for path in flat:
        module = path[:-1]
        in_feature_embedding = module + (ITEM_TABLE,) in flat and module + (CATEGORY_TABLE,) in flat
        if path[-1] in MBA_TABLES and in_feature_embedding and np.ndim(flat[path]) == 2:
            tables.append(path)
    return sorted(tables)


def table_inverse_frequencies(regularization: Regularization, path: Tuple[str, ...], rows: int) -> np.ndarray:
    """``1 / n_j`` of the table at ``path``; ValueError when there are none or not ``rows`` of them."""
    inverse = regularization.inverse_frequencies.get(path[-1])
    where = "/".join(path)
    if inverse is None:
        raise ValueError(_MBA + "no training frequencies for the %r table at %s" % (path[-1], where))
    if len(inverse) != rows:
        raise ValueError(_MBA + "table %s has %d rows but %d frequencies were given" % (where, rows, len(inverse)))
    return inverse


def add_regularization_gradients(
    grads: Any, params: Any, batch: Mapping[str, jnp.ndarray], regularization: Regularization, axis_name=None
) -> Any:
    """``grads`` + the MBA term on the embedding tables + ``l2 * w``; for gradients already averaged over devices."""
    frozen = isinstance(grads, flax.core.FrozenDict)
    flat_grads = traverse_util.flatten_dict(flax.core.unfreeze(grads))
    flat_params = traverse_util.flatten_dict(flax.core.unfreeze(params))
    if regularization.l2 > 0:
        flat_grads = {path: g + regularization.l2 * flat_params[path].astype(g.dtype) for path, g in flat_grads.items()}
    if regularization.mba_lambda > 0:
        tables = find_embedding_tables(params)
        sizes: Dict[str, int] = {}
        for path in tables:
            sizes[path[-1]] = rows = int(np.shape(flat_params[path])[0])
            table_inverse_frequencies(regularization, path, rows)
        presence = batch_presence(batch, sizes, axis_name)
        for path in tables:
            table = path[-1]
            w_VxE = flat_params[path]
            inverse_V = jnp.asarray(regularization.inverse_frequencies[table])
            scale_V = jnp.where(presence[table], regularization.mba_lambda * inverse_V, 0.0)
            flat_grads[path] = flat_grads[path] + (scale_V[:, None] * w_VxE).astype(flat_grads[path].dtype)
    result = traverse_util.unflatten_dict(flat_grads)
    return flax.core.freeze(result) if frozen else result
