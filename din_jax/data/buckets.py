"""Length buckets: batch samples of similar history length, so that no step computes on much padding.

Real histories are short (Amazon Electronics: median 4, 99th percentile 85,
cut at 100), so padding every sample to ``max_seq_len`` wastes most of the
attention's work. Here each sample goes to the smallest of a few static
lengths (the *buckets*) that holds its history; every host call holds the
micro-batches of one bucket and is a program compiled for that length, so
the IPU and XLA keep static shapes.

The plan of an epoch (``plan_bucketed_chunks``) takes the epoch's shuffled
order and, bucket by bucket from the shortest:

1. cuts the bucket's samples (in the order's order) into full calls of
   ``device_iterations`` global micro-batches;
2. hands the rest (less than one call) on to the next larger bucket, whose
   programs take any shorter history;
3. in the largest bucket, cuts the rest into global micro-batches grouped into
   calls of power-of-two lengths (so a changing remainder reuses a handful of
   compiled programs instead of compiling a new one every epoch), and drops
   (training) or pads (evaluation) the final remainder smaller than one global
   micro-batch, exactly as ``plan_chunks`` does.

So every sample of the order is seen exactly once, except that remainder.
The calls are then put in a random order drawn from ``shuffle_seed`` (the plan
is a pure function of the order, the lengths and the seed, which resuming
relies on). One bucket (``buckets`` empty or just ``max_seq_len``) is exactly
``plan_chunks``: the single-bucket mode for the IPU.

Spilling whole calls upwards costs at most ``(buckets - 1) * device_iterations
* replicas * micro_batch_size`` samples per epoch computed at a longer length;
keep ``device_iterations`` moderate (tens to a few hundred) with many buckets.
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np

from din_jax.data.pipeline import ChunkPlan, plan_chunks


def normalize_buckets(buckets: Optional[Sequence[int]], max_seq_len: int) -> Tuple[int, ...]:
    """The bucket lengths to use: sorted, with ``max_seq_len`` last.

    Args:
      buckets: increasing lengths in ``[1, max_seq_len]``; empty or None for
        one bucket. ``max_seq_len`` is appended when the largest is smaller.

    Raises:
      ValueError: a length outside ``[1, max_seq_len]`` or not increasing.
    """
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
    """``"8,16,32,64,100"`` -> ``(8, 16, 32, 64, 100)``; ``""`` -> ``()``.

    Raises:
      ValueError: a field that is not an integer.
    """
    fields = [field.strip() for field in str(text).split(",") if field.strip()]
    try:
        return tuple(int(field) for field in fields)
    except ValueError:
        raise ValueError("length buckets must be comma-separated integers, got %r" % text) from None


def _binary_parts(steps: int, device_iterations: int) -> List[int]:
    """``steps`` as full calls of ``device_iterations`` then decreasing powers of two."""
    parts = [device_iterations] * (steps // device_iterations)
    rest = steps % device_iterations
    power = 1
    while power * 2 <= rest:
        power *= 2
    while rest:
        if power <= rest:
            parts.append(power)
            rest -= power
        power //= 2
    return parts


def plan_bucketed_chunks(order: np.ndarray, lengths: np.ndarray, buckets: Sequence[int], replicas: int,
                         device_iterations: int, micro_batch_size: int, drop_remainder: bool = True,
                         shuffle_seed: Optional[Sequence[int]] = None) -> ChunkPlan:
    """Cuts an ordering of sample indices into per-call index arrays, one bucket length per call.

    Args:
      order: the epoch's sample indices, in the order they are to be seen.
      lengths: int ``[num_samples]`` history length of every sample (cut to
        ``max_seq_len``), indexed by sample index.
      buckets: increasing bucket lengths, the last at least every length
        (``normalize_buckets``).
      replicas, device_iterations, micro_batch_size: as ``plan_chunks``.
      drop_remainder: training drops the final incomplete global micro-batch;
        evaluation pads it with copies of its first index, marked invalid
        (``valid``; the padding is at the end of the last call).
      shuffle_seed: seed of the order of the calls; None keeps them by bucket,
        shortest first.

    Returns:
      A ``ChunkPlan`` whose ``seq_lens[i]`` is the history length (``T``) of
      call ``i``.
    """
    if replicas < 1 or device_iterations < 1 or micro_batch_size < 1:
        raise ValueError("replicas, device_iterations and micro_batch_size must be >= 1")
    buckets = [int(b) for b in buckets]
    if not buckets or any(b <= a for a, b in zip(buckets, buckets[1:])):
        raise ValueError("buckets must be a non-empty increasing sequence, got %s" % (buckets,))
    order = np.asarray(order, dtype=np.int64)
    lengths = np.asarray(lengths)
    if len(buckets) == 1:
        plan = plan_chunks(order, replicas, device_iterations, micro_batch_size, drop_remainder)
        return plan._replace(seq_lens=[buckets[0]] * len(plan.calls))
    order_lengths = lengths[order]
    if order_lengths.size and int(order_lengths.max()) > buckets[-1]:
        raise ValueError("a history of length %d exceeds the largest bucket %d" % (int(order_lengths.max()),
                                                                                  buckets[-1]))
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
            emit(pool[call * per_call:(call + 1) * per_call], seq_len, per_call)
        carry = pool[full * per_call:]
        if index < len(buckets) - 1:
            continue
        real = len(carry)
        steps, remainder = divmod(real, global_batch)
        if remainder and not drop_remainder:
            carry = np.concatenate([carry, np.full(global_batch - remainder, carry[0], dtype=np.int64)])
            steps += 1
        start = 0
        for k in _binary_parts(steps, device_iterations):
            emit(carry[start:start + k * global_batch], seq_len, int(np.clip(real - start, 0, k * global_batch)))
            start += k * global_batch
    if shuffle_seed is not None and calls:
        # valid[i] counts the real samples at the start of call i, wherever it goes.
        permutation = np.random.default_rng(list(shuffle_seed) + [len(calls)]).permutation(len(calls))
        calls = [calls[i] for i in permutation]
        seq_lens = [seq_lens[i] for i in permutation]
        valid = [valid[i] for i in permutation]
    return ChunkPlan(calls, valid, seq_lens)


def plan_split_chunks(source, split: str, order: np.ndarray, max_seq_len: int, length_buckets: Sequence[int],
                      replicas: int, device_iterations: int, micro_batch_size: int, drop_remainder: bool,
                      shuffle_seed: Optional[Sequence[int]] = None) -> ChunkPlan:
    """``plan_bucketed_chunks`` with the split's history lengths (``plan_chunks`` for one bucket)."""
    buckets = normalize_buckets(length_buckets, max_seq_len)
    if len(buckets) == 1:
        plan = plan_chunks(order, replicas, device_iterations, micro_batch_size, drop_remainder)
        return plan._replace(seq_lens=[max_seq_len] * len(plan.calls))
    lengths = source.history_lengths(split, max_seq_len)
    return plan_bucketed_chunks(order, lengths, buckets, replicas, device_iterations, micro_batch_size,
                                drop_remainder, shuffle_seed)
