"""Host-side batching: epoch plans, packing, chunk gathering, prefetch and length buckets.

One chunk, shaped ``(replicas R, device_iterations K, micro_batch B, ...)``, feeds one call of the pmapped
program; step ``k``'s global batch is ``R * B`` consecutive samples of the epoch's order, so ``R`` devices
with micro-batch ``B`` compute the update of one device with ``R * B``. Packed micro-batches (the default) lay
their samples' histories end to end in a buffer of static length, keeping the order (docs/TRAINING.md). Length
buckets (padded batches only) group samples of similar history length into calls compiled for that length;
they change what is learned (docs/RESULTS.md).
"""

import queue
import threading
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from din_jax.data.negatives import add_history_negatives


class ChunkPlan(NamedTuple):
    """Which samples each call of an epoch sees."""

    calls: List[np.ndarray]  # int64 [R, K_i, B] sample indices; only a bucket's last calls may have a smaller K
    valid: List[int]  # the real samples of each call, the rest being padding (evaluation only)
    seq_lens: Optional[List[int]] = None  # the history length T each call is gathered with; None: max_seq_len
    positions: int = 0  # packed: the buffer length P of every micro-batch, -1 marking empty slots; 0: padded
    deferred: int = 0  # packed: samples seen one or more micro-batches later than the order puts them


def _check_sizes(replicas: int, device_iterations: int, micro_batch_size: int) -> None:
    if replicas < 1 or device_iterations < 1 or micro_batch_size < 1:
        raise ValueError("replicas, device_iterations and micro_batch_size must be >= 1")


def plan_chunks(
    order: np.ndarray, replicas: int, device_iterations: int, micro_batch_size: int, drop_remainder: bool
) -> ChunkPlan:
    """Cuts the epoch's sample indices, in the order they are to be seen, into per-call index arrays.

    A call is ``device_iterations`` micro-batches (the epoch's tail gets one shorter call) of
    ``micro_batch_size`` samples per replica. ``drop_remainder`` drops the last incomplete global micro-batch
    (training); otherwise it is padded with copies of the first index, marked invalid (evaluation).
    """
    _check_sizes(replicas, device_iterations, micro_batch_size)
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
    for start in range(0, steps, device_iterations):
        k = min(device_iterations, steps - start)
        idx = order[start * global_batch : (start + k) * global_batch]
        # (K, R, B) -> (R, K, B): step k's global batch is contiguous in `order`.
        calls.append(idx.reshape(k, replicas, micro_batch_size).transpose(1, 0, 2))
        valid.append(int(min(k * global_batch, valid_total - start * global_batch)))
    return ChunkPlan(calls, valid)


def gather_chunk(
    source: Any,
    split: str,
    indices_RxKxB: np.ndarray,
    max_seq_len: int,
    samples: Optional[np.ndarray] = None,
    positions: int = 0,
    negatives_rng: Optional[np.random.Generator] = None,
) -> Dict[str, np.ndarray]:
    """Gathers the batch dict for an index array of any shape (leaves get that leading shape); ``positions`` > 0:
    packed micro-batches (the last axis) of that buffer length, index -1 marking an empty slot; ``negatives_rng``:
    padded only, with DIEN's negatives drawn from it (``add_history_negatives``)."""
    if negatives_rng is not None:
        if positions:
            raise ValueError("history negatives need padded batches")
        batch = gather_chunk(source, split, indices_RxKxB, max_seq_len, samples)
        add_history_negatives(source, batch, negatives_rng)
        return batch
    if positions:
        micro_batch = indices_RxKxB.shape[-1]
        batch = source.gather_packed(split, indices_RxKxB.reshape(-1, micro_batch), max_seq_len, positions, samples)
        lead = indices_RxKxB.shape[:-1]
        return {key: value.reshape(lead + value.shape[1:]) for key, value in batch.items()}
    batch = source.gather(split, indices_RxKxB.reshape(-1), max_seq_len, samples=samples)
    return {key: value.reshape(indices_RxKxB.shape + value.shape[1:]) for key, value in batch.items()}


