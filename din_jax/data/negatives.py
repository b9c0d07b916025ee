"""Uniform negative sampling that never returns an item the user interacted with.

Shared by the dataset build (negatives drawn once, seeded) and the trainer
(``Dataset.resample_negatives``, fresh negatives every epoch). Rejection
sampling is vectorised: draw uniform items for every row at once, look the
``user * num_items + item`` keys up in the sorted array of the users' own
pairs with ``np.searchsorted``, and redraw only the rejected rows.
"""

import numpy as np


def make_user_item_keys(users: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    """Returns the sorted, unique int64 keys ``user * num_items + item`` of the given pairs.

    Args:
      users: int array of user ids, one per interaction.
      items: int array of item ids, same length.
      num_items: the item vocabulary size (keys must not collide across users).

    Returns:
      int64 ``[unique pairs]``, sorted ascending: the exclusion set for
      ``sample_negatives``.
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if users.shape != items.shape:
        raise ValueError(f"users and items differ in shape: {users.shape} vs {items.shape}")
    return np.unique(users * np.int64(num_items) + items)


def contains_keys(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Returns a bool mask: which ``keys`` occur in the sorted array ``sorted_keys``."""
    keys = np.asarray(keys, dtype=np.int64)
    if len(sorted_keys) == 0:
        return np.zeros(keys.shape, dtype=bool)
    where = np.searchsorted(sorted_keys, keys)
    # searchsorted returns len(sorted_keys) past the end; clip before indexing.
    found = sorted_keys[np.minimum(where, len(sorted_keys) - 1)] == keys
    return found & (where < len(sorted_keys))


def sample_negatives(rng: np.random.Generator, users: np.ndarray, num_items: int,
                     user_item_keys: np.ndarray) -> np.ndarray:
    """Draws one uniform negative item per row, never one of the row's user's items.

    Args:
      rng: the random generator; the result depends only on its state, so a
        seeded generator gives reproducible negatives.
      users: int array ``[N]``: the user of each row needing a negative.
      num_items: item vocabulary size; candidates are uniform on ``[0, num_items)``.
      user_item_keys: sorted unique int64 keys from ``make_user_item_keys``
        (every item each user must not get).

    Returns:
      int32 ``[N]`` negative item ids.

    Raises:
      ValueError: if some user has interacted with every item (no negative exists).
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
        raise ValueError(f"user {int(full[np.isin(full, users)][0])} has interacted with all {num_items} items: no negative can be drawn")
    negatives = rng.integers(0, num_items, size=len(users), dtype=np.int64)
    pending = np.arange(len(users))
    while len(pending):
        rejected = contains_keys(user_item_keys, users[pending] * np.int64(num_items) + negatives[pending])
        pending = pending[rejected]
        negatives[pending] = rng.integers(0, num_items, size=len(pending), dtype=np.int64)
    return negatives.astype(np.int32)
