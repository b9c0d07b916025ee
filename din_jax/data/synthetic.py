"""Learnable synthetic CTR data in the din_jax batch format.

Graphcore's synthetic generator drew its mask from [0, 1), so every history
position was masked and the model saw no history at all; its labels were
noise. This generator has a rule a model can learn, and one that needs the
candidate and the history together, which is exactly what DIN's attention is
for:

    label = 1  iff  the candidate's category occurs in the valid history.

Construction of one row (B rows at a time, vectorised):

1. A history length is drawn from a length distribution (`sample_lengths`),
   at least 1, at most `max_seq_len`.
2. An *excluded* category `e` is drawn uniformly, and every history item is
   drawn uniformly from the items whose category is not `e`. So `e` is never
   in the history.
3. Exactly half of the rows (one more or less for odd batches, chosen at
   random) are positives. A positive's candidate category is the category
   of a uniformly chosen valid history position, so it is present; a
   negative's candidate category is `e`, so it is absent.
4. The candidate item is drawn uniformly from the items of its category.

Every history is drawn the same way whatever the label, so the history alone
says nothing about the label (no shortcut such as "histories of positives
contain more distinct categories"); the candidate alone says almost nothing
either (its category is close to uniform in both classes). Users are drawn
uniformly and carry no signal. Rows are independent: every row is its own
behaviour sequence.

Padded history positions hold 0 for items and categories, as the batch format
requires; id 0 is a real id, so `hist_len` alone says what is valid.

Shape letters: B batch rows, T history positions (`max_seq_len`).
"""

import dataclasses
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from din_jax.data.dataset import SPLITS, count_training_frequencies, gather_rows, make_gather_tables

# Rows generated per call when a whole split is built: bounds the padded
# [rows, T] temporaries to tens of megabytes whatever the split size.
_GENERATION_CHUNK_ROWS = 65536


# ---------------------------------------------------------------------------
# History length distributions.


