"""Scoring with a trained checkpoint: click probabilities of batches, and ranking candidates for one user.

    predictor = Predictor.from_checkpoint("runs/synthetic")      # its best/ checkpoint
    predictor.rank(history=[3, 81, 5], candidate_items=[12, 7, 99, 4], k=2)   # -> [(7, 0.93), (12, 0.41)]

``rank`` scores one batch of C rows sharing the user's history, each with its own candidate and so its own
attention over the history (the original inference code scored every candidate with one user vector). In
inference DIN scores rows independently, so a candidate's score does not depend on the others. Inputs are
checked, never coerced: ids must be integers (``12.9`` is an error), a model with a user embedding needs the
user id, and a repeated candidate is ranked once.
"""

import numbers
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from din_jax import checkpoint as ckpt
from din_jax.config import config_from_checkpoint
from din_jax.data.dataset import DatasetError, load_dataset
from din_jax.data.synthetic import make_item_categories
from din_jax.train.evaluation import model_returns_attention
from din_jax.train.setup import build_model_for, restore_variables
from din_jax.train.step import init_variables


def resolve_checkpoint_dir(path: str, which: str = "best") -> str:
    """A checkpoint directory: ``path/<which>`` of a run directory, or ``path`` itself; CheckpointError if neither."""
    candidate = os.path.join(path, which)
    if os.path.isfile(os.path.join(candidate, ckpt.META_FILE)):
        return candidate
    if os.path.isfile(os.path.join(path, ckpt.META_FILE)):
        return path
    raise ckpt.CheckpointError(
        "no checkpoint at %s (looked for %s and %s)"
        % (path, os.path.join(candidate, ckpt.META_FILE), os.path.join(path, ckpt.META_FILE))
    )


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    # Two branches so that exp never overflows.
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def _bucket(rows: int, largest: int) -> int:
    """Rows padded to a power of two (at least 8): a handful of compiled shapes for any batch size."""
    size = 8
    while size < rows:
        size *= 2
    return min(size, largest)


