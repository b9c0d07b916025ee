"""Mini-batch aware regularisation (MBA) and plain L2, added to the gradient in the train step.

MBA (Zhou et al., KDD 2018, section 5.1, eq. 4-5) puts an L2 penalty on the
embedding rows of the ids that occur in the mini-batch only, each scaled by
the inverse of the id's frequency in the training data:

    w_j <- w_j - lr * (g_j + lambda * alpha_mj / n_j * w_j)

where ``alpha_mj`` is 1 when id ``j`` occurs in mini-batch ``m`` (as the
candidate, anywhere in a valid history position, or as the user) and 0
otherwise, and ``n_j`` is the number of occurrences of ``j`` in the training
samples' features (``train_*_freq.npy`` of a dataset directory). The cost of
a full L2 over tables of millions of rows is what MBA avoids on a parameter
server; here the tables are dense anyway, and what matters is the effect: rare
ids are regularised more, rows unseen in the batch not at all.

With data parallelism "present in the mini-batch" means present in the
*global* micro-batch: each device counts its ids, the counts are summed with
``lax.psum`` and thresholded (no ``pmax``, which the IPU lacks). Averaging the
per-device penalty with ``pmean`` instead would scale it by the fraction of
devices that saw the id, which is not the paper's rule.

MBA applies to the ``item``, ``category`` and ``user`` tables of every
``FeatureEmbedding`` in the parameters (any dict holding both an ``item`` and
a ``category`` table), so it covers DIN and every competitor (LR's weights,
DeepFM's first-order weights, which are width-2 embedding tables too), and any
user model built on ``FeatureEmbedding``. Per-item biases and the other
parameters are left alone.

With an adaptive optimiser (Adam, Adagrad) the penalty goes through the
optimiser like the loss gradient (coupled L2), as the formula puts it in the
gradient; with SGD the update is exactly the paper's.

``l2`` is plain L2 on every parameter, ``l2 * w`` added to the gradient (the
gradient of ``l2 / 2 * |w|^2`` in the loss), for comparison.
"""

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util

from din_jax.layers import CATEGORY_TABLE, ITEM_TABLE, USER_TABLE

MBA_TABLES = (ITEM_TABLE, CATEGORY_TABLE, USER_TABLE)


class Regularization(NamedTuple):
    """What the train step adds to the gradient.

    Attributes:
      mba_lambda: MBA's lambda (0 disables MBA).
      l2: plain L2 coefficient on every parameter (0 disables it).
      inverse_frequencies: table name (``item``, ``category``, ``user``) ->
        float32 ``[vocab]`` array of ``1 / n_j``, 0 where ``n_j`` is 0 (such
        ids never occur in a training batch, so the value is never used).
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


def make_regularization(mba_lambda: float = 0.0, l2: float = 0.0,
                        frequencies: Optional[Mapping[str, np.ndarray]] = None) -> Optional[Regularization]:
    """A ``Regularization``, or None when both coefficients are 0 (the train step then adds nothing).

    Args:
      mba_lambda: MBA's lambda (the paper: 0.01).
      l2: plain L2 coefficient.
      frequencies: table name -> ``n_j`` counts, needed when ``mba_lambda > 0``
        (``item`` and ``category`` at least; ``user`` for models with a user
        embedding).
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
    """The regularisation a ``TrainConfig`` asks for, with ``n_j`` from the data source.

    Args:
      config: has ``mba_lambda`` and ``l2``.
      source: a ``Dataset`` (``item_frequencies()``, ``category_frequencies()``, ``user_frequencies()``).
    """
    mba_lambda = float(getattr(config, "mba_lambda", 0.0))
    l2 = float(getattr(config, "l2", 0.0))
    frequencies = None
    if mba_lambda > 0:
        counted_with = source.meta.get("max_seq_len")
        if counted_with is not None and int(counted_with) != int(config.max_seq_len):
            # n_j counts history occurrences cut at the build's length: a
            # longer or shorter cut here sees other counts than the penalty assumes.
            logging.warning("mini-batch aware regularisation: the dataset counted feature frequencies with "
                            "max_seq_len %d, training uses --max_seq_len %d; rebuild the dataset with "
                            "--max_seq_len %d for exact n_j", int(counted_with), config.max_seq_len,
                            config.max_seq_len)
        frequencies = {
            ITEM_TABLE: np.asarray(source.item_frequencies()),
            CATEGORY_TABLE: np.asarray(source.category_frequencies()),
            USER_TABLE: np.asarray(source.user_frequencies()),
        }
    return make_regularization(mba_lambda, l2, frequencies)


