"""Learnable synthetic CTR data: ``label = 1`` iff the candidate's category occurs in the valid history.

The rule needs the candidate and the history together, which is what DIN's attention is for (Graphcore's
generator drew noise labels); neither the history nor the user alone carries signal. How rows are drawn:
docs/DATA.md, "Synthetic data". Shape letters: B rows, T history positions (``max_seq_len``).
"""

import dataclasses
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from din_jax.data.dataset import FORMAT_NAME, FORMAT_VERSION, SPLITS, Dataset

_GENERATION_CHUNK_ROWS = 65536

# History lengths of 10,000 random rows of the Amazon Electronics training set (the DIN paper's data):
# entry n - 1 counts the histories of n items, those over 100 (71, up to 331) counted at 100. Median 4,
# mean 8.8 (8.3 after the cut), 90th percentile 18, 99th 85; tests/test_synthetic_lengths.py recomputes it.
ELECTRONICS_SAMPLE_FILE = "data/amazon_electronics_din_sample/train_set_mini.csv"
ELECTRONICS_HISTORY_LENGTH_COUNTS: Tuple[int, ...] = (
    1515, 1508, 1458, 1010, 772, 595, 423, 338, 258, 204, 201, 177, 150, 110, 89, 89, 81, 77, 58, 60,  # 1-20
    42, 37, 41, 31, 27, 43, 30, 29, 23, 23, 20, 20, 16, 18, 17, 12, 15, 12, 9, 11,  # 21-40
    11, 11, 16, 11, 13, 16, 14, 10, 9, 6, 6, 5, 3, 10, 3, 4, 5, 5, 11, 2,  # 41-60
    3, 3, 6, 2, 5, 3, 5, 3, 3, 7, 1, 2, 4, 2, 6, 2, 3, 5, 3, 3,  # 61-80
    0, 4, 0, 1, 4, 3, 2, 1, 1, 2, 0, 1, 2, 2, 3, 2, 1, 0, 3, 77,  # 81-100
)  # fmt: skip


@dataclasses.dataclass(frozen=True, eq=False)
class LengthDistribution:
    """History lengths over ``low..high``: uniform, or float64 ``probabilities`` of ``low..high``."""

    spec: str
    low: int
    high: int
    probabilities: Optional[np.ndarray] = None

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.probabilities is None:
            return rng.integers(self.low, self.high + 1, size=size).astype(np.int32)
        return (self.low + rng.choice(self.probabilities.shape[0], size=size, p=self.probabilities)).astype(np.int32)


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
    """A distribution from counts of lengths ``1..len(counts)``, its tail above ``max_seq_len`` folded into it."""
    counts_L = np.asarray(counts, dtype=np.float64)
    if max_seq_len < len(counts_L):
        counts_L = np.concatenate([counts_L[: max_seq_len - 1], [counts_L[max_seq_len - 1 :].sum()]])
    nonzero = np.flatnonzero(counts_L)
    low, high = int(nonzero[0]) + 1, int(nonzero[-1]) + 1
    table = counts_L[low - 1 : high]
    return LengthDistribution(spec, low, high, table / table.sum())


def _parse_electronics(spec: str, fields: List[str], max_seq_len: int) -> LengthDistribution:
    if fields:
        raise ValueError(f"history length spec {spec!r}: write it as electronics")
    return empirical_length_distribution(spec, ELECTRONICS_HISTORY_LENGTH_COUNTS, max_seq_len)


# Spec name -> (how it is written, parser(spec, fields after the name, max_seq_len)).
LENGTH_DISTRIBUTIONS: Dict[str, Tuple[str, Callable[[str, List[str], int], LengthDistribution]]] = {
    "uniform": ("uniform:LO:HI", _parse_uniform),
    "full": ("full:N", _parse_full),
    "electronics": ("electronics", _parse_electronics),
}