@dataclasses.dataclass(frozen=True, eq=False)
class LengthDistribution:
    """A distribution of history lengths over `low..high` (inclusive).

    Attributes:
      spec: the string it was parsed from.
      low: the smallest length with non-zero probability.
      high: the largest length, at most the `max_seq_len` it was parsed for.
      probabilities: float64 `[high - low + 1]` probabilities of the lengths
        `low..high`, or None for uniform. An empirical distribution (such as
        the Amazon Electronics one) is a table here, its tail beyond
        `max_seq_len` folded into `max_seq_len` because histories are cut to
        their last `max_seq_len` items.
    """

    spec: str
    low: int
    high: int
    probabilities: Optional[np.ndarray] = None

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Draws `size` lengths as int32."""
        if self.probabilities is None:
            lengths = rng.integers(self.low, self.high + 1, size=size)
        else:
            lengths = self.low + rng.choice(self.probabilities.shape[0], size=size, p=self.probabilities)
        return lengths.astype(np.int32)


class LengthSpecForm(NamedTuple):
    """How to write one kind of length spec, and its parser.

    Attributes:
      form: the spec as the user writes it, e.g. "uniform:LO:HI".
      parse: called with the spec, the ':'-separated fields after the name,
        and `max_seq_len`; returns a `LengthDistribution` or raises ValueError.
    """

    form: str
    parse: Callable[[str, List[str], int], LengthDistribution]


def _parse_length(spec: str, field: str, max_seq_len: int) -> int:
    try:
        value = int(field)
    except ValueError:
        raise ValueError(f"history length spec {spec!r}: {field!r} is not an integer") from None
    if not 0 <= value <= max_seq_len:
        raise ValueError(f"history length spec {spec!r}: length {value} is outside [0, max_seq_len={max_seq_len}]")
    return value


def _parse_uniform(spec: str, fields: List[str], max_seq_len: int) -> LengthDistribution:
    if len(fields) != 2:
        raise ValueError(f"history length spec {spec!r}: write it as uniform:LO:HI")
    low, high = (_parse_length(spec, field, max_seq_len) for field in fields)
    if low > high:
        raise ValueError(f"history length spec {spec!r}: LO={low} is above HI={high}")
    return LengthDistribution(spec, low, high)


def _parse_full(spec: str, fields: List[str], max_seq_len: int) -> LengthDistribution:
    if len(fields) != 1:
        raise ValueError(f"history length spec {spec!r}: write it as full:N")
    length = _parse_length(spec, fields[0], max_seq_len)
    return LengthDistribution(spec, length, length)


def empirical_length_distribution(spec: str, counts: Sequence[int], max_seq_len: int) -> LengthDistribution:
    """A distribution from counts of lengths ``1..len(counts)``, its tail above `max_seq_len` folded into it."""
    counts_L = np.asarray(counts, dtype=np.float64)
    if max_seq_len < len(counts_L):
        counts_L = np.concatenate([counts_L[:max_seq_len - 1], [counts_L[max_seq_len - 1:].sum()]])
    nonzero = np.flatnonzero(counts_L)
    low, high = int(nonzero[0]) + 1, int(nonzero[-1]) + 1
    table = counts_L[low - 1:high]
    return LengthDistribution(spec, low, high, table / table.sum())


def _parse_electronics(spec: str, fields: List[str], max_seq_len: int) -> LengthDistribution:
    if fields:
        raise ValueError(f"history length spec {spec!r}: write it as electronics")
    from din_jax.data.electronics_lengths import ELECTRONICS_HISTORY_LENGTH_COUNTS

    return empirical_length_distribution(spec, ELECTRONICS_HISTORY_LENGTH_COUNTS, max_seq_len)


# Spec name -> form and parser. An empirical distribution returns a
# LengthDistribution with a probability table: "electronics" is the history
# lengths of the Amazon Electronics training set (din_jax/data/electronics_lengths.py:
# median 4, 99th percentile 85, cut at 100).
LENGTH_DISTRIBUTIONS: Dict[str, LengthSpecForm] = {
    "uniform": LengthSpecForm("uniform:LO:HI", _parse_uniform),
    "full": LengthSpecForm("full:N", _parse_full),
    "electronics": LengthSpecForm("electronics", _parse_electronics),
}


def parse_length_spec(spec: str, max_seq_len: int) -> LengthDistribution:
    """Parses a history length spec.

    Args:
      spec: "uniform:LO:HI" (every length in LO..HI equally likely) or
        "full:N" (every history has length N); the forms are listed in
        `LENGTH_DISTRIBUTIONS`.
      max_seq_len: the largest length allowed (the batch's T).

    Returns:
      The `LengthDistribution`.

    Raises:
      ValueError: for an unknown name (the message lists the valid forms),
        malformed fields, or lengths outside [0, max_seq_len].
      TypeError: if `spec` is not a string.
    """
    if not isinstance(spec, str):
        raise TypeError(f"history length spec must be a string, got {spec!r}")
    name, *fields = spec.split(":")
    if name not in LENGTH_DISTRIBUTIONS:
        forms = [entry.form for entry in LENGTH_DISTRIBUTIONS.values()]
        raise ValueError(f"unknown history length spec {spec!r}; choose from {forms}")
    return LENGTH_DISTRIBUTIONS[name].parse(spec, fields, max_seq_len)


def sample_lengths(
    rng: np.random.Generator,
    spec: Union[str, LengthDistribution],
    size: int,
    max_seq_len: int,
) -> np.ndarray:
    """Draws history lengths from a length spec.

    Args:
      rng: the random generator to draw from.
      spec: a spec string for `parse_length_spec` ("uniform:LO:HI", "full:N")
        or an already parsed `LengthDistribution`.
      size: number of lengths.
      max_seq_len: the largest length allowed.

    Returns:
      int32 `[size]` lengths in `[0, max_seq_len]`.

    Raises:
      ValueError: as `parse_length_spec`, or if a parsed distribution exceeds
        `max_seq_len`.
    """
    distribution = spec if isinstance(spec, LengthDistribution) else parse_length_spec(spec, max_seq_len)
    if distribution.high > max_seq_len:
        raise ValueError(
            f"history length spec {distribution.spec!r} reaches {distribution.high} > max_seq_len={max_seq_len}"
        )
    return distribution.sample(rng, size)


# ---------------------------------------------------------------------------
# Items, categories and batches.


def make_item_categories(num_items: int, num_categories: int, seed: int) -> np.ndarray:
    """A fixed random item -> category map in which every category has items.

    Each category gets `num_items // num_categories` or one more items, so
    categories are balanced and a candidate can be drawn from any category.

    Args:
      num_items: number of item ids.
      num_categories: number of category ids, at most `num_items`.
      seed: the map is a function of this seed only.

    Returns:
      int32 `[num_items]`: the category of each item.

    Raises:
      ValueError: if `num_categories < 1` or `num_items < num_categories`.
    """
    if num_categories < 1 or num_items < num_categories:
        raise ValueError(
            f"need 1 <= num_categories <= num_items; got num_items={num_items}, num_categories={num_categories}"
        )
    balanced = np.arange(num_items, dtype=np.int64) % num_categories
    return np.random.default_rng(seed).permutation(balanced).astype(np.int32)


class _ItemsByCategory(NamedTuple):
    """Items sorted by category, so items of a category are one slice."""

    items: np.ndarray  # int32 [num_items], sorted by category
    offsets: np.ndarray  # int64 [num_categories]: start of each category's slice
    counts: np.ndarray  # int64 [num_categories]


def _index_items_by_category(item_category: np.ndarray, num_categories: int) -> _ItemsByCategory:
    counts = np.bincount(item_category, minlength=num_categories).astype(np.int64)
    offsets = np.cumsum(counts) - counts
    items = np.argsort(item_category, kind="stable").astype(np.int32)
    return _ItemsByCategory(items, offsets, counts)


def _check_item_category(item_category: np.ndarray, num_items: int, num_categories: int) -> np.ndarray:
    item_category = np.asarray(item_category)
    if item_category.shape != (num_items,) or not np.issubdtype(item_category.dtype, np.integer):
        raise ValueError(
            f"item_category must be an integer array of shape ({num_items},); got {item_category.dtype} {item_category.shape}"
        )
    if item_category.min() < 0 or item_category.max() >= num_categories:
        raise ValueError(f"item_category values must lie in [0, num_categories={num_categories})")
    if np.bincount(item_category, minlength=num_categories).min() == 0:
        raise ValueError("every category needs at least one item (see make_item_categories)")
    return item_category.astype(np.int32)


def make_synthetic_batch(
    rng: np.random.Generator,
    batch_size: int,
    max_seq_len: int,
    num_users: int,
    num_items: int,
    num_categories: int,
    min_len: int = 1,
    item_category: Optional[np.ndarray] = None,
    length_spec: Optional[Union[str, LengthDistribution]] = None,
    category_seed: int = 0,
) -> Dict[str, np.ndarray]:
    """One batch of learnable synthetic data (see the module docstring).

    The label is 1 exactly when the candidate's category occurs in the valid
    history (`compute_rule_labels` recomputes it); half of the rows are
    positive by construction.

    Args:
      rng: the random generator to draw from; the batch is a function of its
        state and the other arguments.
      batch_size: number of rows B (0 gives an empty batch).
      max_seq_len: history positions T.
      num_users, num_items, num_categories: vocabulary sizes; needs
        `2 <= num_categories <= num_items` (a negative needs a category
        absent from the history).
      min_len: smallest history length (>= 1) of the default length
        distribution `uniform:min_len:max_seq_len`.
      item_category: int `[num_items]` item -> category map; by default
        `make_item_categories(num_items, num_categories, category_seed)`.
        Pass it when drawing many batches, so it is the same for all.
      length_spec: a history length spec ("uniform:LO:HI", "full:N", see
        `parse_length_spec`) replacing the default; then `min_len` is unused.
        Its smallest length must be >= 1 (a positive needs a history item).
      category_seed: seed of the default item -> category map.

    Returns:
      The batch dict of docs/DATASET_FORMAT.md: int32 "user", "item",
      "category", "hist_len" `[B]`, int32 "hist_item", "hist_category"
      `[B, T]` (0 at positions >= hist_len), float32 "label" `[B]`.

    Raises:
      ValueError: on invalid sizes, item_category or length spec.
    """
    if batch_size < 0 or max_seq_len < 1 or num_users < 1:
        raise ValueError(
            f"need batch_size >= 0, max_seq_len >= 1, num_users >= 1; got {batch_size}, {max_seq_len}, {num_users}"
        )
    if num_categories < 2:
        raise ValueError("need num_categories >= 2: a negative's category must be absent from its history")
    if item_category is None:
        item_category = make_item_categories(num_items, num_categories, category_seed)
    item_category = _check_item_category(item_category, num_items, num_categories)
    if length_spec is None:
        if not 1 <= min_len <= max_seq_len:
            raise ValueError(f"need 1 <= min_len <= max_seq_len; got min_len={min_len}")
        length_spec = f"uniform:{min_len}:{max_seq_len}"
    lengths = (
        length_spec if isinstance(length_spec, LengthDistribution) else parse_length_spec(length_spec, max_seq_len)
    )
    if lengths.low < 1:
        raise ValueError(
            f"history length spec {lengths.spec!r} allows length 0, but every row needs a history item "
            "(a positive's category is taken from it)"
        )
    by_category = _index_items_by_category(item_category, num_categories)

    hist_len_B = sample_lengths(rng, lengths, batch_size, max_seq_len)
    num_positive = batch_size // 2 + (int(rng.integers(2)) if batch_size % 2 else 0)
    positive_B = rng.permutation(np.arange(batch_size) < num_positive)
    excluded_B = rng.integers(0, num_categories, size=batch_size)

    # Uniform over the items outside the excluded category: draw a rank among
    # the num_items - count[e] others in category-sorted order, then step over
    # the excluded category's slice.
    excluded_count_B = by_category.counts[excluded_B]
    excluded_offset_B = by_category.offsets[excluded_B]
    rank_BxT = rng.integers(0, num_items - excluded_count_B[:, None], size=(batch_size, max_seq_len))
    rank_BxT = rank_BxT + np.where(rank_BxT >= excluded_offset_B[:, None], excluded_count_B[:, None], 0)
    valid_BxT = np.arange(max_seq_len)[None, :] < hist_len_B[:, None]
    hist_item_BxT = np.where(valid_BxT, by_category.items[rank_BxT], 0).astype(np.int32)
    hist_category_BxT = np.where(valid_BxT, item_category[hist_item_BxT], 0).astype(np.int32)

    # A positive takes the category of a uniformly chosen valid position.
    chosen_position_B = rng.integers(0, hist_len_B)
    present_category_B = hist_category_BxT[np.arange(batch_size), chosen_position_B]
    category_B = np.where(positive_B, present_category_B, excluded_B).astype(np.int64)
    within_B = rng.integers(0, by_category.counts[category_B])
    item_B = by_category.items[by_category.offsets[category_B] + within_B]

    return {
        "user": rng.integers(0, num_users, size=batch_size).astype(np.int32),
        "item": item_B.astype(np.int32),
        "category": category_B.astype(np.int32),
        "hist_item": hist_item_BxT,
        "hist_category": hist_category_BxT,
        "hist_len": hist_len_B.astype(np.int32),
        "label": positive_B.astype(np.float32),
    }


def compute_rule_labels(batch: Dict[str, np.ndarray]) -> np.ndarray:
    """The synthetic label rule applied to a batch: candidate category in history.

    Args:
      batch: a batch dict (docs/DATASET_FORMAT.md).

    Returns:
      bool `[B]`: whether each row's "category" occurs among its first
      "hist_len" entries of "hist_category". On synthetic data gathered with
      at least the generation's `max_seq_len`, this equals the label.
    """
    hist_category_BxT = np.asarray(batch["hist_category"])
    positions = hist_category_BxT.shape[1]
    valid_BxT = np.arange(positions)[None, :] < np.asarray(batch["hist_len"])[:, None]
    matches_BxT = hist_category_BxT == np.asarray(batch["category"])[:, None]
    return np.any(matches_BxT & valid_BxT, axis=1)


# ---------------------------------------------------------------------------
# A whole dataset with the interface of din_jax.data.dataset.Dataset.


class SyntheticDataset:
    """Pre-generated synthetic splits behind the interface of the real `Dataset`.

    The data is stored as the dataset directory stores it
    (docs/DATASET_FORMAT.md): every behaviour sequence concatenated in
    `sequences` with `offsets`, and each split as int32 sample rows
    `(user, sequence, position, item, label)`. Each synthetic row is its own
    sequence and its history is the whole sequence (`position` = its length).
    Sequence ids run over train, then validation, then test rows. Build it
    with `make_synthetic_dataset`.

    `resample_negatives` draws fresh negatives that keep the label rule (a
    new item of the same absent category), never the real dataset's uniform
    items, which would often fall into a category of the history.

    Attributes:
      num_users, num_items, num_categories: vocabulary sizes.
      item_category: int32 `[num_items]`.
      sequences: int32 `[total_events]`; offsets: int64 `[num_sequences + 1]`
        (sequence `s` is `sequences[offsets[s]:offsets[s + 1]]`).
      max_seq_len: the longest history generated.
      meta: the meta.json-style description; "name" is "synthetic".
    """

    def __init__(
        self,
        item_category: np.ndarray,
        sequences: np.ndarray,
        offsets: np.ndarray,
        splits: Dict[str, np.ndarray],
        num_users: int,
        meta: Dict[str, object],
    ):
        self.item_category = item_category
        self.sequences = sequences
        self.offsets = offsets
        self.num_users = int(num_users)
        self.num_items = int(item_category.shape[0])
        self.num_categories = int(meta["categories"])
        self.max_seq_len = int(meta["max_seq_len"])
        self.meta = meta
        self._splits = splits
        self._items_by_category = _index_items_by_category(item_category, self.num_categories)
        self._frequencies: Optional[Dict[str, np.ndarray]] = None
        self._gather_tables: Optional[Tuple[np.ndarray, np.ndarray]] = None
        for array in [item_category, sequences, offsets] + list(splits.values()):
            # Read-only, like the memory-mapped arrays of a real dataset.
            array.setflags(write=False)

    def split_names(self) -> List[str]:
        """Names of the splits that have rows, in the order train, validation, test.

        An empty split is left out, as a dataset directory without that file
        would be: the trainer reads a missing "validation" as "no model
        selection". `num_samples` still answers 0 for it.
        """
        return [name for name in SPLITS if self._splits[name].shape[0] > 0]

    def _rows(self, split: str) -> np.ndarray:
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}; choose from {self.split_names()}")
        return self._splits[split]

    def num_samples(self, split: str) -> int:
        """Number of sample rows of `split`."""
        return int(self._rows(split).shape[0])

    def samples(self, split: str) -> np.ndarray:
        """The read-only int32 `[N, 5]` rows `(user, sequence, position, item, label)` of `split`."""
        return self._rows(split)

    def history_lengths(self, split: str, max_seq_len: int) -> np.ndarray:
        """int32 `[N]` history length of each row of `split` once cut to `max_seq_len`."""
        return np.minimum(self._rows(split)[:, 2], max_seq_len).astype(np.int32)

    def gather(
        self,
        split: str,
        indices: Sequence[int],
        max_seq_len: int,
        samples: Optional[np.ndarray] = None,
    ) -> Dict[str, np.ndarray]:
        """A batch dict of the given rows.

        Args:
          split: the split whose rows `indices` select.
          indices: int row indices, `[B]`.
          max_seq_len: T of the batch. Histories longer than T keep their
            last T items; below the generation's `max_seq_len` that can cut
            away the item a positive's category came from, breaking the label
            rule for those rows.
          samples: rows to select from instead of the split's own, int
            `[N, 5]` in the same column layout.

        Returns:
          The batch dict of docs/DATASET_FORMAT.md.

        Raises:
          ValueError: for an unknown split, non-integer or non-1-D indices,
            or `max_seq_len < 1`.
        """
        rows = self._rows(split) if samples is None else np.asarray(samples)
        index_B = np.asarray(indices)
        if index_B.ndim != 1 or not (np.issubdtype(index_B.dtype, np.integer) or index_B.size == 0):
            raise ValueError(f"indices must be a 1-D integer array; got {index_B.dtype} {index_B.shape}")
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1; got {max_seq_len}")
        if self._gather_tables is None:
            # Built once, as Dataset does: rebuilding them per call cost more than the gather itself.
            self._gather_tables = make_gather_tables(self.sequences, self.item_category)
        return gather_rows(
            rows[index_B.astype(np.int64)], self.sequences, self.offsets, self.item_category, max_seq_len,
            self._gather_tables,
        )

    def _training_frequencies(self) -> Dict[str, np.ndarray]:
        # Counted as a dataset build counts them, so both sources give the same n_j.
        if self._frequencies is None:
            self._frequencies = count_training_frequencies(
                self._rows("train"),
                self.sequences,
                self.offsets,
                self.item_category,
                self.num_users,
                self.num_categories,
                self.max_seq_len,
            )
        return self._frequencies

    def item_frequencies(self) -> np.ndarray:
        """int64 `[num_items]`: each item's occurrences in the training rows (candidate + history).

        These are the `n_j` of mini-batch aware regularisation (Zhou et al.
        2018), as `train_item_freq.npy` of a dataset directory.
        """
        return self._training_frequencies()["item"]

    def category_frequencies(self) -> np.ndarray:
        """int64 `[num_categories]`: each category's occurrences in the training rows (candidate + history)."""
        return self._training_frequencies()["category"]

    def user_frequencies(self) -> np.ndarray:
        """int64 `[num_users]`: training rows per user."""
        return self._training_frequencies()["user"]

    def resample_negatives(self, rng: np.random.Generator) -> np.ndarray:
        """Fresh negative candidates (for a new epoch) that keep the label rule.

        Each negative row gets a new candidate drawn uniformly from the items
        of its current candidate's category: that category is absent from the
        row's history by construction, so the row still follows the rule with
        label 0. Positive rows are unchanged. A real dataset's resampling
        (uniform items the user never saw) would often pick a category of the
        history here and contradict the label.

        Args:
          rng: the random generator to draw from.

        Returns:
          A new int32 `[N, 5]` array of the training rows (the stored rows
          are unchanged), to pass as `gather("train", ..., samples=...)`.
        """
        rows = self._rows("train").copy()
        negative = rows[:, 4] == 0
        category = self.item_category[rows[negative, 3]].astype(np.int64)
        by_category = self._items_by_category
        within = rng.integers(0, by_category.counts[category])
        rows[negative, 3] = by_category.items[by_category.offsets[category] + within]
        return rows


def _generate_split(
    rng: np.random.Generator,
    num_rows: int,
    first_sequence: int,
    config: Dict[str, object],
    item_category: np.ndarray,
    lengths: LengthDistribution,
):
    """Rows and packed histories of one split, generated chunk by chunk."""
    row_chunks = [np.zeros((0, 5), dtype=np.int32)]
    history_chunks = [np.zeros(0, dtype=np.int32)]
    length_chunks = [np.zeros(0, dtype=np.int64)]
    for chunk_start in range(0, num_rows, _GENERATION_CHUNK_ROWS):
        chunk_rows = min(_GENERATION_CHUNK_ROWS, num_rows - chunk_start)
        batch = make_synthetic_batch(
            rng,
            chunk_rows,
            config["max_seq_len"],
            config["num_users"],
            config["num_items"],
            config["num_categories"],
            item_category=item_category,
            length_spec=lengths,
        )
        sequence_ids = first_sequence + chunk_start + np.arange(chunk_rows)
        row_chunks.append(
            np.stack([batch["user"], sequence_ids, batch["hist_len"], batch["item"], batch["label"]], axis=1).astype(
                np.int32
            )
        )
        valid = np.arange(config["max_seq_len"])[None, :] < batch["hist_len"][:, None]
        # Boolean indexing reads row by row, so each history stays contiguous.
        history_chunks.append(batch["hist_item"][valid])
        length_chunks.append(batch["hist_len"].astype(np.int64))
    return np.concatenate(row_chunks), np.concatenate(history_chunks), np.concatenate(length_chunks)


def make_synthetic_dataset(
    num_train: int,
    num_validation: int,
    num_test: int,
    max_seq_len: int = 100,
    num_users: int = 1000,
    num_items: int = 500,
    num_categories: int = 20,
    seed: int = 0,
    min_len: int = 1,
    length_spec: Optional[str] = None,
) -> SyntheticDataset:
    """Generates every split once, deterministically, as a `SyntheticDataset`.

    The item -> category map comes from `seed`; each split is drawn from its
    own generator seeded with `(seed, split index)`, so changing the size of
    one split leaves the others unchanged.

    Args:
      num_train, num_validation, num_test: rows per split (0 allowed).
      max_seq_len: the longest history.
      num_users, num_items, num_categories: vocabulary sizes; needs
        `2 <= num_categories <= num_items`.
      seed: a non-negative integer; the dataset is a function of it and the
        other arguments.
      min_len: smallest history length of the default length distribution
        `uniform:min_len:max_seq_len`.
      length_spec: a history length spec replacing the default (see
        `parse_length_spec`); its smallest length must be >= 1.

    Returns:
      The `SyntheticDataset`.

    Raises:
      ValueError: on negative split sizes or invalid generation arguments.
    """
    split_sizes = {"train": num_train, "validation": num_validation, "test": num_test}
    if min(split_sizes.values()) < 0:
        raise ValueError(f"split sizes must be >= 0; got {split_sizes}")
    if length_spec is None:
        if not 1 <= min_len <= max_seq_len:
            raise ValueError(f"need 1 <= min_len <= max_seq_len; got min_len={min_len}")
        length_spec = f"uniform:{min_len}:{max_seq_len}"
    lengths = parse_length_spec(length_spec, max_seq_len)
    config = {
        "max_seq_len": max_seq_len,
        "num_users": num_users,
        "num_items": num_items,
        "num_categories": num_categories,
    }
    item_category = make_item_categories(num_items, num_categories, seed)

    splits = {}
    histories = []
    history_lengths = []
    first_sequence = 0
    for split_index, name in enumerate(SPLITS):
        rng = np.random.default_rng([seed, split_index])
        rows, history, lengths_of_split = _generate_split(
            rng, split_sizes[name], first_sequence, config, item_category, lengths
        )
        splits[name] = rows
        histories.append(history)
        history_lengths.append(lengths_of_split)
        first_sequence += split_sizes[name]

    all_lengths = np.concatenate(history_lengths)
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(all_lengths)]).astype(np.int64)
    meta = {
        "format": "din_jax.dataset",
        "version": 1,
        "name": "synthetic",
        "source_format": "synthetic",
        "users": num_users,
        "items": num_items,
        "categories": num_categories,
        "sequences": int(all_lengths.shape[0]),
        "splits": dict(split_sizes),
        "max_seq_len": max_seq_len,
        "negatives": {"resampleable": True, "seed": seed, "rule": "new item of the same absent category"},
        "sources": [],
        "build": {
            "generator": "din_jax.data.synthetic.make_synthetic_dataset",
            "seed": seed,
            "length_spec": length_spec,
            "label_rule": "candidate category occurs in the history",
            **config,
        },
        "dropped": {},
        "created": None,
    }
    return SyntheticDataset(item_category, np.concatenate(histories).astype(np.int32), offsets, splits, num_users, meta)