class Predictor:
    """A trained model ready to score: ``predict`` for batches, ``rank`` for one user's candidates.

    ``model`` is the flax module built without a pmap axis, ``variables`` its ``{'params', 'batch_stats'}``;
    histories longer than ``max_seq_len`` keep their last items; ``uses_user``: the model has a user embedding (then
    ``rank`` and rank requests need a user id); ``metadata`` is the checkpoint's JSON; inputs larger than
    ``max_batch_size`` rows are split into several compiled calls.
    """

    def __init__(
        self,
        model,
        variables: Dict[str, Any],
        item_category: np.ndarray,
        max_seq_len: int,
        num_users: int,
        uses_user: bool = False,
        metadata: Optional[Dict[str, Any]] = None,
        max_batch_size: int = 1024,
    ):
        self.model = model
        self.item_category = np.asarray(item_category, dtype=np.int32)
        self.max_seq_len = int(max_seq_len)
        self.num_users = int(num_users)
        self.num_items = int(self.item_category.shape[0])
        self.uses_user = bool(uses_user)
        self.metadata = dict(metadata or {})
        self.max_batch_size = int(max_batch_size)
        self.returns_attention = model_returns_attention(model)
        self._variables = jax.device_put(variables)
        returns_attention = self.returns_attention

        def apply(variables_, batch):
            if returns_attention:
                return model.apply(variables_, batch, train=False, return_attention=True)
            logits = model.apply(variables_, batch, train=False)
            return logits, jnp.zeros(batch["hist_item"].shape, jnp.float32)

        self._apply = jax.jit(apply)
        self._raw_maps: Dict[str, Tuple[List[str], Dict[str, int]]] = {}
        self.dataset: Optional[str] = self.metadata.get("dataset")

    # -- raw ids ---------------------------------------------------------------

    def id_map(self, kind: str) -> Tuple[List[str], Dict[str, int]]:
        """``(raw ids by internal id, internal id by raw id)`` of ``user`` or ``item``, from the id maps of the dataset
        the model was trained on (``self.dataset``, which a caller may point elsewhere); read once."""
        if kind not in self._raw_maps:
            if not self.dataset:
                raise ValueError("raw ids need the id maps of a dataset directory; this model was trained without one")
            try:
                raw = load_dataset(self.dataset, check_values=False).id_map(kind)
            except DatasetError as error:
                raise ValueError("raw ids: the id maps of %s cannot be read: %s" % (self.dataset, error)) from None
            self._raw_maps[kind] = (raw, {key: index for index, key in enumerate(raw)})
        return self._raw_maps[kind]

    def internal_ids(self, kind: str, raw: Sequence[Any], where: str = "Predictor") -> List[int]:
        """The internal ids of raw ``user``/``item`` ids (strings, or numbers written as the data wrote them)."""
        if isinstance(raw, (str, bytes)) or not isinstance(raw, (list, tuple, np.ndarray)):
            raise ValueError("%s: expected a list of raw %s ids, got %s" % (where, kind, _describe(raw)))
        _, index = self.id_map(kind)
        ids = []
        for value in raw:
            key = value if isinstance(value, str) else str(value)
            if isinstance(value, (bool, float, dict, list)) or key not in index:
                raise ValueError(
                    "%s: unknown raw %s id %r (not in the id map of %s)" % (where, kind, value, self.dataset)
                )
            ids.append(index[key])
        return ids

    @classmethod
    def from_checkpoint(
        cls, path: str, which: str = "best", item_category: Optional[np.ndarray] = None, max_batch_size: int = 1024
    ) -> "Predictor":
        """Loads a run directory (its ``which``), a ``best``/``last`` directory or a ``checkpoints/step_N``.

        ``item_category`` defaults to the map saved with the checkpoint, else that of the (synthetic) data it names.
        Missing, corrupt or truncated files, or arrays that do not fit the model, raise a one-line CheckpointError.
        """
        directory = resolve_checkpoint_dir(path, which)
        flat, meta = ckpt.load_checkpoint(directory)
        for key in ("model", "model_config", "vocabulary", "max_seq_len"):
            if key not in meta:
                raise ckpt.CheckpointError("checkpoint %s: its metadata has no %r" % (directory, key))
        vocab = meta["vocabulary"]
        config = config_from_checkpoint(meta)
        model = build_model_for(config, vocab, axis_name=None)
        template = _variable_template(model, config.max_seq_len)
        variables = restore_variables(template, flat, meta, directory)
        if item_category is None:
            item_category = ckpt.load_array(directory, "item_category", meta)
        if item_category is None:
            item_category = _item_category_of_data(directory, meta)
        item_category = np.asarray(item_category)
        if item_category.shape != (int(vocab["items"]),):
            raise ckpt.CheckpointError(
                "checkpoint %s: the item -> category map has shape %s but the model has %d items"
                % (directory, item_category.shape, int(vocab["items"]))
            )
        if len(item_category) and (item_category.min() < 0 or item_category.max() >= int(vocab["categories"])):
            raise ckpt.CheckpointError(
                "checkpoint %s: the item -> category map has categories outside [0, %d)"
                % (directory, int(vocab["categories"]))
            )
        uses_user = int(dict(meta["model_config"]).get("user_dim", 0) or 0) > 0
        return cls(
            model,
            variables,
            item_category,
            config.max_seq_len,
            int(vocab["users"]),
            uses_user=uses_user,
            metadata=meta,
            max_batch_size=max_batch_size,
        )

    # -- batches -------------------------------------------------------------

    def _check_ids(self, name: str, ids: np.ndarray, size: int) -> None:
        if ids.size and (ids.min() < 0 or ids.max() >= size):
            bad = ids[(ids < 0) | (ids >= size)][0]
            raise ValueError("%s id %d is out of range [0, %d)" % (name, int(bad), size))

    def _user_ids(self, where: str, users: Any, rows: int, missing: Optional[str] = None) -> np.ndarray:
        """int64 ``[rows]`` user ids (zeros for models without a user embedding); ``missing``: the error if none."""
        if users is None:
            if self.uses_user:
                raise ValueError(
                    missing or "%s: the model has a user embedding (user_dim > 0): give the user id" % where
                )
            return np.zeros(rows, np.int64)
        user_B = _as_ids(where, users)
        if user_B.ndim == 0:
            user_B = np.full(rows, int(user_B))
        user_B = user_B.reshape(-1)
        if user_B.shape != (rows,):
            raise ValueError("%s: %d user ids for %d rows" % (where, user_B.shape[0], rows))
        if not self.uses_user:
            return np.zeros(rows, np.int64)
        self._check_ids(where, user_B, max(self.num_users, 1))
        return user_B

    def complete_batch(self, batch: Dict[str, Any]) -> Dict[str, np.ndarray]:
        """The batch format (docs/DATASET_FORMAT.md) from ``item``, ``hist_item`` and ``hist_len``.

        Categories always come from the item -> category map (given ones are ignored); ``user`` as in ``rank``;
        ``label`` defaults to zeros; ``hist_item`` may have fewer than ``max_seq_len`` columns, not more. A missing
        key, a non-integer or out-of-range id, or shapes that disagree raise a ValueError naming the key.
        """
        if not isinstance(batch, dict):
            raise ValueError(
                "the batch must be a dict of arrays (needs item, hist_item, hist_len), got %s" % type(batch).__name__
            )
        for key in ("item", "hist_item", "hist_len"):
            if key not in batch:
                raise ValueError("the batch has no %r (needs item, hist_item, hist_len)" % key)
        item_B = _as_ids("batch['item']", batch["item"]).reshape(-1)
        rows = item_B.shape[0]
        hist = _as_ids("batch['hist_item']", batch["hist_item"])
        if rows and hist.size % rows == 0:
            hist_BxT = hist.reshape(rows, -1)
        elif not rows and not hist.size:
            hist_BxT = np.zeros((0, self.max_seq_len), np.int64)
        else:
            raise ValueError(
                "batch['hist_item'] has shape %s, which does not fit the %d rows of batch['item']" % (hist.shape, rows)
            )
        hist_len_B = _as_ids("batch['hist_len']", batch["hist_len"]).reshape(-1)
        if hist_BxT.shape[1] > self.max_seq_len:
            raise ValueError(
                "hist_item has %d columns but the model was trained with max_seq_len %d: keep each "
                "history's last %d items" % (hist_BxT.shape[1], self.max_seq_len, self.max_seq_len)
            )
        if (
            hist_len_B.shape != (rows,)
            or hist_len_B.min(initial=0) < 0
            or hist_len_B.max(initial=0) > hist_BxT.shape[1]
        ):
            raise ValueError("hist_len must have one value per row in [0, %d]" % hist_BxT.shape[1])
        hist_BxT = np.pad(hist_BxT, ((0, 0), (0, self.max_seq_len - hist_BxT.shape[1])))
        valid_BxT = np.arange(self.max_seq_len)[None, :] < hist_len_B[:, None]
        hist_BxT = np.where(valid_BxT, hist_BxT, 0)
        self._check_ids("item", item_B, self.num_items)
        self._check_ids("history item", hist_BxT, self.num_items)
        user_B = self._user_ids("batch['user']", batch.get("user"), rows)
        return {
            "user": user_B.astype(np.int32),
            "item": item_B.astype(np.int32),
            "category": self.item_category[item_B],
            "hist_item": hist_BxT.astype(np.int32),
            "hist_category": np.where(valid_BxT, self.item_category[hist_BxT], 0).astype(np.int32),
            "hist_len": hist_len_B.astype(np.int32),
            "label": np.asarray(batch.get("label", np.zeros(rows)), dtype=np.float32).reshape(-1),
        }

    def _run(self, batch: Dict[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        """Logits [B] and attention weights [B, T] of a complete batch, in compiled chunks."""
        rows = batch["item"].shape[0]
        logits, weights = [], []
        for start in range(0, rows, self.max_batch_size):
            part = {key: value[start : start + self.max_batch_size] for key, value in batch.items()}
            count = part["item"].shape[0]
            size = _bucket(count, self.max_batch_size)
            if size > count:  # pad with copies of the first row, dropped below
                part = {
                    key: np.concatenate([value, np.repeat(value[:1], size - count, axis=0)])
                    for key, value in part.items()
                }
            out_logits, out_weights = jax.device_get(self._apply(self._variables, part))
            logits.append(np.asarray(out_logits)[:count])
            weights.append(np.asarray(out_weights)[:count])
        if not logits:
            return np.zeros((0,), np.float32), np.zeros((0, self.max_seq_len), np.float32)
        return np.concatenate(logits).astype(np.float32), np.concatenate(weights).astype(np.float32)

    def logits(self, batch: Dict[str, Any]) -> np.ndarray:
        """float32 logits [B] of a batch (see ``complete_batch`` for what it needs)."""
        return self._run(self.complete_batch(batch))[0]

    def predict(self, batch: Dict[str, Any]) -> np.ndarray:
        """Click probabilities [B] (float64) of a batch (see ``complete_batch`` for what it needs)."""
        return _sigmoid(self.logits(batch))

    # -- one user, many candidates -------------------------------------------

    def _candidate_batch(self, history: Sequence[int], candidates: Sequence[int], user: Optional[int], where: str):
        history_L = _as_id_sequence(where, "history", history, allow_empty=True)[-self.max_seq_len :]
        candidate_C = _as_id_sequence(where, "candidate_items", candidates, allow_empty=False)
        self._check_ids("%s: candidate item" % where, candidate_C, self.num_items)
        self._check_ids("%s: history item" % where, history_L, self.num_items)
        count = candidate_C.shape[0]
        missing = "%s: the model has a user embedding (user_dim > 0): pass user=<the user's id>" % where
        user_C = self._user_ids("%s: user" % where, _as_user(where, user), count, missing=missing)
        hist_T = np.zeros(self.max_seq_len, np.int64)
        hist_T[: history_L.shape[0]] = history_L
        batch = {
            "user": user_C,
            "item": candidate_C,
            "hist_item": np.tile(hist_T, (count, 1)),
            "hist_len": np.full(count, history_L.shape[0]),
        }
        return self.complete_batch(batch), history_L.shape[0]

    def score(
        self, history: Sequence[int], candidate_items: Sequence[int], user: Optional[int] = None
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Logits float32 [C] and attention weights float32 [C, L] of C candidates for one user, as given (repeats too).

        L is the history length used, its last ``max_seq_len`` items at most; the weights are zeros for models without
        attention. Arguments and errors as ``rank``.
        """
        batch, length = self._candidate_batch(history, candidate_items, user, "Predictor.score")
        logits_C, weights_CxT = self._run(batch)
        return logits_C, weights_CxT[:, :length]

    def rank(
        self,
        history: Sequence[int],
        candidate_items: Sequence[int],
        k: Optional[int] = 10,
        user: Optional[Any] = None,
        keep_duplicates: bool = False,
        raw_ids: bool = False,
    ) -> List[Tuple[Any, float]]:
        """The top ``k`` (None: all) candidates for one user as ``[(item, probability), ...]``, best first.

        ``history``: the user's item ids, oldest first. ``user`` is required by models with a user embedding
        (``uses_user``) and ignored by the others. A repeated candidate is ranked once, at its first occurrence, so it
        cannot fill several of the top places (``keep_duplicates`` ranks every occurrence). Sorted on the logits, so
        saturated probabilities keep their order; ties keep the input order. A non-integer, out-of-range or missing
        id, an argument that is not a sequence of ids, or ``k`` < 1 raise a ValueError.

        ``raw_ids``: ``history``, ``candidate_items``, ``user`` and the returned items are the dataset's own ids (e.g.
        ASINs), mapped through its id maps (``id_map``); an id the training data did not have raises a ValueError.
        """
        if raw_ids:
            where = "Predictor.rank"
            history = self.internal_ids("item", history, where)
            candidate_items = self.internal_ids("item", candidate_items, where)
            user = None if user is None else self.internal_ids("user", [user], where)[0]
            ranked = self.rank(history, candidate_items, k, user, keep_duplicates)
            raw_items, _ = self.id_map("item")
            return [(raw_items[item], probability) for item, probability in ranked]
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise ValueError("Predictor.rank: k must be an integer >= 1 (or None for all), got %r" % (k,))
        candidates = _as_id_sequence("Predictor.rank", "candidate_items", candidate_items, allow_empty=False)
        if not keep_duplicates:
            _, first = np.unique(candidates, return_index=True)
            candidates = candidates[np.sort(first)]
        batch, _ = self._candidate_batch(history, candidates, user, "Predictor.rank")
        logits_C, _ = self._run(batch)
        order = np.argsort(-logits_C, kind="stable")
        if k is not None:
            order = order[:k]
        probabilities = _sigmoid(logits_C)
        return [(int(candidates[i]), float(probabilities[i])) for i in order]


def _describe(value: Any) -> str:
    text = repr(value)
    return "%s %s" % (type(value).__name__, text if len(text) <= 40 else text[:37] + "...")


def _as_ids(where: str, value: Any) -> np.ndarray:
    """``value`` as an int64 array, refusing anything that is not integer ids (floats are never rounded)."""
    if isinstance(value, (str, bytes)):
        raise ValueError("%s must hold integer ids, got %s" % (where, _describe(value)))
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as error:  # ragged lists, ids beyond int64
        raise ValueError("%s must be integer ids in a rectangular array: %s" % (where, error)) from None
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype.kind not in "iu":
        if array.dtype.kind == "O":
            bad = next(
                (x for x in array.reshape(-1) if isinstance(x, bool) or not isinstance(x, (int, np.integer))), None
            )
            if bad is None:
                try:
                    return array.astype(np.int64)
                except OverflowError:
                    raise ValueError("%s holds an id beyond int64" % where) from None
        else:
            bad = array.reshape(-1)[0]
            if array.dtype.kind == "f":
                fractional = array.reshape(-1)[np.mod(array.reshape(-1), 1) != 0]
                bad = fractional[0] if fractional.size else bad
        raise ValueError(
            "%s must hold integer ids, got %s (%s): convert integral values with .astype(int)"
            % (where, _describe(bad.item() if isinstance(bad, np.generic) else bad), array.dtype)
        )
    if array.dtype == np.uint64 and array.max() > np.iinfo(np.int64).max:
        raise ValueError("%s holds an id beyond int64" % where)
    return array.astype(np.int64)


def _as_id_sequence(where: str, name: str, value: Any, allow_empty: bool) -> np.ndarray:
    """A one-dimensional int64 array of ids from a list, tuple, range, iterator or array."""
    scalar = (
        value is None
        or isinstance(value, (str, bytes, dict, set, numbers.Number, np.generic))
        or (isinstance(value, np.ndarray) and value.ndim == 0)
    )
    if not scalar and not hasattr(value, "__array__") and not isinstance(value, list):
        try:
            value = list(value)
        except TypeError:
            scalar = True
    if scalar:
        raise ValueError(
            "%s: %s must be a sequence of integer item ids (a list or 1-D array), got %s"
            % (where, name, _describe(value))
        )
    ids = _as_ids("%s: %s" % (where, name), value)
    if ids.ndim != 1:
        raise ValueError("%s: %s must be one-dimensional, got shape %s" % (where, name, ids.shape))
    if not allow_empty and ids.size == 0:
        raise ValueError("%s: no %s to score (the sequence is empty)" % (where, name))
    return ids


def _as_user(where: str, user: Any) -> Optional[int]:
    if user is None:
        return None
    if isinstance(user, np.ndarray) and user.ndim == 0:
        user = user[()]
    if isinstance(user, (bool, np.bool_)) or not isinstance(user, (int, np.integer)):
        raise ValueError("%s: user must be an integer id, got %s" % (where, _describe(user)))
    return int(user)


def _variable_template(model, max_seq_len: int) -> Dict[str, Any]:
    """Zero arrays shaped like ``init_variables``'s, from ``jax.eval_shape`` (nothing is compiled)."""
    shapes = jax.eval_shape(lambda: init_variables(model, 0, max_seq_len))
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def _item_category_of_data(directory: str, meta: Dict[str, Any]) -> np.ndarray:
    """The item -> category map of the data a checkpoint was trained on (checkpoints without their own)."""
    vocab = meta["vocabulary"]
    if meta.get("use_synthetic_data"):
        return make_item_categories(int(vocab["items"]), int(vocab["categories"]), int(meta.get("seed", 0)))
    dataset = meta.get("dataset")
    if dataset and os.path.isdir(dataset):
        try:
            return np.asarray(load_dataset(dataset, check_values=False).item_category)
        except DatasetError as error:
            raise ckpt.CheckpointError(
                "checkpoint %s has no item -> category map and its dataset cannot be read: %s" % (directory, error)
            ) from None
    raise ckpt.CheckpointError(
        "checkpoint %s has no item -> category map and its dataset %s is not there; pass "
        "item_category" % (directory, dataset)
    )