def packed_positions(lengths: np.ndarray, micro_batch_size: int, max_seq_len: int, quantile: float = 0.99) -> int:
    """The default buffer length of a packed micro-batch: the ``quantile`` of the total history length of
    ``micro_batch_size`` samples drawn at random (fixed seed) from ``lengths``, at least ``max_seq_len`` (any one
    sample fits), rounded up to a multiple of 8, at most the padded batch's ``B * max_seq_len``. A pure function of
    its arguments (resuming relies on it)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if not len(lengths):
        return int(max_seq_len)
    draws = max(2000, min(20000, 4_000_000 // max(micro_batch_size, 1)))
    rng = np.random.default_rng(0)
    totals = np.zeros(draws, np.int64)
    for start in range(0, draws, 1000):  # in blocks: memory stays at 1000 x B
        size = min(1000, draws - start)
        totals[start : start + size] = lengths[rng.integers(0, len(lengths), (size, micro_batch_size))].sum(axis=1)
    value = -(-max(int(np.ceil(np.quantile(totals, quantile))), int(max_seq_len)) // 8) * 8
    return min(value, max(micro_batch_size * max_seq_len, max_seq_len))


# Positions of a packed prediction micro-batch: its activations stay in cache. Measured on the 2-core CPU
# (docs/PERFORMANCE.md): buffers of ~14,000 positions score uniform 1..100 histories 2.5x faster than ~54,000.
PREDICT_POSITIONS = 16384


def predict_rows(lengths: np.ndarray, micro_batch_size: int) -> int:
    """The samples of a packed prediction micro-batch: ``micro_batch_size``, fewer when their histories would
    hold more than about ``PREDICT_POSITIONS`` positions (each sample is scored alone: the outputs are the same)."""
    mean = float(np.mean(lengths)) if len(lengths) else 1.0
    return int(max(1, min(micro_batch_size, PREDICT_POSITIONS // max(mean, 1.0))))


def plan_packed_prediction(
    order: np.ndarray, lengths: np.ndarray, replicas: int, device_iterations: int, micro_batch_size: int, max_seq_len
) -> ChunkPlan:
    """The calls that score ``order`` packed, every sample once: micro-batches of ``predict_rows`` samples, as many
    more per call as they are smaller, buffers from ``packed_positions``."""
    scored = np.asarray(lengths)[np.sort(order)]  # a function of the samples, not of their order
    rows = predict_rows(scored, micro_batch_size)
    iterations = device_iterations * -(-micro_batch_size // rows)
    positions = packed_positions(scored, rows, max_seq_len)
    return plan_packed_chunks(order, lengths, replicas, iterations, rows, positions, drop_remainder=False)


def pack_micro_batches(order: np.ndarray, lengths: np.ndarray, micro_batch_size: int, positions: int):
    """Cuts ``order`` into micro-batches of at most ``micro_batch_size`` samples whose histories total at most
    ``positions``, keeping the order.

    Micro-batch ``m`` is the plain cut of the next ``B`` samples unless their histories overflow the buffer;
    then it ends before the first sample that does not fit (its last slots stay empty) and the samples cut off
    are deferred: the next micro-batch starts with them. So samples are seen exactly in the order's order;
    after an overflow the micro-batch boundaries shift. Returns int64 ``[M, B]`` (-1: an empty slot) and the
    number of deferred samples (one per sample and overflow).
    """
    order = np.asarray(order, dtype=np.int64)
    length_of = np.asarray(lengths, dtype=np.int64)[order]
    if len(length_of) and length_of.max() > positions:
        raise ValueError("a history of %d positions does not fit a packed buffer of %d" % (length_of.max(), positions))
    cumulative = np.concatenate([[0], np.cumsum(length_of)])
    n, batch = len(order), micro_batch_size
    starts, ends, deferred, i = [], [], 0, 0
    while i < n:
        end = min(i + batch, n)
        if cumulative[end] - cumulative[i] > positions:
            # The longest prefix that fits: at least one sample, as no history exceeds the buffer.
            fit = int(np.searchsorted(cumulative, cumulative[i] + positions, side="right")) - 1
            deferred += end - fit
            end = fit
        starts.append(i)
        ends.append(end)
        i = end
    rows = np.full((len(starts), batch), -1, np.int64)
    for row, (start, end) in enumerate(zip(starts, ends)):
        rows[row, : end - start] = order[start:end]
    return rows, deferred


def plan_packed_chunks(
    order: np.ndarray,
    lengths: np.ndarray,
    replicas: int,
    device_iterations: int,
    micro_batch_size: int,
    positions: int,
    drop_remainder: bool,
) -> ChunkPlan:
    """``plan_chunks`` for packed micro-batches: the same samples (``drop_remainder`` drops the same tail of the
    order), packed by ``pack_micro_batches``; micro-batch ``m`` goes to step ``m // R``, replica ``m % R``, and
    empty micro-batches fill the last step's replicas. ``valid``: the real samples of each call."""
    _check_sizes(replicas, device_iterations, micro_batch_size)
    order = np.asarray(order, dtype=np.int64)
    global_batch = replicas * micro_batch_size
    if drop_remainder:
        order = order[: len(order) // global_batch * global_batch]
    rows, deferred = pack_micro_batches(order, lengths, micro_batch_size, positions)
    extra = -len(rows) % replicas
    rows = np.concatenate([rows, np.full((extra, micro_batch_size), -1, np.int64)])
    steps = len(rows) // replicas
    calls, valid = [], []
    for start in range(0, steps, device_iterations):
        k = min(device_iterations, steps - start)
        idx = rows[start * replicas : (start + k) * replicas]
        calls.append(idx.reshape(k, replicas, micro_batch_size).transpose(1, 0, 2))
        valid.append(int(np.sum(idx >= 0)))
    return ChunkPlan(calls, valid, positions=int(positions), deferred=deferred)


def prefetch(iterable: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """Runs ``iterable`` in a background thread, ``depth`` items ahead (0: in the caller's thread).

    numpy gathers release the GIL, so the next chunk is prepared while the device computes. The
    producer's exceptions are re-raised in the consumer.
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


def normalize_buckets(buckets: Optional[Sequence[int]], max_seq_len: int) -> Tuple[int, ...]:
    """The bucket lengths to use: increasing, in ``[1, max_seq_len]`` (else ValueError), with ``max_seq_len`` last."""
    values = [int(b) for b in (buckets or ())]
    for value in values:
        if not 1 <= value <= max_seq_len:
            raise ValueError("length bucket %d is outside [1, max_seq_len=%d]" % (value, max_seq_len))
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError("length buckets must increase, got %s" % values)
    if not values or values[-1] < max_seq_len:
        values.append(max_seq_len)
    return tuple(values)


def parse_length_buckets(text: str) -> Tuple[int, ...]:
    """``"8,16,32,64,100"`` -> ``(8, 16, 32, 64, 100)``; ``""`` -> ``()``; ValueError for a non-integer."""
    fields = [field.strip() for field in str(text).split(",") if field.strip()]
    try:
        return tuple(int(field) for field in fields)
    except ValueError:
        raise ValueError("length buckets must be comma-separated integers, got %r" % text) from None


def _binary_parts(steps: int, device_iterations: int) -> List[int]:
    """``steps`` as full calls of ``device_iterations`` then decreasing powers of two."""
    rest = int(steps % device_iterations)
    powers = [1 << bit for bit in reversed(range(rest.bit_length())) if rest >> bit & 1]
    return [device_iterations] * (steps // device_iterations) + powers


def plan_bucketed_chunks(
    order: np.ndarray,
    lengths: Optional[np.ndarray],
    buckets: Sequence[int],
    replicas: int,
    device_iterations: int,
    micro_batch_size: int,
    drop_remainder: bool = True,
    shuffle_seed: Optional[Sequence[int]] = None,
) -> ChunkPlan:
    """``plan_chunks`` (one bucket: exactly that) with one bucket length per call, in ``seq_lens``.

    ``lengths``: the history length of every sample (unused for one bucket); ``buckets``: increasing, the
    last at least every length (``normalize_buckets``). Bucket by bucket from the shortest, a bucket's samples
    (in the order's order) fill full calls and the rest (less than one call) spills into the next bucket. The
    largest bucket cuts its rest into calls of power-of-two lengths (a handful of compiled programs whatever
    the remainder) and drops or pads the final partial global micro-batch as ``plan_chunks`` does. So at most
    ``(buckets - 1) * device_iterations * R * B`` samples per epoch run at a longer length. ``shuffle_seed``
    seeds the calls' order; None keeps them by bucket, shortest first. The plan is a pure function of the
    arguments (resuming relies on it).
    """
    _check_sizes(replicas, device_iterations, micro_batch_size)
    buckets = [int(b) for b in buckets]
    if not buckets or any(b <= a for a, b in zip(buckets, buckets[1:])):
        raise ValueError("buckets must be a non-empty increasing sequence, got %s" % (buckets,))
    order = np.asarray(order, dtype=np.int64)
    if len(buckets) == 1:
        plan = plan_chunks(order, replicas, device_iterations, micro_batch_size, drop_remainder)
        return plan._replace(seq_lens=[buckets[0]] * len(plan.calls))
    order_lengths = np.asarray(lengths)[order]
    longest = int(order_lengths.max()) if order_lengths.size else 0
    if longest > buckets[-1]:
        raise ValueError("a history of length %d exceeds the largest bucket %d" % (longest, buckets[-1]))
    bucket_of = np.searchsorted(np.asarray(buckets), order_lengths, side="left")
    global_batch = replicas * micro_batch_size
    per_call = device_iterations * global_batch
    calls: List[np.ndarray] = []
    seq_lens: List[int] = []
    valid: List[int] = []

    def emit(indices: np.ndarray, seq_len: int, real: int) -> None:
        k = len(indices) // global_batch
        calls.append(indices.reshape(k, replicas, micro_batch_size).transpose(1, 0, 2))
        seq_lens.append(seq_len)
        valid.append(real)

    carry = np.zeros((0,), np.int64)
    for index, seq_len in enumerate(buckets):
        pool = np.concatenate([carry, order[bucket_of == index]])
        full = len(pool) // per_call
        for call in range(full):
            emit(pool[call * per_call : (call + 1) * per_call], seq_len, per_call)
        carry = pool[full * per_call :]
        if index < len(buckets) - 1:
            continue
        real = len(carry)
        steps, remainder = divmod(real, global_batch)
        if remainder and not drop_remainder:
            carry = np.concatenate([carry, np.full(global_batch - remainder, carry[0], dtype=np.int64)])
            steps += 1
        start = 0
        for k in _binary_parts(steps, device_iterations):
            emit(carry[start : start + k * global_batch], seq_len, int(np.clip(real - start, 0, k * global_batch)))
            start += k * global_batch
    if shuffle_seed is not None and calls:
        # valid[i] counts the real samples at the start of call i, wherever it goes.
        permutation = np.random.default_rng(list(shuffle_seed) + [len(calls)]).permutation(len(calls))
        calls = [calls[i] for i in permutation]
        seq_lens = [seq_lens[i] for i in permutation]
        valid = [valid[i] for i in permutation]
    return ChunkPlan(calls, valid, seq_lens)


def plan_split_chunks(
    source,
    split: str,
    order: np.ndarray,
    max_seq_len: int,
    length_buckets: Sequence[int],
    replicas: int,
    device_iterations: int,
    micro_batch_size: int,
    drop_remainder: bool,
    shuffle_seed: Optional[Sequence[int]] = None,
) -> ChunkPlan:
    """``plan_bucketed_chunks`` with the split's history lengths (read only for more than one bucket)."""
    buckets = normalize_buckets(length_buckets, max_seq_len)
    lengths = source.history_lengths(split, max_seq_len) if len(buckets) > 1 else None
    return plan_bucketed_chunks(
        order, lengths, buckets, replicas, device_iterations, micro_batch_size, drop_remainder, shuffle_seed
    )


def train_positions(source, config) -> int:
    """The packed buffer length of a training micro-batch: ``--packed_positions`` or from the data; 0 if padded."""
    if config.batching != "packed":
        return 0
    if config.packed_positions:
        return config.packed_positions
    lengths = source.history_lengths("train", config.max_seq_len)
    return packed_positions(lengths, config.micro_batch_size, config.max_seq_len)


def history_negatives_rng(config, epoch: int, call: int) -> np.random.Generator:
    """The generator of DIEN's negatives for one training call: a function of seed, epoch and call, so that a resumed
    run draws the same ones."""
    return np.random.default_rng([config.seed, epoch, call, 0xD1E9])


def plan_epoch(source, config, epoch: int, replicas: int) -> ChunkPlan:
    """The calls of a training epoch: its shuffled order (a function of seed and epoch), the remainder dropped."""
    order = np.random.default_rng([config.seed, epoch]).permutation(source.num_samples("train"))
    shape = (replicas, config.device_iterations, config.micro_batch_size)
    if config.batching == "packed":
        lengths = source.history_lengths("train", config.max_seq_len)
        return plan_packed_chunks(order, lengths, *shape, train_positions(source, config), drop_remainder=True)
    if len(normalize_buckets(config.length_buckets, config.max_seq_len)) > 1:
        args = (source, "train", order, config.max_seq_len, config.length_buckets, *shape)
        return plan_split_chunks(*args, drop_remainder=True, shuffle_seed=[config.seed, epoch])
    return plan_chunks(order, *shape, drop_remainder=True)
