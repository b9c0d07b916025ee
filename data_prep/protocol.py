"""Step 4: the DIN sample protocol on a remapped log, with an honest validation split.

For a user whose interactions in time order are b1..bn (ties keep input
order), the sample with target b(k+1) has history b1..bk, i.e. position k of
the user's stored sequence. Targets:

* ``validation`` protocol (default): train b2..b(n-2), validation b(n-1),
  test bn. Model selection then never looks at the test targets.
* ``authors`` protocol: train b2..b(n-1), test bn, no validation (the DIN
  code's split, which selects models on the test set; for comparison only).

Every positive row is followed by one negative row with the same history and
an item drawn uniformly from the items the user never interacted with
(seeded). Each user's whole sequence is stored once: sequence id = user id.
"""

from typing import Dict, NamedTuple

import numpy as np

from data_prep.progress import stages
from din_jax.data.negatives import make_user_item_keys, sample_negatives

PROTOCOLS = ("validation", "authors")


class ProtocolSamples(NamedTuple):
    sequences: np.ndarray  # int32 [events]
    offsets: np.ndarray  # int64 [users + 1]
    splits: Dict[str, np.ndarray]  # int32 [rows, 5]


def describe_protocol(protocol: str) -> dict:
    """Returns the meta.json description of a protocol."""
    if protocol == "validation":
        return {
            "name": "validation",
            "train_targets": "b2..b(n-2)",
            "validation_targets": "b(n-1)",
            "test_targets": "bn",
            "negatives_per_positive": 1,
        }
    return {
        "name": "authors",
        "train_targets": "b2..b(n-1)",
        "validation_targets": "none (the authors' split has no validation; model selection would use the test set)",
        "test_targets": "bn",
        "negatives_per_positive": 1,
    }


def build_protocol_samples(
    user: np.ndarray,
    item: np.ndarray,
    time: np.ndarray,
    num_users: int,
    num_items: int,
    seed: int,
    protocol: str = "validation",
) -> ProtocolSamples:
    """Builds sequences and train / validation / test samples from a remapped log.

    Args:
      user, item: int per-interaction ids; every user id in ``[0, num_users)``
        must occur (``clean_and_remap`` guarantees it, with >= 3 interactions).
      time: int64 per-interaction time.
      num_users, num_items: vocabulary sizes.
      seed: seeds the negative sampler.
      protocol: ``validation`` or ``authors`` (see module docstring).

    Returns:
      ``ProtocolSamples``; rows ordered by user, then position, positive first.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {list(PROTOCOLS)}")
    with stages("protocol + negatives", ("sort", "negatives", "sample rows")) as step:
        return _build(user, item, time, num_users, num_items, seed, protocol, step)


def _build(user, item, time, num_users: int, num_items: int, seed: int, protocol: str, step) -> ProtocolSamples:
    step.advance("sort")
    user = np.asarray(user, dtype=np.int64)
    item = np.asarray(item, dtype=np.int64)
    # lexsort is stable: equal (user, time) keep their input order.
    order = np.lexsort((np.asarray(time, dtype=np.int64), user))
    sorted_user = user[order]
    sequences = item[order].astype(np.int32)
    counts = np.bincount(sorted_user, minlength=num_users).astype(np.int64)
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])

    rank = np.arange(len(order), dtype=np.int64) - offsets[sorted_user]
    length = counts[sorted_user]
    is_target = rank >= 1
    if protocol == "validation":
        split_of = {
            "train": is_target & (rank <= length - 3),
            "validation": rank == length - 2,
            "test": rank == length - 1,
        }
    else:
        split_of = {
            "train": is_target & (rank <= length - 2),
            "validation": np.zeros(len(rank), dtype=bool),
            "test": rank == length - 1,
        }
    # Users with a single interaction have no target at all (rank 0 is also n - 1).
    for name in split_of:
        split_of[name] &= is_target

    step.advance("negatives")
    rng = np.random.default_rng(seed)
    exclusion = make_user_item_keys(user, item, num_items)
    targets = np.flatnonzero(is_target)
    negatives = np.zeros(len(order), dtype=np.int64)
    negatives[targets] = sample_negatives(rng, sorted_user[targets], num_items, exclusion)

    step.advance("sample rows")
    splits = {}
    for name in ("train", "validation", "test"):
        events = np.flatnonzero(split_of[name])
        rows = np.empty((2 * len(events), 5), dtype=np.int32)
        rows[0::2, 0] = sorted_user[events]
        rows[0::2, 1] = sorted_user[events]
        rows[0::2, 2] = rank[events]
        rows[0::2, 3] = sequences[events]
        rows[0::2, 4] = 1
        rows[1::2] = rows[0::2]
        rows[1::2, 3] = negatives[events]
        rows[1::2, 4] = 0
        splits[name] = rows
    return ProtocolSamples(sequences, offsets, splits)
