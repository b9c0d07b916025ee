"""The din_jax dataset (docs/DATASET_FORMAT.md): loading a directory memory-mapped, or holding arrays in memory.

Every behaviour sequence is stored once (``sequences`` + ``offsets``) and a sample is a row
``(user, sequence, position, item, label)`` whose history is the sequence's prefix of length ``position``.
Batches are gathered with numpy fancy indexing, never a Python loop per sample. ``din_jax.data.writer``
writes the directory.
"""

import json
import os
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from din_jax.data.negatives import make_user_item_keys, sample_negatives

FORMAT_NAME = "din_jax.dataset"
FORMAT_VERSION = 1
SAMPLE_COLUMNS = ("user", "sequence", "position", "item", "label")
SPLITS = ("train", "validation", "test")
DEFAULT_MAX_SEQ_LEN = 100

META_FILE = "meta.json"
SEQUENCES_FILE = "sequences.npy"
OFFSETS_FILE = "sequence_offsets.npy"
ITEM_CATEGORY_FILE = "item_category.npy"
ID_MAP_FILES = {"user": "user_ids.txt", "item": "item_ids.txt", "category": "category_ids.txt"}
FREQ_FILES = {"item": "train_item_freq.npy", "category": "train_category_freq.npy", "user": "train_user_freq.npy"}
_VOCAB_KEYS = {"user": "users", "item": "items", "category": "categories"}

_USER, _SEQUENCE, _POSITION, _ITEM, _LABEL = range(5)

# (rng, negative train rows [n, 5]) -> [n] new candidate items.
NegativeSampler = Callable[[np.random.Generator, np.ndarray], np.ndarray]


class DatasetError(ValueError):
    """A dataset that cannot be written or read; the message names the directory and file."""


