"""Uniform negative sampling that never returns an item the user interacted with.

Shared by the dataset build (negatives drawn once, seeded) and ``Dataset.resample_negatives`` (every epoch).
Vectorised rejection: draw every row's item at once, look ``user * num_items + item`` up in the sorted keys
of the users' own pairs (``np.searchsorted``), redraw only the rejected rows.
"""

import numpy as np


def make_user_item_keys(users: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    """The sorted unique int64 keys ``user * num_items + item`` of (user, item) pairs (``sample_negatives``')."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if users.shape != items.shape:
        raise ValueError(f"users and items differ in shape: {users.shape} vs {items.shape}")
    return np.unique(users * np.int64(num_items) + items)


def contains_keys(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """A bool mask: which ``keys`` occur in the sorted array ``sorted_keys``."""
    keys = np.asarray(keys, dtype=np.int64)
    if len(sorted_keys) == 0:
        return np.zeros(keys.shape, dtype=bool)
    where = np.searchsorted(sorted_keys, keys)
    # searchsorted returns len(sorted_keys) past the end; clip before indexing.
    found = sorted_keys[np.minimum(where, len(sorted_keys) - 1)] == keys
    return found & (where < len(sorted_keys))


def sample_negatives(
    rng: np.random.Generator, users: np.ndarray, num_items: int, user_item_keys: np.ndarray
) -> np.ndarray:
    """int32 ``[N]``: a uniform item in ``[0, num_items)`` for each row's user, never one of its ``user_item_keys``.

    The result depends only on ``rng``'s state. ValueError if a user has every item (no negative exists).
    """
    users = np.asarray(users, dtype=np.int64)
    if len(users) == 0:
        return np.zeros(0, dtype=np.int32)
    if num_items < 1:
        raise ValueError("num_items must be >= 1")
    # Rejection would loop forever for a user who has seen every item.
    key_users, key_counts = np.unique(user_item_keys // np.int64(num_items), return_counts=True)
    full = key_users[key_counts >= num_items]
    if len(full) and np.isin(users, full).any():
        user = int(full[np.isin(full, users)][0])
        raise ValueError(f"user {user} has interacted with all {num_items} items: no negative can be drawn")
    negatives = rng.integers(0, num_items, size=len(users), dtype=np.int64)
    pending = np.arange(len(users))
    while len(pending):
        rejected = contains_keys(user_item_keys, users[pending] * np.int64(num_items) + negatives[pending])
        pending = pending[rejected]
        negatives[pending] = rng.integers(0, num_items, size=len(pending), dtype=np.int64)
    return negatives.astype(np.int32)


def add_history_negatives(source, batch, rng: np.random.Generator) -> None:
    """Adds DIEN's negative next items to a padded batch dict (leaves of any leading shape, histories ``[..., T]``):
    ``hist_neg_item`` a uniform item for every valid history position, never one of the user's (their sequences in
    any split), as ``sample_negatives`` draws training negatives, and ``hist_neg_category`` its category; 0 at padded
    positions. ``source``: a ``Dataset``."""
    hist_item = np.asarray(batch["hist_item"])
    valid = np.arange(hist_item.shape[-1]) < np.asarray(batch["hist_len"])[..., None]
    users = np.broadcast_to(np.asarray(batch["user"])[..., None], hist_item.shape)[valid]
    negatives = np.zeros(hist_item.shape, np.int32)
    negatives[valid] = sample_negatives(rng, users, source.num_items, source.user_item_keys())
    batch["hist_neg_item"] = negatives
    batch["hist_neg_category"] = np.where(valid, np.asarray(source.item_category)[negatives], 0).astype(np.int32)