def parse_length_spec(spec: str, max_seq_len: int) -> LengthDistribution:
    """Parses a history length spec: ``uniform:LO:HI``, ``full:N`` or ``electronics`` (Amazon Electronics').

    ValueError for an unknown name, malformed fields or lengths outside ``[0, max_seq_len]``.
    """
    if not isinstance(spec, str):
        raise TypeError(f"history length spec must be a string, got {spec!r}")
    name, *fields = spec.split(":")
    if name not in LENGTH_DISTRIBUTIONS:
        forms = [form for form, _ in LENGTH_DISTRIBUTIONS.values()]
        raise ValueError(f"unknown history length spec {spec!r}; choose from {forms}")
    return LENGTH_DISTRIBUTIONS[name][1](spec, fields, max_seq_len)


def sample_lengths(
    rng: np.random.Generator, spec: Union[str, LengthDistribution], size: int, max_seq_len: int
) -> np.ndarray:
    """Draws int32 ``[size]`` history lengths from a spec string or a parsed ``LengthDistribution``."""
    distribution = spec if isinstance(spec, LengthDistribution) else parse_length_spec(spec, max_seq_len)
    if distribution.high > max_seq_len:
        raise ValueError(
            f"history length spec {distribution.spec!r} reaches {distribution.high} > max_seq_len={max_seq_len}"
        )
    return distribution.sample(rng, size)


def _history_lengths(
    length_spec: Optional[Union[str, LengthDistribution]], min_len: int, max_seq_len: int
) -> LengthDistribution:
    if length_spec is None:
        if not 1 <= min_len <= max_seq_len:
            raise ValueError(f"need 1 <= min_len <= max_seq_len; got min_len={min_len}")
        length_spec = f"uniform:{min_len}:{max_seq_len}"
    return length_spec if isinstance(length_spec, LengthDistribution) else parse_length_spec(length_spec, max_seq_len)


def make_item_categories(num_items: int, num_categories: int, seed: int) -> np.ndarray:
    """A fixed random int32 ``[num_items]`` item -> category map (a function of ``seed``), categories balanced."""
    if num_categories < 1 or num_items < num_categories:
        raise ValueError(
            f"need 1 <= num_categories <= num_items; got num_items={num_items}, num_categories={num_categories}"
        )
    balanced = np.arange(num_items, dtype=np.int64) % num_categories
    return np.random.default_rng(seed).permutation(balanced).astype(np.int32)


class _ItemsByCategory(NamedTuple):
    items: np.ndarray  # int32 [num_items], sorted by category
    offsets: np.ndarray  # int64 [num_categories]: start of each category's slice
    counts: np.ndarray  # int64 [num_categories]

    def draw(self, rng: np.random.Generator, category: np.ndarray) -> np.ndarray:
        return self.items[self.offsets[category] + rng.integers(0, self.counts[category])]


def _index_items_by_category(item_category: np.ndarray, num_categories: int) -> _ItemsByCategory:
    counts = np.bincount(item_category, minlength=num_categories).astype(np.int64)
    offsets = np.cumsum(counts) - counts
    items = np.argsort(item_category, kind="stable").astype(np.int32)
    return _ItemsByCategory(items, offsets, counts)


