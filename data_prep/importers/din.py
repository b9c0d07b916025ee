"""``--format din``: the DIN authors' processed data, ``dataset.pkl`` or its CSV export.

``dataset.pkl`` (din/build_dataset.py) holds four pickles: train_set, a list
of ``(user, history, target, label)``; test_set, a list of ``(user, history,
(positive, negative))``; cate_list (item -> category); and ``(user_count,
item_count, cate_count)``. The CSV export (a folder with ``train_set*.csv``,
``test_set*.csv``, ``cate_list*.csv``) has the same rows; its vocabulary sizes
are ``len(cate_list)`` items, ``max(cate_list) + 1`` categories and
``max(user id) + 1`` users unless ``--users`` says otherwise.

Ids are kept as they are. The authors' negatives were drawn once; they are
kept and cannot be resampled (``negatives.resampleable = false``).
"""

import csv
import glob
import itertools
import operator
import os
import re
from typing import List

import numpy as np

from data_prep.importers.common import BuildOptions, Imported
from data_prep.progress import progress, stage
from data_prep.report import BuildReport, DataPrepError, undecodable
from data_prep.safe_pickle import load_pickles
from data_prep.sample_rows import (
    TEST,
    TRAIN,
    SampleRows,
    cut_validation,
    drop_empty_histories,
    merge_into_sequences,
    require_training_rows,
)
from data_prep.textio import counting, open_text

_HISTORY = re.compile(r"\s*\[\s*((?:\d+\s*,\s*)*\d+)?\s*\]\s*")
_PAIR = re.compile(r"\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*")


def _one(entry) -> int:
    del entry
    return 1


class _Collector:
    """Accumulates imported rows; a test pair becomes two rows (positive, negative)."""

    def __init__(self):
        self.user: List[int] = []
        self.histories: List[List[int]] = []
        self.item: List[int] = []
        self.label: List[int] = []
        self.split: List[int] = []

    def add(self, user: int, history: List[int], item: int, label: int, split: int) -> None:
        self.user.append(user)
        self.histories.append(history)
        self.item.append(item)
        self.label.append(label)
        self.split.append(split)

    def rows(self) -> SampleRows:
        lengths = np.fromiter((len(h) for h in self.histories), dtype=np.int64, count=len(self.histories))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(self.histories), dtype=np.int64, count=int(offsets[-1]))
        return SampleRows(
            np.array(self.user, dtype=np.int64),
            flat,
            offsets,
            np.array(self.item, dtype=np.int64),
            np.array(self.label, dtype=np.int64),
            np.array(self.split, dtype=np.int8),
        )


def _parse_history(text: str) -> List[int]:
    match = _HISTORY.fullmatch(text)
    if match is None:
        raise ValueError(f"history is not a list of ids: {text[:60]!r}")
    inner = match.group(1)
    return [int(value) for value in inner.split(",")] if inner else []


def _find_one(folder: str, pattern: str) -> str:
    found = sorted(glob.glob(os.path.join(folder, pattern)))
    if len(found) != 1:
        raise DataPrepError(
            "{}: expected exactly one {} file, found {}".format(
                folder, pattern, [os.path.basename(f) for f in found] or "none"
            )
        )
    return found[0]


def _read_cate_list(path: str) -> np.ndarray:
    """One category id per line (blank lines ignored); any other line is fatal: item ids index this list."""
    values = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = int(line)
            except ValueError:
                shown = line.strip()[:40].decode("utf-8", "backslashreplace")
                raise DataPrepError(f"{path}:{number}: expected one category id per line, found {shown!r}") from None
            if not 0 <= value < 2**31:
                raise DataPrepError(f"{path}:{number}: category id {value} is out of range [0, 2^31)")
            values.append(value)
    return np.array(values, dtype=np.int64)


