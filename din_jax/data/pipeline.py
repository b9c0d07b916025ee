"""Host-side batching: samples -> chunks of shape (replicas, device_iterations, micro_batch, ...).

One chunk feeds one call of the pmapped program. Micro-batch ``k`` of a chunk
is a global batch of ``replicas * micro_batch`` consecutive samples of the
epoch's order, device ``r`` taking the ``r``-th slice, so that ``R`` devices
with micro-batch ``B`` compute the same update as one device with ``R * B``.
"""

import queue
import threading
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional

import numpy as np


class ChunkPlan(NamedTuple):
    """Which samples each call of an epoch sees.

    ``calls[i]`` is an int64 array ``[R, K_i, B]`` of sample indices; only the
    last call may have a smaller ``K``. ``valid[i]`` is the number of real
    samples in call ``i`` (the rest is padding, evaluation only).
    ``seq_lens[i]``, when given, is the history length ``T`` call ``i`` is
    gathered with (length buckets, ``din_jax.data.buckets``); None: every
    call uses ``max_seq_len``.
    """

    calls: List[np.ndarray]
    valid: List[int]
    seq_lens: Optional[List[int]] = None


def plan_chunks(order: np.ndarray, replicas: int, device_iterations: int, micro_batch_size: int,
                drop_remainder: bool) -> ChunkPlan:
    """Cuts an ordering of sample indices into per-call index arrays.

    Args:
      order: the epoch's sample indices, in the order they are to be seen.
      replicas: devices per step (global ones; slice per process later).
      device_iterations: micro-batches per call; the tail of the epoch gets
        one shorter call (one more compiled program), not dropped.
      micro_batch_size: samples per device per micro-batch.
      drop_remainder: training drops the last incomplete global micro-batch
        (a different one each epoch, as the order is reshuffled); evaluation
        pads it with copies of the first index instead, marked invalid.
    """
    if replicas < 1 or device_iterations < 1 or micro_batch_size < 1:
        raise ValueError("replicas, device_iterations and micro_batch_size must be >= 1")
    order = np.asarray(order, dtype=np.int64)
    global_batch = replicas * micro_batch_size
    steps, remainder = divmod(len(order), global_batch)
    valid_total = len(order)
    if remainder and not drop_remainder:
        pad = np.full(global_batch - remainder, order[0] if len(order) else 0, dtype=np.int64)
        order = np.concatenate([order, pad])
        steps += 1
    elif remainder:
        order = order[: steps * global_batch]
        valid_total = len(order)
    calls, valid = [], []
    seen = 0
    for start in range(0, steps, device_iterations):
        k = min(device_iterations, steps - start)
        idx = order[start * global_batch:(start + k) * global_batch]
        # (K, R, B) -> (R, K, B): step k's global batch is contiguous in `order`.
        calls.append(idx.reshape(k, replicas, micro_batch_size).transpose(1, 0, 2))
        n = k * global_batch
        valid.append(int(min(n, valid_total - seen)))
        seen += n
    return ChunkPlan(calls, valid)


def gather_chunk(source: Any, split: str, indices_RxKxB: np.ndarray, max_seq_len: int,
                 samples: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """Gathers the batch dict for an index array of any shape (leaves get that leading shape)."""
    flat = indices_RxKxB.reshape(-1)
    batch = source.gather(split, flat, max_seq_len, samples=samples)
    return {key: value.reshape(indices_RxKxB.shape + value.shape[1:]) for key, value in batch.items()}


def prefetch(iterable: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Runs ``iterable`` in a background thread, ``depth`` items ahead.

    numpy gathers release the GIL for most of their work, so the next chunk is
    prepared while the device computes the current one. Exceptions raised by
    the producer are re-raised in the consumer.
    """
    if depth <= 0:
        yield from iterable
        return
    items: "queue.Queue[Any]" = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        items.put((None, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put((None, done))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            items.put((error, None))

    thread = threading.Thread(target=produce, name="din_jax-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            error, item = items.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