def _occurrences(batch: Mapping[str, jnp.ndarray]) -> Dict[str, Tuple[jnp.ndarray, jnp.ndarray]]:
    """Per table: the batch's ids and a 0/1 weight for each (0 on padded history positions)."""
    hist_item_BxT = batch["hist_item"]
    valid_BxT = jnp.arange(hist_item_BxT.shape[1])[None, :] < batch["hist_len"].astype(jnp.int32)[:, None]
    valid = jnp.concatenate([jnp.ones(batch["item"].shape, jnp.float32), valid_BxT.astype(jnp.float32).reshape(-1)])
    return {
        ITEM_TABLE: (jnp.concatenate([batch["item"], hist_item_BxT.reshape(-1)]), valid),
        CATEGORY_TABLE: (jnp.concatenate([batch["category"], batch["hist_category"].reshape(-1)]), valid),
        USER_TABLE: (batch["user"], jnp.ones(batch["user"].shape, jnp.float32)),
    }


def batch_presence(batch: Mapping[str, jnp.ndarray], vocab_sizes: Mapping[str, int],
                   axis_name: Optional[str] = None) -> Dict[str, jnp.ndarray]:
    """``alpha_mj``: whether each id occurs in the (global) micro-batch.

    Args:
      batch: one device's micro-batch (docs/DATASET_FORMAT.md).
      vocab_sizes: table name -> number of rows, for the tables wanted.
      axis_name: pmap axis; the per-device counts are summed over it, so an
        id seen on any device is present everywhere.

    Returns:
      table name -> bool ``[vocab]``.
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
        if (path[-1] in MBA_TABLES and module + (ITEM_TABLE,) in flat and module + (CATEGORY_TABLE,) in flat
                and np.ndim(flat[path]) == 2):
            tables.append(path)
    return sorted(tables)


def add_regularization_gradients(grads: Any, params: Any, batch: Mapping[str, jnp.ndarray],
                                 regularization: Regularization, axis_name: Optional[str] = None) -> Any:
    """Returns ``grads`` plus the MBA term on embedding tables and ``l2 * w`` on every parameter.

    Call it after the gradients are averaged over devices; the result is then
    identical on every device.

    Raises:
      ValueError: if a table's row count differs from its frequency array's
        length, or MBA is on and a user table has no frequencies.
    """
    frozen = isinstance(grads, flax.core.FrozenDict)
    flat_grads = traverse_util.flatten_dict(flax.core.unfreeze(grads))
    flat_params = traverse_util.flatten_dict(flax.core.unfreeze(params))
    if regularization.l2 > 0:
        flat_grads = {path: g + regularization.l2 * flat_params[path].astype(g.dtype) for path, g in flat_grads.items()}
    if regularization.mba_lambda > 0:
        tables = find_embedding_tables(params)
        sizes: Dict[str, int] = {}
        for path in tables:
            table = path[-1]
            rows = int(np.shape(flat_params[path])[0])
            inverse = regularization.inverse_frequencies.get(table)
            if inverse is None:
                raise ValueError("mini-batch aware regularisation: no training frequencies for the %r table at %s"
                                 % (table, "/".join(path)))
            if len(inverse) != rows:
                raise ValueError("mini-batch aware regularisation: table %s has %d rows but %d frequencies were given"
                                 % ("/".join(path), rows, len(inverse)))
            sizes[table] = rows
        presence = batch_presence(batch, sizes, axis_name)
        for path in tables:
            table = path[-1]
            w_VxE = flat_params[path]
            scale_V = jnp.where(presence[table], regularization.mba_lambda * jnp.asarray(regularization.inverse_frequencies[table]), 0.0)
            flat_grads[path] = flat_grads[path] + (scale_V[:, None] * w_VxE).astype(flat_grads[path].dtype)
    result = traverse_util.unflatten_dict(flat_grads)
    return flax.core.freeze(result) if frozen else result
