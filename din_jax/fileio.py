"""Durable writes and JSON of numpy values: what datasets, checkpoints and run records share."""

import os
from typing import Any

import numpy as np


def flush_to_disk(handle) -> None:
    """Flushes an open file's buffers and its contents to disk."""
    handle.flush()
    os.fsync(handle.fileno())


def save_array(path: str, array: np.ndarray) -> None:
    """``np.save`` (no pickles) that returns once the file is on disk."""
    with open(path, "wb") as handle:
        np.save(handle, np.asarray(array), allow_pickle=False)
        flush_to_disk(handle)


def fsync_path(path: str) -> None:
    """Flushes a file, or a directory's entries, to disk (a no-op where directories cannot be opened: Windows).

    After renaming a directory into place its entries and its parent's must reach the disk too, or a power cut can
    leave a directory that exists but is empty.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def json_default(value: Any) -> Any:
    """``json.dump(default=...)`` for numpy scalars and arrays and sets; anything else as its string."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (np.ndarray, tuple, set)):
        return list(value.tolist() if isinstance(value, np.ndarray) else value)
    return str(value)