def read_din_csv(folder: str, report: BuildReport, users: int = 0):
    """Reads the CSV export. Returns ``(rows, (users, items, categories), cate_list, files)``."""
    train_path = _find_one(folder, "train_set*.csv")
    test_path = _find_one(folder, "test_set*.csv")
    cate_path = _find_one(folder, "cate_list*.csv")
    cate_list = _read_cate_list(cate_path)
    if len(cate_list) == 0 or cate_list.min() < 0:
        raise DataPrepError(f"{cate_path}: empty or negative category ids")
    num_items = len(cate_list)
    collector = _Collector()
    for path, split, fields in ((train_path, TRAIN, 4), (test_path, TEST, 3)):
        with open_text(path, newline="") as handle:
            size = os.fstat(handle.fileno()).st_size
            with progress(total=size, desc="read " + os.path.basename(path), unit="B", unit_scale=True) as bar:
                reader = csv.reader(counting(handle, bar, size))
                while True:
                    try:
                        record = next(reader)
                    except StopIteration:
                        break
                    except csv.Error as error:  # e.g. a NUL byte or a field past the csv module's size limit
                        report.malformed(path, reader.line_num, f"not a CSV record ({error})")
                        continue
                    line = reader.line_num
                    if not record or (len(record) == 1 and not record[0].strip()):
                        continue
                    problem = next((found for found in map(undecodable, record) if found is not None), None)
                    if problem is not None:
                        report.malformed(path, line, problem)
                        continue
                    try:
                        if len(record) != fields:
                            raise ValueError(f"expected {fields} fields, found {len(record)}")
                        user = int(record[0])
                        history = _parse_history(record[1])
                        if split == TRAIN:
                            targets = [(int(record[2]), int(record[3]))]
                            if targets[0][1] not in (0, 1):
                                raise ValueError("label must be 0 or 1")
                        else:
                            pair = _PAIR.fullmatch(record[2])
                            if pair is None:
                                raise ValueError(f"expected (positive, negative), got {record[2][:40]!r}")
                            targets = [(int(pair.group(1)), 1), (int(pair.group(2)), 0)]
                        ids = history + [item for item, _ in targets]
                        if user < 0 or (users and user >= users):
                            raise ValueError("user id {} outside [0, {})".format(user, users or "inf"))
                        if min(ids) < 0 or max(ids) >= num_items:
                            raise ValueError(f"item id outside [0, {num_items}) of {os.path.basename(cate_path)}")
                    except ValueError as error:
                        report.malformed(path, line, str(error))
                        continue
                    for item, label in targets:
                        collector.add(user, history, item, label, split)
    rows = collector.rows()
    num_users = users or (int(rows.user.max()) + 1 if len(rows.user) else 0)
    return rows, (num_users, num_items, int(cate_list.max()) + 1), cate_list, [train_path, test_path, cate_path]


def _as_int(value) -> int:
    return operator.index(value)