def _check_item_category(item_category: np.ndarray, num_items: int, num_categories: int) -> np.ndarray:
    item_category = np.asarray(item_category)
    if item_category.shape != (num_items,) or not np.issubdtype(item_category.dtype, np.integer):
        raise ValueError(
            f"item_category must be an integer array of shape ({num_items},); "
            f"got {item_category.dtype} {item_category.shape}"
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
    """The batch dict (docs/DATASET_FORMAT.md) of ``batch_size`` synthetic rows, a function of ``rng``'s state.

    Needs ``2 <= num_categories <= num_items``. History lengths follow ``length_spec`` (lengths >= 1), by
    default ``uniform:min_len:max_seq_len``; ``item_category`` defaults to
    ``make_item_categories(num_items, num_categories, category_seed)``.
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
    lengths = _history_lengths(length_spec, min_len, max_seq_len)
    if lengths.low < 1:
        raise ValueError(
            f"history length spec {lengths.spec!r} allows length 0, but every row needs a history "
            "item (a positive's category is taken from it)"
        )
    by_category = _index_items_by_category(item_category, num_categories)

    hist_len_B = sample_lengths(rng, lengths, batch_size, max_seq_len)
    num_positive = batch_size // 2 + (int(rng.integers(2)) if batch_size % 2 else 0)
    positive_B = rng.permutation(np.arange(batch_size) < num_positive)
    excluded_B = rng.integers(0, num_categories, size=batch_size)

    # Uniform over the items outside the excluded category: draw a rank among the others in
    # category-sorted order, then step over the excluded category's slice.
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
    item_B = by_category.draw(rng, category_B)

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
    """bool ``[B]``: whether each row's category occurs in its valid history (the synthetic label rule).

    On synthetic data gathered with at least the generation's ``max_seq_len`` this equals the label.
    """
    hist_category_BxT = np.asarray(batch["hist_category"])
    valid_BxT = np.arange(hist_category_BxT.shape[1])[None, :] < np.asarray(batch["hist_len"])[:, None]
    return np.any((hist_category_BxT == np.asarray(batch["category"])[:, None]) & valid_BxT, axis=1)


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
) -> Dataset:
    """Generates every split once, deterministically, as an in-memory ``Dataset``.

    Arguments as ``make_synthetic_batch``. Each row is its own sequence and its history is all of it
    (``position`` = its length); sequence ids run over train, validation, then test. Each split has its own
    generator, seeded ``(seed, split index)``, so resizing one split leaves the others unchanged.
    ``resample_negatives`` keeps the label rule: a negative gets a new item of its (absent) category.
    """
    split_sizes = {"train": num_train, "validation": num_validation, "test": num_test}
    if min(split_sizes.values()) < 0:
        raise ValueError(f"split sizes must be >= 0; got {split_sizes}")
    lengths = _history_lengths(length_spec, min_len, max_seq_len)
    config = dict(max_seq_len=max_seq_len, num_users=num_users, num_items=num_items, num_categories=num_categories)
    item_category = make_item_categories(num_items, num_categories, seed)
    splits, histories = {}, [np.zeros(0, dtype=np.int32)]
    first_sequence = 0
    for split_index, name in enumerate(SPLITS):
        rng = np.random.default_rng([seed, split_index])
        row_chunks = [np.zeros((0, 5), dtype=np.int32)]
        # Generated in chunks, which bounds the [rows, T] temporaries.
        for start in range(0, split_sizes[name], _GENERATION_CHUNK_ROWS):
            size = min(_GENERATION_CHUNK_ROWS, split_sizes[name] - start)
            batch = make_synthetic_batch(rng, size, item_category=item_category, length_spec=lengths, **config)
            sequence_ids = first_sequence + start + np.arange(size)
            columns = [batch["user"], sequence_ids, batch["hist_len"], batch["item"], batch["label"]]
            row_chunks.append(np.stack(columns, axis=1).astype(np.int32))
            valid = np.arange(max_seq_len)[None, :] < batch["hist_len"][:, None]
            # Boolean indexing reads row by row, so each history stays contiguous.
            histories.append(batch["hist_item"][valid])
        splits[name] = np.concatenate(row_chunks)
        first_sequence += split_sizes[name]

    all_lengths = np.concatenate([splits[name][:, 2] for name in SPLITS]).astype(np.int64)
    offsets = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(all_lengths)])
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
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
            "length_spec": lengths.spec,
            "label_rule": "candidate category occurs in the history",
            **config,
        },
        "dropped": {},
        "created": None,
    }
    by_category = _index_items_by_category(item_category, num_categories)

    def draw_negatives(rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
        # A uniform item of the row's current (absent) category, never the uniform items of a real
        # dataset, which would often fall into a category of the history and contradict the label.
        return by_category.draw(rng, item_category[rows[:, 3]].astype(np.int64))

    return Dataset.from_arrays(meta, np.concatenate(histories), offsets, item_category, splits, draw_negatives)
