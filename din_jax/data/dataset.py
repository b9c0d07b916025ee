"""The din_jax dataset directory: writing it atomically, loading it memory-mapped, batching it.

The format is specified in docs/DATASET_FORMAT.md. In short: every behaviour
sequence is stored once (``sequences.npy`` + ``sequence_offsets.npy``) and a
sample is a row ``(user, sequence, position, item, label)`` whose history is
the prefix of length ``position`` of its sequence. Batches are gathered with
numpy fancy indexing, never a Python loop per sample.
"""

import datetime
import json
import os
import shutil
import tempfile
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from din_jax.data.negatives import make_user_item_keys, sample_negatives
from din_jax.fileio import flush_to_disk, fsync_path, save_array

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


class DatasetError(Exception):
    """A dataset directory that cannot be written or read; the message names the directory and file."""


def _split_file(split: str) -> str:
    return split + ".npy"


# ----------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------


class Dataset:
    """A loaded dataset directory. Large arrays stay memory-mapped.

    Attributes:
      path: the directory.
      meta: the parsed meta.json.
      num_users, num_items, num_categories: vocabulary sizes (ids are ``0..n-1``).
      item_category: int32 ``[num_items]``, the category of each item.
    """

    def __init__(self, path: str, meta: dict, sequences: np.ndarray, offsets: np.ndarray,
                 item_category: np.ndarray, splits: Dict[str, np.ndarray]):
        self.path = path
        self.meta = meta
        self.num_users = int(meta["users"])
        self.num_items = int(meta["items"])
        self.num_categories = int(meta["categories"])
        self.sequences = sequences
        self.offsets = offsets
        self.item_category = item_category
        self._splits = splits
        self._user_item_keys: Optional[np.ndarray] = None
        self._gather_tables: Optional[Tuple[np.ndarray, np.ndarray]] = None

    def __repr__(self) -> str:
        rows = ", ".join(f"{name}={len(rows)}" for name, rows in self._splits.items())
        return f"Dataset({self.path!r}, users={self.num_users}, items={self.num_items}, categories={self.num_categories}, {rows})"

    def split_names(self) -> List[str]:
        """Returns the names of the splits that have at least one sample, train first."""
        return [name for name, rows in self._splits.items() if len(rows)]

    def samples(self, split: str) -> np.ndarray:
        """Returns the int32 ``[N, 5]`` sample rows of a split (memory-mapped, read-only)."""
        try:
            return self._splits[split]
        except KeyError:
            raise DatasetError(f"{self.path}: unknown split {split!r}; choose from {sorted(self._splits)}") from None

    def num_samples(self, split: str) -> int:
        """Returns the number of sample rows of a split (0 for an empty one)."""
        return int(len(self.samples(split)))

    def history_lengths(self, split: str, max_seq_len: int) -> np.ndarray:
        """Returns int32 ``[N]``: the history length each sample of the split gets in a batch."""
        positions = self.samples(split)[:, _POSITION]
        return np.minimum(positions, max_seq_len).astype(np.int32)

    def gather(self, split: str, indices: np.ndarray, max_seq_len: int,
               samples: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
        """Builds the batch dict (docs/DATASET_FORMAT.md) for some rows of a split.

        Args:
          split: the split whose rows ``indices`` address (ignored when
            ``samples`` is given, except in error messages).
          indices: int array ``[B]`` of row numbers.
          max_seq_len: ``T``; the history is the last ``T`` items of the
            sample's prefix, left-aligned and zero padded.
          samples: optional ``[N, 5]`` rows to use instead of the split's
            stored ones (e.g. the output of ``resample_negatives``).

        Returns:
          ``user, item, category, hist_item, hist_category, hist_len, label``.
        """
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be >= 1, got {max_seq_len}")
        source = self.samples(split) if samples is None else samples
        rows = np.asarray(source[np.asarray(indices, dtype=np.int64)], dtype=np.int32)
        if self._gather_tables is None:
            # Built on first use (a benign race if two threads get here together).
            self._gather_tables = make_gather_tables(self.sequences, self.item_category)
        return gather_rows(rows, self.sequences, self.offsets, self.item_category, max_seq_len, self._gather_tables)

    def resample_negatives(self, rng: np.random.Generator) -> np.ndarray:
        """Returns a copy of the train rows whose label-0 rows get fresh uniform negatives.

        A negative is never one of the items in any sequence of the row's user
        (for protocol-built data: anything the user ever reviewed, including
        the validation and test targets).

        Raises:
          DatasetError: if the dataset's negatives cannot be resampled (meta
            ``negatives.resampleable`` is false, e.g. the authors' fixed data).
        """
        negatives = self.meta.get("negatives") or {}
        if not negatives.get("resampleable", False):
            raise DatasetError("{}: {}: negatives of this dataset ({} source) are fixed and cannot be "
                               "resampled".format(self.path, META_FILE, self.meta.get("source_format")))
        train = np.array(self.samples("train"), dtype=np.int32, copy=True)
        negative_rows = np.flatnonzero(train[:, _LABEL] == 0)
        try:
            train[negative_rows, _ITEM] = sample_negatives(
                rng, train[negative_rows, _USER], self.num_items, self.user_item_keys())
        except ValueError as error:
            raise DatasetError(f"{self.path}: {error}") from None
        return train

    def user_item_keys(self) -> np.ndarray:
        """Returns the sorted ``user * num_items + item`` keys of every (user, item in their sequences) pair."""
        if self._user_item_keys is None:
            sequence_user = np.full(len(self.offsets) - 1, -1, dtype=np.int64)
            for rows in self._splits.values():
                sequence_user[rows[:, _SEQUENCE]] = rows[:, _USER]
            lengths = np.diff(self.offsets)
            event_user = np.repeat(sequence_user, lengths)
            known = event_user >= 0
            self._user_item_keys = make_user_item_keys(
                event_user[known], np.asarray(self.sequences)[known], self.num_items)
        return self._user_item_keys

    def _load_frequencies(self, kind: str) -> np.ndarray:
        vocab = getattr(self, "num_" + _VOCAB_KEYS[kind])
        return _load_array(self.path, FREQ_FILES[kind], np.int64, (vocab,))

    def item_frequencies(self) -> np.ndarray:
        """Returns int64 ``[num_items]``: each item's occurrences in the training samples (MBA's n_j)."""
        return self._load_frequencies("item")

    def category_frequencies(self) -> np.ndarray:
        """Returns int64 ``[num_categories]``: each category's occurrences in the training samples."""
        return self._load_frequencies("category")

    def user_frequencies(self) -> np.ndarray:
        """Returns int64 ``[num_users]``: training samples per user."""
        return self._load_frequencies("user")

    def id_map(self, kind: str) -> List[str]:
        """Returns the raw keys of ``user``, ``item`` or ``category`` ids (line i = id i)."""
        if kind not in ID_MAP_FILES:
            raise DatasetError(f"{self.path}: unknown id map {kind!r}; choose from {sorted(ID_MAP_FILES)}")
        return _read_id_map(self.path, ID_MAP_FILES[kind])


def make_gather_tables(sequences: np.ndarray, item_category: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Returns in-memory int32 copies of the events' items and categories, each with a trailing 0.

    Padded history slots index that trailing sentinel, so one fancy-index
    gather per array fills a batch, padding included (no masking passes).
    """
    items = np.zeros(len(sequences) + 1, dtype=np.int32)
    items[:-1] = sequences
    categories = np.zeros(len(sequences) + 1, dtype=np.int32)
    categories[:-1] = item_category[items[:-1]]
    return items, categories


def gather_rows(rows: np.ndarray, sequences: np.ndarray, offsets: np.ndarray, item_category: np.ndarray,
                max_seq_len: int, tables: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """Builds the batch dict for sample rows ``[B, 5]`` (vectorised; see ``Dataset.gather``).

    ``tables`` is ``make_gather_tables(sequences, item_category)``, computed
    here when not given (a Dataset caches it).
    """
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


def _fail(path: str, file: str, message: str) -> DatasetError:
    return DatasetError(f"dataset {path}: {file}: {message}")


def _load_array(path: str, file: str, dtype, shape: tuple, mmap: bool = True) -> np.ndarray:
    full = os.path.join(path, file)
    if not os.path.isfile(full):
        raise _fail(path, file, "missing file")
    try:
        array = np.load(full, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise _fail(path, file, f"truncated or corrupt .npy ({error})") from None
    if array.dtype != np.dtype(dtype):
        raise _fail(path, file, f"dtype {array.dtype} but the format requires {np.dtype(dtype)}")
    if tuple(array.shape) != tuple(shape):
        raise _fail(path, file, f"shape {tuple(array.shape)} but meta.json implies {tuple(shape)}")
    return array


def _read_id_map(path: str, file: str) -> List[str]:
    full = os.path.join(path, file)
    try:
        with open(full, encoding="utf-8", newline="\n") as handle:
            text = handle.read()
    except OSError as error:
        raise _fail(path, file, f"cannot read ({error.strerror or error})") from None
    return text.split("\n")[:-1] if text else []


def _count_lines(path: str, file: str) -> int:
    full = os.path.join(path, file)
    try:
        with open(full, "rb") as handle:
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
        raise _fail(path, META_FILE, "format version {!r}, this code reads version {}; rebuild the dataset "
                    "with data_prep/build.py".format(meta.get("version"), FORMAT_VERSION))
    for key in ("users", "items", "categories", "sequences", "splits"):
        if key not in meta:
            raise _fail(path, META_FILE, f"missing field {key!r}")
    return meta


def _check_values(path: str, meta: dict, sequences: np.ndarray, offsets: np.ndarray, item_category: np.ndarray,
                  splits: Mapping[str, np.ndarray]) -> None:
    """Raises DatasetError when array contents break the format's invariants."""
    problem = _find_value_problem(meta, sequences, offsets, item_category, splits)
    if problem is not None:
        file, message = problem
        raise _fail(path, file, message)


def _find_value_problem(meta: dict, sequences: np.ndarray, offsets: np.ndarray, item_category: np.ndarray,
                        splits: Mapping[str, np.ndarray]):
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
        file = _split_file(name)
        if len(rows) == 0:
            continue
        columns = [np.asarray(rows[:, c]) for c in range(len(SAMPLE_COLUMNS))]
        user, sequence, position, item, label = columns
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


def load_dataset(path: str, check_values: bool = True) -> Dataset:
    """Opens a dataset directory written by ``write_dataset`` (arrays memory-mapped).

    Args:
      path: the directory.
      check_values: also scan the arrays for out-of-range ids and positions
        (one vectorised pass; cheap next to training).

    Raises:
      DatasetError: naming the directory and file, for another format version,
        a missing file, a truncated or corrupt ``.npy``, or arrays that do not
        match meta.json.
    """
    meta = _read_meta(path)
    items = int(meta["items"])
    num_sequences = int(meta["sequences"])
    offsets = np.array(_load_array(path, OFFSETS_FILE, np.int64, (num_sequences + 1,)))
    total_events = int(offsets[-1]) if len(offsets) else 0
    if "events" in meta and int(meta["events"]) != total_events:
        raise _fail(path, OFFSETS_FILE, "ends at {} but meta.json has {} events".format(total_events, meta["events"]))
    sequences = _load_array(path, SEQUENCES_FILE, np.int32, (total_events,))
    item_category = np.array(_load_array(path, ITEM_CATEGORY_FILE, np.int32, (items,)))
    splits = {}
    split_rows = meta["splits"]
    if not isinstance(split_rows, dict):
        raise _fail(path, META_FILE, "'splits' must map split names to row counts")
    for name in list(SPLITS) + sorted(set(split_rows) - set(SPLITS)):
        if name not in split_rows:
            continue
        splits[name] = _load_array(path, _split_file(name), np.int32, (int(split_rows[name]), len(SAMPLE_COLUMNS)))
    for kind, file in FREQ_FILES.items():
        _load_array(path, file, np.int64, (int(meta[_VOCAB_KEYS[kind]]),))
    for kind, file in ID_MAP_FILES.items():
        lines = _count_lines(path, file)
        expected = int(meta[_VOCAB_KEYS[kind]])
        if lines != expected:
            raise _fail(path, file, f"{lines} lines but meta.json has {expected} {_VOCAB_KEYS[kind]}")
    if check_values:
        _check_values(path, meta, sequences, offsets, item_category, splits)
    return Dataset(path, meta, sequences, offsets, item_category, splits)


# ----------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------


def count_training_frequencies(train: np.ndarray, sequences: np.ndarray, offsets: np.ndarray,
                               item_category: np.ndarray, num_users: int, num_categories: int,
                               max_seq_len: int) -> Dict[str, np.ndarray]:
    """Counts each id's occurrences in the training samples' features.

    A sample contributes its candidate item (and category), the last
    ``max_seq_len`` items of its history (the ones a batch feeds the model)
    and its user once. These are the ``n_j`` of mini-batch aware
    regularisation (DIN paper, section 4.3.1).

    Returns:
      ``{"item", "category", "user"}`` -> int64 arrays of vocabulary length.
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


def _is_dataset_dir(path: str) -> bool:
    try:
        with open(os.path.join(path, META_FILE), encoding="utf-8") as handle:
            return json.load(handle).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def check_output_path(path: str, overwrite: bool) -> None:
    """Raises DatasetError unless ``path`` may receive a new dataset.

    A new dataset may go where nothing exists, or, with ``overwrite``, replace
    an earlier din_jax dataset directory or an empty directory (never any other
    directory: a mistyped ``--output`` must not delete unrelated files).
    """
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise DatasetError(f"{path}: output already exists; pass --overwrite to replace it")
    if not os.path.isdir(path) or os.path.islink(path):
        raise DatasetError(f"{path}: exists and is not a directory; refusing to replace it")
    if os.listdir(path) and not _is_dataset_dir(path):
        raise DatasetError(f"{path}: exists and is not a din_jax dataset directory; refusing to replace it")


def _escape_key(key) -> str:
    # One key per line: a line break inside a raw key would shift every later id.
    text = str(key)
    if "\n" in text or "\r" in text:
        text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text


def _write_id_map(path: str, keys: Sequence) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("".join(_escape_key(key) + "\n" for key in keys))
        flush_to_disk(handle)


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)!r}")


def write_dataset(path: str, *, sequences, offsets, item_category, splits: Dict[str, np.ndarray], meta: dict,
                  id_maps: Dict[str, Sequence[str]], overwrite: bool = False,
                  before_meta: Optional[Callable[[dict], None]] = None) -> None:
    """Validates and writes a dataset directory atomically.

    The files go to a temporary directory next to ``path`` that is renamed into
    place when complete; an existing dataset is only replaced with
    ``overwrite`` (renamed aside, the new one renamed in, the old deleted), so a
    failure at any point leaves either the old dataset or nothing.

    Args:
      path: the output directory.
      sequences: int ``[events]`` item ids of all sequences, concatenated.
      offsets: int ``[sequences + 1]`` start of each sequence, then the end.
      item_category: int ``[items]`` category of each item.
      splits: split name -> int ``[rows, 5]`` samples; missing standard splits
        are written empty.
      meta: descriptive fields (name, source_format, negatives, sources,
        build, dropped, max_seq_len, ...); counts and format fields are
        filled in here.
      id_maps: ``user``, ``item``, ``category`` -> raw keys, index = id; their
        lengths are the vocabulary sizes.
      overwrite: replace an existing dataset directory.
      before_meta: called with the complete meta dict once every array is
        written, just before meta.json; it may change the dict (e.g. record how
        long the write took).

    Raises:
      DatasetError: on invalid arrays or an output that may not be replaced.
    """
    check_output_path(path, overwrite)
    for kind in ID_MAP_FILES:
        if kind not in id_maps:
            raise DatasetError(f"{path}: id_maps lacks {kind!r}")
    sequences = np.ascontiguousarray(sequences, dtype=np.int32).reshape(-1)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1)
    item_category = np.ascontiguousarray(item_category, dtype=np.int32).reshape(-1)
    num_users, num_items, num_categories = (len(id_maps[k]) for k in ("user", "item", "category"))
    if len(item_category) != num_items:
        raise DatasetError(f"{path}: item_category has {len(item_category)} entries but the item id map {num_items}")
    all_splits = {name: np.zeros((0, len(SAMPLE_COLUMNS)), dtype=np.int32) for name in SPLITS}
    for name, rows in splits.items():
        if not name or os.sep in name or name.startswith("."):
            raise DatasetError(f"{path}: invalid split name {name!r}")
        rows = np.ascontiguousarray(rows, dtype=np.int32)
        if rows.ndim != 2 or rows.shape[1] != len(SAMPLE_COLUMNS):
            raise DatasetError(f"{path}: split {name!r} must have shape [rows, {len(SAMPLE_COLUMNS)}], got {rows.shape}")
        all_splits[name] = rows
    full_meta = dict(meta)
    full_meta.update({
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "users": num_users,
        "items": num_items,
        "categories": num_categories,
        "sequences": int(len(offsets) - 1),
        "events": int(len(sequences)),
        "splits": {name: int(len(rows)) for name, rows in all_splits.items()},
        "sample_columns": list(SAMPLE_COLUMNS),
    })
    full_meta.setdefault("max_seq_len", DEFAULT_MAX_SEQ_LEN)
    full_meta.setdefault("created", datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat())
    max_seq_len = full_meta["max_seq_len"]
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, (int, np.integer)) or max_seq_len < 1:
        raise DatasetError(f"{path}: invalid {META_FILE}: max_seq_len must be an integer >= 1, got {max_seq_len!r}")
    problem = _find_value_problem(full_meta, sequences, offsets, item_category, all_splits)
    if problem is not None:
        raise DatasetError(f"{path}: invalid {problem[0]}: {problem[1]}")
    frequencies = count_training_frequencies(all_splits["train"], sequences, offsets, item_category, num_users,
                                             num_categories, int(full_meta["max_seq_len"]))

    absolute = os.path.abspath(path)
    parent = os.path.dirname(absolute)
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(prefix="." + os.path.basename(absolute) + ".tmp-", dir=parent)
    try:
        # mkdtemp makes the folder private (0700); a dataset gets the mode any new folder would.
        os.chmod(temporary, 0o777 & ~_current_umask())
        save_array(os.path.join(temporary, SEQUENCES_FILE), sequences)
        save_array(os.path.join(temporary, OFFSETS_FILE), offsets)
        save_array(os.path.join(temporary, ITEM_CATEGORY_FILE), item_category)
        for name, rows in all_splits.items():
            save_array(os.path.join(temporary, _split_file(name)), rows)
        for kind, counts in frequencies.items():
            save_array(os.path.join(temporary, FREQ_FILES[kind]), counts)
        for kind, file in ID_MAP_FILES.items():
            _write_id_map(os.path.join(temporary, file), id_maps[kind])
        if before_meta is not None:
            before_meta(full_meta)
        # meta.json last: a directory with a meta.json is complete.
        with open(os.path.join(temporary, META_FILE), "w", encoding="utf-8") as handle:
            json.dump(full_meta, handle, indent=2, sort_keys=False, default=_json_default)
            handle.write("\n")
            flush_to_disk(handle)
        # The rename must not reach the disk before the files it publishes.
        fsync_path(temporary)
        _move_into_place(temporary, absolute, overwrite)
        fsync_path(parent)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows (os.umask is process-wide)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _move_into_place(temporary: str, path: str, overwrite: bool) -> None:
    if not os.path.lexists(path):
        os.rename(temporary, path)
        return
    check_output_path(path, overwrite)
    aside = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".old-", dir=os.path.dirname(path))
    os.rmdir(aside)
    os.rename(path, aside)
    try:
        os.rename(temporary, path)
    except BaseException:
        os.rename(aside, path)
        raise
    shutil.rmtree(aside, ignore_errors=True)