class Dataset:
    """A dataset: a loaded directory (large arrays memory-mapped; ``path`` set) or arrays in memory (``path`` None).

    ``meta`` is the parsed meta.json; ``sequences``, ``offsets`` and ``item_category`` are the arrays of the
    same names in docs/DATASET_FORMAT.md.
    """

    def __init__(
        self,
        path: Optional[str],
        meta: dict,
        sequences: np.ndarray,
        offsets: np.ndarray,
        item_category: np.ndarray,
        splits: Dict[str, np.ndarray],
        draw_negatives: Optional[NegativeSampler] = None,
    ):
        self.path = path
        self.meta = meta
        self.num_users = int(meta["users"])
        self.num_items = int(meta["items"])
        self.num_categories = int(meta["categories"])
        self.sequences = sequences
        self.offsets = offsets
        self.item_category = item_category
        self._splits = splits
        self._draw_negatives = draw_negatives
        self._user_item_keys: Optional[np.ndarray] = None
        self._gather_tables: Optional[Tuple[np.ndarray, np.ndarray]] = None
        self._frequencies: Dict[int, Dict[str, np.ndarray]] = {}  # max_seq_len -> counts, counted on first use
        self._counted_with = int(meta.get("max_seq_len", DEFAULT_MAX_SEQ_LEN))

    @classmethod
    def from_arrays(
        cls,
        meta: dict,
        sequences,
        offsets,
        item_category,
        splits: Mapping[str, np.ndarray],
        draw_negatives: Optional[NegativeSampler] = None,
    ) -> "Dataset":
        """A dataset held in memory (e.g. ``din_jax.data.synthetic``'s), its arrays made read-only.

        ``meta`` and the arrays are as a directory's (a missing standard split is empty); ``draw_negatives``
        replaces ``resample_negatives``' draw. DatasetError for arrays that break the format.
        """
        sequences = np.ascontiguousarray(sequences, dtype=np.int32).reshape(-1)
        offsets = np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1)
        item_category = np.ascontiguousarray(item_category, dtype=np.int32).reshape(-1)
        empty = np.zeros((0, len(SAMPLE_COLUMNS)), dtype=np.int32)
        names = list(SPLITS) + sorted(set(splits) - set(SPLITS))
        all_splits = {name: np.ascontiguousarray(splits.get(name, empty), dtype=np.int32) for name in names}
        problem = find_value_problem(meta, sequences, offsets, item_category, all_splits)
        if problem is not None:
            raise DatasetError("in-memory dataset: invalid {}: {}".format(*problem))
        for array in [sequences, offsets, item_category] + list(all_splits.values()):
            array.setflags(write=False)
        return cls(None, meta, sequences, offsets, item_category, all_splits, draw_negatives)

    def __repr__(self) -> str:
        rows = ", ".join(f"{name}={len(rows)}" for name, rows in self._splits.items())
        return (
            f"Dataset({self.path!r}, users={self.num_users}, items={self.num_items}, "
            f"categories={self.num_categories}, {rows})"
        )

    def split_names(self) -> List[str]:
        """The names of the splits that have at least one sample, train first."""
        return [name for name, rows in self._splits.items() if len(rows)]

    def samples(self, split: str) -> np.ndarray:
        """The read-only int32 ``[N, 5]`` sample rows of a split."""
        try:
            return self._splits[split]
        except KeyError:
            raise DatasetError(f"{self.path}: unknown split {split!r}; choose from {sorted(self._splits)}") from None

    def num_samples(self, split: str) -> int:
        """The number of sample rows of a split (0 for an empty one)."""
        return int(len(self.samples(split)))

    def history_lengths(self, split: str, max_seq_len: int) -> np.ndarray:
        """int32 ``[N]``: the history length each sample of the split gets in a batch."""
        return np.minimum(self.samples(split)[:, _POSITION], max_seq_len).astype(np.int32)

    def gather(
        self, split: str, indices: np.ndarray, max_seq_len: int, samples: Optional[np.ndarray] = None
    ) -> Dict[str, np.ndarray]:
        """The batch dict (docs/DATASET_FORMAT.md) of rows ``indices`` ``[B]`` of a split, or of ``samples`` if given.

        The history is the last ``max_seq_len`` items of the sample's prefix, left-aligned and zero padded.
        """
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
        source = self.samples(split) if samples is None else samples
        rows = np.asarray(source[np.asarray(indices, dtype=np.int64)], dtype=np.int32)
        if self._gather_tables is None:
            # Built on first use (a benign race if two threads get here together).
            self._gather_tables = make_gather_tables(self.sequences, self.item_category)
        return gather_rows(rows, self.sequences, self.offsets, self.item_category, max_seq_len, self._gather_tables)

    def gather_packed(
        self,
        split: str,
        indices_MxB: np.ndarray,
        max_seq_len: int,
        positions: int,
        samples: Optional[np.ndarray] = None,
    ) -> Dict[str, np.ndarray]:
        """Packed micro-batches (docs/DATASET_FORMAT.md) of rows ``indices`` ``[M, B]`` (-1: an empty slot): per
        micro-batch ``[M, B]`` sample fields with ``weight`` (0 for an empty slot), and ``[M, positions]``
        ``hist_item``, ``hist_category``, ``hist_segment``, the histories as ``gather`` cuts them, end to end."""
        source = self.samples(split) if samples is None else samples
        indices_MxB = np.asarray(indices_MxB, dtype=np.int64)
        real = indices_MxB >= 0
        rows = np.asarray(source[np.where(real, indices_MxB, 0).reshape(-1)], dtype=np.int32)
        if self._gather_tables is None:
            self._gather_tables = make_gather_tables(self.sequences, self.item_category)
        return pack_rows(rows, real, self.offsets, self.item_category, max_seq_len, positions, self._gather_tables)

    def can_resample_negatives(self) -> bool:
        """Whether ``resample_negatives`` works: the negatives are not fixed by the source (the authors' data)."""
        return self._draw_negatives is not None or bool((self.meta.get("negatives") or {}).get("resampleable"))

    def resample_negatives(self, rng: np.random.Generator) -> np.ndarray:
        """A copy of the train rows whose label-0 rows get fresh negatives.

        By default uniform, never an item of the user's sequences; ``draw_negatives`` (``from_arrays``) draws its own.
        DatasetError if the negatives are fixed (meta ``negatives.resampleable`` false, e.g. the authors' data).
        """
        if not self.can_resample_negatives():
            raise DatasetError(
                f"{self.path}: {META_FILE}: negatives of this dataset ({self.meta.get('source_format')}"
                " source) are fixed and cannot be resampled"
            )
        train = np.array(self.samples("train"), dtype=np.int32, copy=True)
        negative_rows = np.flatnonzero(train[:, _LABEL] == 0)
        if self._draw_negatives is not None:
            train[negative_rows, _ITEM] = self._draw_negatives(rng, train[negative_rows])
            return train
        try:
            train[negative_rows, _ITEM] = sample_negatives(
                rng, train[negative_rows, _USER], self.num_items, self.user_item_keys()
            )
        except ValueError as error:
            raise DatasetError(f"{self.path}: {error}") from None
        return train

    def user_item_keys(self) -> np.ndarray:
        """The sorted ``user * num_items + item`` keys of every (user, item in their sequences) pair."""
        if self._user_item_keys is None:
            sequence_user = np.full(len(self.offsets) - 1, -1, dtype=np.int64)
            for rows in self._splits.values():
                sequence_user[rows[:, _SEQUENCE]] = rows[:, _USER]
            event_user = np.repeat(sequence_user, np.diff(self.offsets))
            known = event_user >= 0
            self._user_item_keys = make_user_item_keys(
                event_user[known], np.asarray(self.sequences)[known], self.num_items
            )
        return self._user_item_keys

    def _load_frequencies(self, kind: str, max_seq_len: Optional[int]) -> np.ndarray:
        # The build stored the counts at its max_seq_len; another cut is counted from the stored sequences (well
        # under a second for a 5-core category), once per length.
        length = self._counted_with if max_seq_len is None else int(max_seq_len)
        if self.path is not None and length == self._counted_with:
            vocab = getattr(self, "num_" + _VOCAB_KEYS[kind])
            return _load_array(self.path, FREQ_FILES[kind], np.int64, (vocab,))
        if length not in self._frequencies:
            self._frequencies[length] = count_training_frequencies(
                self.samples("train"),
                self.sequences,
                self.offsets,
                self.item_category,
                self.num_users,
                self.num_categories,
                length,
            )
        return self._frequencies[length][kind]

    def item_frequencies(self, max_seq_len: Optional[int] = None) -> np.ndarray:
        """int64 ``[num_items]``: each item's occurrences in the training samples, histories cut at ``max_seq_len``
        (default: the build's), MBA's n_j."""
        return self._load_frequencies("item", max_seq_len)

    def category_frequencies(self, max_seq_len: Optional[int] = None) -> np.ndarray:
        """int64 ``[num_categories]``: each category's occurrences in the training samples (as ``item_frequencies``)."""
        return self._load_frequencies("category", max_seq_len)

    def user_frequencies(self, max_seq_len: Optional[int] = None) -> np.ndarray:
        """int64 ``[num_users]``: training samples per user."""
        return self._load_frequencies("user", max_seq_len)

    def id_map(self, kind: str) -> List[str]:
        """The raw keys of ``user``, ``item`` or ``category`` ids (line i = id i); none in memory."""
        if kind not in ID_MAP_FILES:
            raise DatasetError(f"{self.path}: unknown id map {kind!r}; choose from {sorted(ID_MAP_FILES)}")
        if self.path is None:
            raise DatasetError("an in-memory dataset has no id maps")
        return _read_id_map(self.path, ID_MAP_FILES[kind])


