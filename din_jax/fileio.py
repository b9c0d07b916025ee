"""Durable writes, JSON of numpy values and exclusive locks: what datasets, checkpoints and run records share."""

import errno
import fcntl
import os
import socket
import sys
import time
from typing import Any

import numpy as np


def flush_to_disk(handle) -> None:
    """Flushes an open file's buffers and its contents to disk."""
    handle.flush()
    os.fsync(handle.fileno())


def save_array(path: str, array: np.ndarray) -> None:
    """``np.save`` (no pickles) that returns once the file is on disk. A short write (numpy says only "N requested
    and M written" when the disk fills) becomes an OSError naming the file and the full disk."""
    array = np.asarray(array)
    try:
        with open(path, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
            flush_to_disk(handle)
    except OSError as error:
        full = error.errno in (errno.ENOSPC, errno.EDQUOT) or (error.errno is None and "requested and" in str(error))
        if full:
            raise OSError(
                errno.ENOSPC, "%s: the disk is full (or over quota): could not write %d bytes" % (path, array.nbytes)
            ) from None
        raise


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


class LockHeld(RuntimeError):
    """Another live process holds the lock (the message names it)."""


class ExclusiveLock:
    """An advisory lock on ``path`` (``fcntl.flock``): one run at a time per run directory or results file.

    The kernel drops the lock when its process dies, so a lock file left by a killed run never blocks the next
    one; the file only records who held it last (pid, host, time, command) for the message.
    """

    def __init__(self, path: str, what: str):
        self.path, self.what, self._handle, self.created_folder = path, what, None, False

    def acquire(self) -> "ExclusiveLock":
        folder = os.path.dirname(os.path.abspath(self.path))
        self.created_folder = not os.path.isdir(folder)  # whether the lock file's folder is new
        os.makedirs(folder, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise LockHeld("%s is in use by %s (lock file %s)" % (self.what, holder, self.path)) from None
        handle.seek(0)
        handle.truncate()
        command = " ".join(os.path.basename(arg) if i == 0 else arg for i, arg in enumerate(sys.argv[:3]))
        handle.write(
            "pid %d on %s since %s (%s)\n"
            % (os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S"), command or "python")
        )
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor drops the flock
            self._handle = None

    def __enter__(self) -> "ExclusiveLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
