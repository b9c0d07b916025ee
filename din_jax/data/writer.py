"""Writing a din_jax dataset directory (docs/DATASET_FORMAT.md) atomically: all of it or nothing.

The files go to a temporary directory next to the output, fsync'ed, then renamed into place; an existing
dataset is only replaced with ``overwrite`` (renamed aside, the new one renamed in, the old deleted).
"""

import datetime
import json
import os
import shutil
import tempfile
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from din_jax.data.dataset import (
    DEFAULT_MAX_SEQ_LEN,
    FORMAT_NAME,
    FORMAT_VERSION,
    FREQ_FILES,
    ID_MAP_FILES,
    ITEM_CATEGORY_FILE,
    META_FILE,
    OFFSETS_FILE,
    SAMPLE_COLUMNS,
    SEQUENCES_FILE,
    SPLITS,
    DatasetError,
    count_training_frequencies,
    find_value_problem,
)
from din_jax.fileio import flush_to_disk, fsync_path, json_default, save_array


def _is_dataset_dir(path: str) -> bool:
    try:
        with open(os.path.join(path, META_FILE), encoding="utf-8") as handle:
            return json.load(handle).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def check_output_path(path: str, overwrite: bool) -> None:
    """Raises DatasetError unless nothing exists at ``path`` or, with ``overwrite``, a dataset or empty directory.

    Never another directory: a mistyped ``--output`` must not delete unrelated files.
    """
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise DatasetError(f"{path}: output already exists; pass --overwrite to replace it")
    if not os.path.isdir(path) or os.path.islink(path):
        raise DatasetError(f"{path}: exists and is not a directory; refusing to replace it")
    if os.listdir(path) and not _is_dataset_dir(path):
        raise DatasetError(f"{path}: exists and is not a din_jax dataset directory; refusing to replace it")


def _write_id_map(path: str, keys: Sequence) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        # One key per line: a line break inside a raw key would shift every later id.
        handle.write("".join(str(key).replace("\r", "\\r").replace("\n", "\\n") + "\n" for key in keys))
        flush_to_disk(handle)


def write_dataset(
    path: str,
    *,
    sequences,
    offsets,
    item_category,
    splits: Dict[str, np.ndarray],
    meta: dict,
    id_maps: Dict[str, Sequence[str]],
    overwrite: bool = False,
    before_meta: Optional[Callable[[dict], None]] = None,
) -> None:
    """Validates and writes a dataset directory atomically; DatasetError for invalid arrays or an output in the way.

    The arrays and ``splits`` (missing standard splits are written empty) are as in the directory. ``meta``
    holds the descriptive fields (name, source_format, negatives, sources, build, dropped, max_seq_len, ...);
    counts and format fields are filled in here. ``id_maps``: ``user``, ``item``, ``category`` -> raw keys,
    index = id (their lengths are the vocabulary sizes). ``before_meta`` is called with the complete meta
    dict just before meta.json is written, and may change it.
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
            shape = f"[rows, {len(SAMPLE_COLUMNS)}]"
            raise DatasetError(f"{path}: split {name!r} must have shape {shape}, got {rows.shape}")
        all_splits[name] = rows
    full_meta = {
        **meta,
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "users": num_users,
        "items": num_items,
        "categories": num_categories,
        "sequences": int(len(offsets) - 1),
        "events": int(len(sequences)),
        "splits": {name: int(len(rows)) for name, rows in all_splits.items()},
        "sample_columns": list(SAMPLE_COLUMNS),
    }
    full_meta.setdefault("max_seq_len", DEFAULT_MAX_SEQ_LEN)
    full_meta.setdefault("created", datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat())
    max_seq_len = full_meta["max_seq_len"]
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, (int, np.integer)) or max_seq_len < 1:
        raise DatasetError(f"{path}: invalid {META_FILE}: max_seq_len must be an integer >= 1, got {max_seq_len!r}")
    problem = find_value_problem(full_meta, sequences, offsets, item_category, all_splits)
    if problem is not None:
        raise DatasetError(f"{path}: invalid {problem[0]}: {problem[1]}")
    frequencies = count_training_frequencies(
        all_splits["train"], sequences, offsets, item_category, num_users, num_categories, int(max_seq_len)
    )

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
            save_array(os.path.join(temporary, name + ".npy"), rows)
        for kind, counts in frequencies.items():
            save_array(os.path.join(temporary, FREQ_FILES[kind]), counts)
        for kind, file in ID_MAP_FILES.items():
            _write_id_map(os.path.join(temporary, file), id_maps[kind])
        if before_meta is not None:
            before_meta(full_meta)
        # meta.json last: a directory with a meta.json is complete.
        with open(os.path.join(temporary, META_FILE), "w", encoding="utf-8") as handle:
            json.dump(full_meta, handle, indent=2, sort_keys=False, default=json_default)
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