def read_din_pickle(path: str, report: BuildReport):
    """Reads ``dataset.pkl`` through the restricted unpickler. Same return as ``read_din_csv``."""
    name = os.path.basename(path)
    with stage("read " + name, "unpickle"):
        train_set, test_set, cate_list, counts = load_pickles(path, expected=4)
    for position, (what, value) in enumerate((("train_set", train_set), ("test_set", test_set)), 1):
        if not isinstance(value, (list, tuple)):
            raise DataPrepError(
                f"{path}: pickle {position} must be {what}, a list of samples; found "
                f"{type(value).__name__} (is this the authors' dataset.pkl?)"
            )
    try:
        num_users, num_items, num_categories = (_as_int(value) for value in counts)
        cate_list = np.asarray(cate_list, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise DataPrepError(
            f"{path}: the 3rd/4th pickles must be cate_list and (user_count, item_count, cate_count) ({error})"
        ) from None
    if len(cate_list) != num_items:
        raise DataPrepError(f"{path}: cate_list has {len(cate_list)} entries but item_count is {num_items}")
    collector = _Collector()
    with progress(
        total=len(train_set) + len(test_set), desc="samples of " + name, unit="sample", unit_scale=True
    ) as bar:
        for what, entries, split in (("train_set", train_set, TRAIN), ("test_set", test_set, TEST)):
            for index, entry in enumerate(counting(entries, bar, size=_one)):
                try:
                    if split == TRAIN:
                        user, history, item, label = entry
                        targets = [(_as_int(item), _as_int(label))]
                    else:
                        user, history, (positive, negative) = entry
                        targets = [(_as_int(positive), 1), (_as_int(negative), 0)]
                    user = _as_int(user)
                    history = [_as_int(value) for value in history]
                except (TypeError, ValueError) as error:
                    report.malformed(path, f"{what}[{index}]", f"bad entry ({error})")
                    continue
                for item, label in targets:
                    collector.add(user, history, item, label, split)
    rows = collector.rows()
    _check_ranges(path, rows, num_users, num_items)
    if len(cate_list) and (cate_list.min() < 0 or cate_list.max() >= num_categories):
        raise DataPrepError(f"{path}: cate_list has ids outside [0, {num_categories})")
    return rows, (num_users, num_items, num_categories), cate_list, [path]


def _check_ranges(path: str, rows: SampleRows, num_users: int, num_items: int) -> None:
    for what, values, limit in (
        ("user", rows.user, num_users),
        ("item", rows.item, num_items),
        ("history item", rows.hist_items, num_items),
    ):
        if len(values) and (values.min() < 0 or values.max() >= limit):
            raise DataPrepError(f"{path}: {what} ids outside [0, {limit})")
    if len(rows.label) and not np.isin(rows.label, (0, 1)).all():
        raise DataPrepError(f"{path}: labels other than 0 and 1")


def _check_dense(path: str, kind: str, size: int, distinct: int, given: int) -> None:
    """The authors' ids are dense (0..N-1): refuses a table sized by one stray huge id (it would not fit memory)."""
    if not given and size > max(16 * distinct, 1 << 20):
        raise DataPrepError(
            f"{path}: the largest {kind} id is {size - 1:,} but only {distinct:,} distinct {kind} ids appear: the din "
            f"format's ids are dense (0..N-1), so this is a stray id; fix the file"
            + (" or pass --users N to size the table on purpose" if kind == "user" else "")
        )


def import_din(options: BuildOptions, report: BuildReport) -> Imported:
    """dataset.pkl or the CSV export -> dataset with the authors' samples, histories stored once."""
    path = options.input
    if not path or not os.path.exists(path):
        raise DataPrepError(f"{path}: no such file or folder (--input: dataset.pkl or the CSV folder)")
    with report.timed("read"):
        if os.path.isdir(path):
            rows, vocab, cate_list, sources = read_din_csv(path, report, options.users)
        else:
            rows, vocab, cate_list, sources = read_din_pickle(path, report)
    num_users, num_items, num_categories = vocab
    _check_dense(path, "user", num_users, np.unique(rows.user).size, options.users)
    _check_dense(path, "category", num_categories, np.unique(cate_list).size, 0)
    if options.users:
        if len(rows.user) and rows.user.max() >= options.users:
            raise DataPrepError(
                f"--users {options.users} is smaller than the largest user id + 1 ({int(rows.user.max()) + 1})"
            )
        num_users = options.users
    with report.timed("merge histories"):
        rows = drop_empty_histories(rows, report)
        rows = cut_validation(rows, options.din_validation, options.validation_users, options.seed, report)
        require_training_rows(rows, path)
        sequences, offsets, splits = merge_into_sequences(rows)
    meta = {
        "protocol": {
            "name": "din_authors_data",
            "validation": options.din_validation,
            "validation_users": options.validation_users if options.din_validation == "users" else None,
        },
        "negatives": {
            "resampleable": False,
            "seed": None,
            "sampler": "the authors' negatives, drawn once by din/build_dataset.py",
        },
    }
    id_maps = {
        "user": [str(i) for i in range(num_users)],
        "item": [str(i) for i in range(num_items)],
        "category": [str(i) for i in range(num_categories)],
    }
    return Imported(sequences, offsets, cate_list.astype(np.int32), splits, id_maps, meta, sources)
