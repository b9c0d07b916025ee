"""``--format dien``: the DIEN / Graphcore Amazon files (``--input`` is their folder).

``local_train_splitByUser`` and ``local_test_splitByUser`` hold tab-separated
``label, user, item, category, item_history, category_history`` with the
histories joined by the byte 0x02; ``uid_voc.pkl``, ``mid_voc.pkl`` and
``cat_voc.pkl`` map raw keys to ids (loaded with the restricted unpickler).
An optional ``item-info`` (``item<TAB>category``, or ``--meta``) gives item
categories; otherwise they are read off the samples.

Keys missing from a vocabulary: DIEN's reader maps them to id 0 (its
``default_mid`` / ``default_cat``); here they map to that default entry when
the vocabulary has one (counted), else the row is dropped (counted); rows of
unknown users are dropped. Negatives come from the files and may be
resampled.
"""

import os
from typing import Dict, List, Optional

import numpy as np
import pandas as pd

from data_prep.importers.common import BuildOptions, Imported
from data_prep.remap import UNKNOWN_CATEGORY
from data_prep.report import BuildReport, DataPrepError
from data_prep.safe_pickle import load_pickle
from data_prep.sample_rows import (
    TEST,
    TRAIN,
    SampleRows,
    cut_validation,
    drop_empty_histories,
    merge_into_sequences,
    require_training_rows,
    select_rows,
)
from data_prep.textio import text_lines

TRAIN_FILE = "local_train_splitByUser"
TEST_FILE = "local_test_splitByUser"
VOCAB_FILES = {"user": "uid_voc.pkl", "item": "mid_voc.pkl", "category": "cat_voc.pkl"}
DEFAULT_KEYS = {"item": "default_mid", "category": "default_cat"}
HISTORY_SEPARATOR = "\x02"


def read_vocabulary(path: str) -> List[str]:
    """Loads a ``str -> int`` vocabulary pickle and returns its keys by id (ids must be 0..n-1)."""
    vocab = load_pickle(path)
    if not isinstance(vocab, dict):
        raise DataPrepError(f"{path}: expected a pickled dict of key -> id")
    keys: List[Optional[str]] = [None] * len(vocab)
    for key, value in vocab.items():
        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        if not isinstance(value, (int, np.integer)) or not 0 <= int(value) < len(vocab) or keys[int(value)] is not None:
            raise DataPrepError(f"{path}: ids must be 0..{len(vocab) - 1} with no repeats (key {key!r} has {value!r})")
        keys[int(value)] = str(key)
    return keys  # type: ignore[return-value]


class _Lookup:
    def __init__(self, keys: List[str], default_key: Optional[str]):
        self.index = pd.Index(keys)
        self.default = int(self.index.get_loc(default_key)) if default_key and default_key in self.index else -1

    def ids(self, keys: List[str]) -> np.ndarray:
        return self.index.get_indexer(keys).astype(np.int64) if keys else np.zeros(0, dtype=np.int64)


def _tab_fields(path: str, report: BuildReport, count: int, expected: str):
    """``(line number, fields)`` of each non-blank line with ``count`` tab-separated fields; others are malformed."""
    # newline="\n": the 0x02-joined histories are one line whatever other control bytes they hold.
    for number, line in text_lines(path, report, "read " + os.path.basename(path), newline="\n"):
        line = line.rstrip("\r\n")
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != count:
            report.malformed(path, number, f"expected {expected}, found {len(fields)} fields")
            continue
        yield number, fields


def _read_file(path: str, split: int, report: BuildReport):
    labels, users, items, categories, hist_items, hist_categories, lengths, splits = [], [], [], [], [], [], [], []
    for number, fields in _tab_fields(path, report, 6, "6 tab-separated fields"):
        label, user, item, category, history, history_categories = fields
        if label not in ("0", "1", "0.0", "1.0"):
            report.malformed(path, number, "label must be 0 or 1")
            continue
        history_list = history.split(HISTORY_SEPARATOR) if history else []
        category_list = history_categories.split(HISTORY_SEPARATOR) if history_categories else []
        if len(history_list) != len(category_list):
            report.malformed(path, number, "item and category histories differ in length")
            continue
        labels.append(int(float(label)))
        users.append(user)
        items.append(item)
        categories.append(category)
        hist_items.append(history)
        hist_categories.append(history_categories)
        lengths.append(len(history_list))
        splits.append(split)
    return labels, users, items, categories, hist_items, hist_categories, lengths, splits


def _read_item_info(path: str, report: BuildReport):
    """Reads ``item<TAB>category`` lines; other lines are malformed (counted, or fatal with --strict)."""
    items: List[str] = []
    categories: List[str] = []
    for _, fields in _tab_fields(path, report, 2, "item<TAB>category"):
        items.append(fields[0])
        categories.append(fields[1])
    return items, categories


def _split_joined(fields: List[str]) -> List[str]:
    joined = HISTORY_SEPARATOR.join(field for field in fields if field)
    return joined.split(HISTORY_SEPARATOR) if joined else []