def make_gather_tables(sequences: np.ndarray, item_category: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """In-memory int32 copies of the events' items and categories, each with a trailing 0 for padded slots."""
    items = np.zeros(len(sequences) + 1, dtype=np.int32)
    items[:-1] = sequences
    categories = np.zeros(len(sequences) + 1, dtype=np.int32)
    categories[:-1] = item_category[items[:-1]]
    return items, categories


def gather_rows(
    rows: np.ndarray,
    sequences: np.ndarray,
    offsets: np.ndarray,
    item_category: np.ndarray,
    max_seq_len: int,
    tables: Optional[Tuple[np.ndarray, np.ndarray]] = None,
) -> Dict[str, np.ndarray]:
    """The batch dict of sample rows ``[B, 5]`` (see ``Dataset.gather``); ``tables``: ``make_gather_tables``'."""
    event_items, event_categories = tables if tables is not None else make_gather_tables(sequences, item_category)
    rows = np.asarray(rows, dtype=np.int32).reshape(-1, len(SAMPLE_COLUMNS))
    position = rows[:, _POSITION].astype(np.int64)
    hist_len = np.minimum(position, max_seq_len)
    # The last `hist_len` items of the prefix: they start `position - hist_len` into the sequence.
    start = np.asarray(offsets)[rows[:, _SEQUENCE]] + (position - hist_len)
    columns = np.arange(max_seq_len, dtype=np.int64)
    index = start[:, None] + columns[None, :]
    index[columns[None, :] >= hist_len[:, None]] = len(event_items) - 1
    item = rows[:, _ITEM]
    return {
        "user": rows[:, _USER].copy(),
        "item": item.copy(),
        "category": item_category[item].astype(np.int32),
        "hist_item": event_items[index],
        "hist_category": event_categories[index],
        "hist_len": hist_len.astype(np.int32),
        "label": rows[:, _LABEL].astype(np.float32),
    }


def pack_rows(
    rows: np.ndarray,
    real_MxB: np.ndarray,
    offsets: np.ndarray,
    item_category: np.ndarray,
    max_seq_len: int,
    positions: int,
    tables: Tuple[np.ndarray, np.ndarray],
) -> Dict[str, np.ndarray]:
    """The packed batch dict (see ``Dataset.gather_packed``) of sample rows ``[M * B, 5]``; ``real_MxB`` False marks
    empty slots (their rows are ignored). Unused buffer positions hold item 0 and segment ``B``."""
    event_items, event_categories = tables
    count, batch = real_MxB.shape
    real = real_MxB.reshape(-1)
    position = rows[:, _POSITION].astype(np.int64)
    hist_len = np.where(real, np.minimum(position, max_seq_len), 0)
    totals = hist_len.reshape(count, batch).sum(axis=1)
    if count and totals.max() > positions:
        raise ValueError(
            "packed micro-batch of %d history positions exceeds the buffer's %d" % (totals.max(), positions)
        )
    # Per position: its sample (flat index), its offset in the sample's history and its slot in the buffer.
    sample = np.repeat(np.arange(count * batch), hist_len)
    first = np.cumsum(hist_len) - hist_len  # the sample's first position, counted over all micro-batches
    within = np.arange(len(sample)) - first[sample]
    in_buffer = first - np.repeat(np.cumsum(totals) - totals, batch)  # the sample's first slot in its buffer
    slot = (sample // batch) * positions + in_buffer[sample] + within
    event = np.asarray(offsets)[rows[:, _SEQUENCE]].astype(np.int64) + (position - hist_len)
    hist_item = np.zeros(count * positions, np.int32)
    hist_category = np.zeros(count * positions, np.int32)
    segment = np.full(count * positions, batch, np.int32)
    hist_item[slot] = event_items[event[sample] + within]
    hist_category[slot] = event_categories[event[sample] + within]
    segment[slot] = sample % batch
    item = np.where(real, rows[:, _ITEM], 0)
    fields = {
        "user": np.where(real, rows[:, _USER], 0),
        "item": item,
        "category": item_category[item],
        "hist_len": hist_len,
        "label": np.where(real, rows[:, _LABEL], 0),
        "weight": real.astype(np.float32),
    }
    dtypes = {"label": np.float32, "weight": np.float32}
    out = {key: value.astype(dtypes.get(key, np.int32)).reshape(count, batch) for key, value in fields.items()}
    out.update(
        hist_item=hist_item.reshape(count, positions),
        hist_category=hist_category.reshape(count, positions),
        hist_segment=segment.reshape(count, positions),
    )
    return out


def count_training_frequencies(
    train: np.ndarray,
    sequences: np.ndarray,
    offsets: np.ndarray,
    item_category: np.ndarray,
    num_users: int,
    num_categories: int,
    max_seq_len: int,
) -> Dict[str, np.ndarray]:
    """``{"item", "category", "user"}`` -> int64 counts of each id in the training samples' features.

    A sample counts its candidate, the last ``max_seq_len`` items of its history and its user once: the
    ``n_j`` of mini-batch aware regularisation (DIN paper, section 4.3.1).
    """
    train = np.asarray(train, dtype=np.int64).reshape(-1, len(SAMPLE_COLUMNS))
    num_items = len(item_category)
    # How many training windows cover each stored event: +1 at each window's
    # start, -1 past its end, then a running sum (one pass, no per-sample loop).
    position = train[:, _POSITION]
    window_end = offsets[train[:, _SEQUENCE]] + position
    window_start = window_end - np.minimum(position, max_seq_len)
    delta = np.bincount(window_start, minlength=len(sequences) + 1)[: len(sequences) + 1]
    delta = delta - np.bincount(window_end, minlength=len(sequences) + 1)[: len(sequences) + 1]
    coverage = np.cumsum(delta[:-1])
    events = np.asarray(sequences, dtype=np.int64)
    item = np.bincount(events, weights=coverage, minlength=num_items)
    item = np.rint(item).astype(np.int64) + np.bincount(train[:, _ITEM], minlength=num_items)
    event_category = item_category[events] if len(events) else np.zeros(0, dtype=np.int64)
    category = np.rint(np.bincount(event_category, weights=coverage, minlength=num_categories)).astype(np.int64)
    category += np.bincount(item_category[train[:, _ITEM]], minlength=num_categories)
    user = np.bincount(train[:, _USER], minlength=num_users).astype(np.int64)
    return {"item": item[:num_items], "category": category[:num_categories], "user": user[:num_users]}


def find_value_problem(
    meta: dict, sequences: np.ndarray, offsets: np.ndarray, item_category: np.ndarray, splits: Mapping[str, np.ndarray]
) -> Optional[Tuple[str, str]]:
    """``(file, message)`` of the first array content that breaks the format's invariants, or None."""
    users, items, categories = int(meta["users"]), int(meta["items"]), int(meta["categories"])
    if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(sequences):
        return OFFSETS_FILE, f"offsets must start at 0 and end at len(sequences) = {len(sequences)}"
    lengths = np.diff(offsets)
    if len(lengths) and lengths.min() < 0:
        return OFFSETS_FILE, "offsets decrease"
    if len(sequences) and (sequences.min() < 0 or sequences.max() >= items):
        return SEQUENCES_FILE, f"item ids outside [0, {items})"
    if len(item_category) and (item_category.min() < 0 or item_category.max() >= categories):
        return ITEM_CATEGORY_FILE, f"category ids outside [0, {categories})"
    sequence_user = np.full(len(lengths), -1, dtype=np.int64)
    for name, rows in splits.items():
        file = name + ".npy"
        if len(rows) == 0:
            continue
        user, sequence, position, item, label = (np.asarray(rows[:, c]) for c in range(len(SAMPLE_COLUMNS)))
        if user.min() < 0 or user.max() >= users:
            return file, f"user ids outside [0, {users})"
        if sequence.min() < 0 or sequence.max() >= len(lengths):
            return file, f"sequence ids outside [0, {len(lengths)})"
        if position.min() < 1:
            return file, "position < 1 (every sample needs a non-empty history)"
        if (position > lengths[sequence]).any():
            return file, "position beyond the end of its sequence"
        if item.min() < 0 or item.max() >= items:
            return file, f"item ids outside [0, {items})"
        if not np.isin(label, (0, 1)).all():
            return file, "labels other than 0 and 1"
        owner = sequence_user[sequence]
        if ((owner >= 0) & (owner != user)).any():
            return file, "a sequence is shared by two users"
        sequence_user[sequence] = user
        if (sequence_user[sequence] != user).any():
            return file, "a sequence is shared by two users"
    return None


def _fail(path: str, file: str, message: str) -> DatasetError:
    return DatasetError(f"dataset {path}: {file}: {message}")


def _load_array(path: str, file: str, dtype, shape: tuple) -> np.ndarray:
    full = os.path.join(path, file)
    if not os.path.isfile(full):
        raise _fail(path, file, "missing file")
    try:
        array = np.load(full, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise _fail(path, file, f"truncated or corrupt .npy ({error})") from None
    if array.dtype != np.dtype(dtype):
        raise _fail(path, file, f"dtype {array.dtype} but the format requires {np.dtype(dtype)}")
    if tuple(array.shape) != tuple(shape):
        raise _fail(path, file, f"shape {tuple(array.shape)} but meta.json implies {tuple(shape)}")
    return array


def _read_id_map(path: str, file: str) -> List[str]:
    try:
        with open(os.path.join(path, file), encoding="utf-8", newline="\n") as handle:
            text = handle.read()
    except OSError as error:
        raise _fail(path, file, f"cannot read ({error.strerror or error})") from None
    return text.split("\n")[:-1] if text else []


def _count_lines(path: str, file: str) -> int:
    try:
        with open(os.path.join(path, file), "rb") as handle:
            return handle.read().count(b"\n")
    except OSError as error:
        raise _fail(path, file, f"missing or unreadable ({error.strerror or error})") from None


def _read_meta(path: str) -> dict:
    if not os.path.isdir(path):
        raise DatasetError(f"dataset {path}: no such directory")
    full = os.path.join(path, META_FILE)
    if not os.path.isfile(full):
        raise _fail(path, META_FILE, "missing file (not a din_jax dataset directory?)")
    try:
        with open(full, encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, ValueError) as error:
        raise _fail(path, META_FILE, f"unreadable or not JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise _fail(path, META_FILE, f"not a {FORMAT_NAME} file")
    if meta.get("version") != FORMAT_VERSION:
        message = f"format version {meta.get('version')!r}, this code reads version {FORMAT_VERSION}"
        raise _fail(path, META_FILE, message + "; rebuild the dataset with data_prep/build.py")
    for key in ("users", "items", "categories", "sequences", "splits"):
        if key not in meta:
            raise _fail(path, META_FILE, f"missing field {key!r}")
    return meta


def load_dataset(path: str, check_values: bool = True) -> Dataset:
    """Opens a dataset directory, arrays memory-mapped; ``check_values``: scan them for out-of-range ids.

    DatasetError, naming the directory and file, for anything that breaks docs/DATASET_FORMAT.md.
    """
    meta = _read_meta(path)
    offsets = np.array(_load_array(path, OFFSETS_FILE, np.int64, (int(meta["sequences"]) + 1,)))
    total_events = int(offsets[-1]) if len(offsets) else 0
    if "events" in meta and int(meta["events"]) != total_events:
        raise _fail(path, OFFSETS_FILE, "ends at {} but meta.json has {} events".format(total_events, meta["events"]))
    sequences = _load_array(path, SEQUENCES_FILE, np.int32, (total_events,))
    item_category = np.array(_load_array(path, ITEM_CATEGORY_FILE, np.int32, (int(meta["items"]),)))
    split_rows = meta["splits"]
    if not isinstance(split_rows, dict):
        raise _fail(path, META_FILE, "'splits' must map split names to row counts")
    names = [name for name in list(SPLITS) + sorted(set(split_rows) - set(SPLITS)) if name in split_rows]
    splits = {
        name: _load_array(path, name + ".npy", np.int32, (int(split_rows[name]), len(SAMPLE_COLUMNS))) for name in names
    }
    for kind, file in FREQ_FILES.items():
        _load_array(path, file, np.int64, (int(meta[_VOCAB_KEYS[kind]]),))
    for kind, file in ID_MAP_FILES.items():
        lines, expected = _count_lines(path, file), int(meta[_VOCAB_KEYS[kind]])
        if lines != expected:
            raise _fail(path, file, f"{lines} lines but meta.json has {expected} {_VOCAB_KEYS[kind]}")
    if check_values:
        problem = find_value_problem(meta, sequences, offsets, item_category, splits)
        if problem is not None:
            raise _fail(path, *problem)
    return Dataset(path, meta, sequences, offsets, item_category, splits)