def import_dien(options: BuildOptions, report: BuildReport) -> Imported:
    """DIEN folder -> dataset with the files' samples, histories stored once."""
    folder = options.input
    if not folder or not os.path.isdir(folder):
        raise DataPrepError(f"{folder}: not a folder (--input: the folder of the DIEN files)")
    paths = {name: os.path.join(folder, name) for name in [TRAIN_FILE, TEST_FILE] + list(VOCAB_FILES.values())}
    for path in paths.values():
        if not os.path.isfile(path):
            raise DataPrepError(
                "{}: missing ({} needs {}, {} and the three *_voc.pkl)".format(
                    path, "--format dien", TRAIN_FILE, TEST_FILE
                )
            )
    sources = list(paths.values())
    with report.timed("read"):
        vocab = {kind: read_vocabulary(paths[file]) for kind, file in VOCAB_FILES.items()}
        columns = [[] for _ in range(8)]
        for path, split in ((paths[TRAIN_FILE], TRAIN), (paths[TEST_FILE], TEST)):
            for column, values in zip(columns, _read_file(path, split, report)):
                column.extend(values)
        labels, users, items, categories, hist_items, hist_categories, lengths, splits = columns
        lookups = {kind: _Lookup(keys, DEFAULT_KEYS.get(kind)) for kind, keys in vocab.items()}
        user_ids = lookups["user"].ids(users)
        item_ids = lookups["item"].ids(items)
        category_ids = lookups["category"].ids(categories)
        flat_items = lookups["item"].ids(_split_joined(hist_items))
        flat_categories = lookups["category"].ids(_split_joined(hist_categories))
    lengths = np.array(lengths, dtype=np.int64)
    owner = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)

    # Unknown keys: the vocabulary's default entry if it has one, else drop the row.
    unknown_row = user_ids < 0
    report.count("unknown_user_rows", int(unknown_row.sum()))
    mapped = 0
    for kind, ids, row_of in (
        ("item", item_ids, None),
        ("category", category_ids, None),
        ("item", flat_items, owner),
        ("category", flat_categories, owner),
    ):
        missing = ids < 0
        default = lookups[kind].default
        if default >= 0:
            ids[missing] = default
            mapped += int(missing.sum())
        else:
            rows = np.flatnonzero(missing) if row_of is None else np.unique(row_of[missing])
            unknown_row[rows] = True
    report.count("unknown_keys_mapped_to_default", mapped)
    report.count("unknown_key_rows", int(unknown_row.sum()) - int((user_ids < 0).sum()))

    item_category = _item_categories(
        folder, options.meta, vocab, lookups, item_ids, category_ids, flat_items, flat_categories, report, sources
    )
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    rows = SampleRows(
        user_ids, flat_items, offsets, item_ids, np.array(labels, dtype=np.int64), np.array(splits, dtype=np.int8)
    )
    keep = ~unknown_row
    if not keep.all():
        rows = select_rows(rows, keep)
    with report.timed("merge histories"):
        rows = drop_empty_histories(rows, report)
        rows = cut_validation(rows, options.din_validation, options.validation_users, options.seed, report)
        require_training_rows(rows, options.input)
        sequences, seq_offsets, split_arrays = merge_into_sequences(rows)
    category_names = list(vocab["category"])
    if item_category.max(initial=0) >= len(category_names):
        category_names.append(UNKNOWN_CATEGORY)
    meta = {
        "protocol": {
            "name": "dien_files",
            "validation": options.din_validation,
            "validation_users": options.validation_users if options.din_validation == "users" else None,
        },
        "negatives": {
            "resampleable": True,
            "seed": None,
            "sampler": "the files' negatives; resampling draws uniform items outside the user's sequences",
        },
    }
    return Imported(
        sequences,
        seq_offsets,
        item_category,
        split_arrays,
        {"user": vocab["user"], "item": vocab["item"], "category": category_names},
        meta,
        sources,
    )


def _item_categories(
    folder: str,
    meta_path: Optional[str],
    vocab: Dict[str, List[str]],
    lookups,
    item_ids,
    category_ids,
    flat_items,
    flat_categories,
    report: BuildReport,
    sources: List[str],
) -> np.ndarray:
    """Category of every item: item-info first, then the first category seen with it in the samples."""
    num_items, num_categories = len(vocab["item"]), len(vocab["category"])
    item_category = np.full(num_items, -1, dtype=np.int64)
    info_path = meta_path or os.path.join(folder, "item-info")
    if os.path.isfile(info_path):
        info_items, info_categories = _read_item_info(info_path, report)
        ids = lookups["item"].ids(info_items)
        cats = lookups["category"].ids(info_categories)
        known = (ids >= 0) & (cats >= 0)
        first = np.unique(ids[known], return_index=True)[1]
        item_category[ids[known][first]] = cats[known][first]
        sources.append(info_path)
    elif meta_path:
        raise DataPrepError(f"{meta_path}: no such file (--meta: the DIEN item-info file)")
    seen_items = np.concatenate([item_ids, flat_items])
    seen_categories = np.concatenate([category_ids, flat_categories])
    valid = (seen_items >= 0) & (seen_categories >= 0)
    pairs = np.unique(np.stack([seen_items[valid], seen_categories[valid]], axis=1), axis=0)
    report.count(
        "items_with_conflicting_categories",
        int((np.bincount(pairs[:, 0], minlength=num_items) > 1).sum()) if len(pairs) else 0,
    )
    unset = item_category < 0
    first = np.unique(seen_items[valid], return_index=True)[1]
    observed_items = seen_items[valid][first]
    observed_categories = seen_categories[valid][first]
    fill = unset[observed_items]
    item_category[observed_items[fill]] = observed_categories[fill]
    missing = item_category < 0
    report.count("unknown_category_items", int(missing.sum()))
    default = lookups["category"].default
    item_category[missing] = default if default >= 0 else num_categories
    return item_category.astype(np.int32)
