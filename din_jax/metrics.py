"""Evaluation metrics for CTR prediction: AUC, GAUC, logloss, RelaImpr (definitions: docs/RESULTS.md).

They run on the host, in numpy, on predictions gathered from the device: GAUC needs every prediction of a user at
once, so it cannot be accumulated per batch. Ties between scores count one half everywhere (Mann-Whitney), so a
constant predictor has AUC 0.5 exactly. Inputs may have any shape, but their shapes must agree exactly (a ``[B, 1]``
logit against ``[B]`` labels is a bug, not something to broadcast); labels must be 0/1 or bool, scores finite.

References: Zhou et al., "Deep Interest Network for Click-Through Rate Prediction", KDD 2018, Sec. 6.3 (GAUC,
RelaImpr); Zhu et al., "Optimized Cost per Click in Taobao Display Advertising", KDD 2017 (GAUC).
"""

import math
from typing import Dict, NamedTuple, Optional

import numpy as np


class GaucDetails(NamedTuple):
    """GAUC (NaN when no user has both classes), the users counted and skipped (all of one class), and the
    impressions of the counted users (the sum of the weights)."""

    gauc: float
    users_counted: int
    users_skipped: int
    impressions_counted: int


def _as_checked_arrays(**named) -> Dict[str, np.ndarray]:
    arrays = {name: np.asarray(value) for name, value in named.items()}
    shapes = {name: array.shape for name, array in arrays.items()}
    if len(set(shapes.values())) != 1:
        described = ", ".join(f"{n} {s}" for n, s in shapes.items())
        raise ValueError("inputs must have the same shape; got " + described)
    first = next(iter(arrays.values()))
    if first.size == 0:
        raise ValueError("inputs are empty; a metric needs at least one sample")
    return {name: array.reshape(-1) for name, array in arrays.items()}


def _check_labels(labels: np.ndarray) -> np.ndarray:
    if labels.dtype == np.bool_:
        return labels
    if not np.issubdtype(labels.dtype, np.number):
        raise ValueError(f"labels must be numeric or bool; got dtype {labels.dtype}")
    is_binary = (labels == 0) | (labels == 1)
    if not np.all(is_binary):
        bad = np.flatnonzero(~is_binary)
        raise ValueError(
            f"labels must be 0 or 1; {bad.size} of {labels.size} are not (first at index {bad[0]}: {labels[bad[0]]!r})"
        )
    return labels == 1


def _check_finite(values: np.ndarray, name: str) -> np.ndarray:
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == np.bool_):
        raise ValueError(f"{name} must be numeric; got dtype {values.dtype}")
    # float64 holds every float32 and int32 exactly: the order and the ties of the values are kept.
    values = values.astype(np.float64)
    finite = np.isfinite(values)
    if not np.all(finite):
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{name} must be finite; {bad.size} of {values.size} are not (first at index {bad[0]}: {values[bad[0]]!r})"
        )
    return values


def _check_users(users: np.ndarray) -> np.ndarray:
    if np.issubdtype(users.dtype, np.floating) and not np.all(np.isfinite(users)):
        # NaN != NaN would make every NaN user a group of its own.
        raise ValueError("users must be finite ids; found NaN or Inf")
    return users


def _group_starts(*sorted_keys: np.ndarray) -> np.ndarray:
    """Indices where any of the (jointly sorted) keys changes value: run starts."""
    size = sorted_keys[0].shape[0]
    changes = np.zeros(size, dtype=np.bool_)
    changes[0] = True
    for key in sorted_keys:
        changes[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(changes)


def compute_auc(labels: np.ndarray, scores: np.ndarray, weights: Optional[np.ndarray] = None) -> float:
    """Exact ROC AUC, ties counted one half, optionally with non-negative finite sample weights.

    From one stable argsort: each positive beats the negatives of the lower tie groups and half of its own. This
    adds counts instead of subtracting two large rank sums, so it stays exact in float64. Any strictly increasing
    transform of the scores (logits, probabilities) gives the same AUC. Returns NaN, without a warning, when only
    one class is present (callers evaluating many small groups would be flooded).
    """
    if weights is None:
        arrays = _as_checked_arrays(labels=labels, scores=scores)
        sample_weights = np.ones(arrays["labels"].shape[0], dtype=np.float64)
    else:
        arrays = _as_checked_arrays(labels=labels, scores=scores, weights=weights)
        sample_weights = _check_finite(arrays["weights"], "weights")
        if np.any(sample_weights < 0):
            raise ValueError("weights must be non-negative")
    positive = _check_labels(arrays["labels"])
    values = _check_finite(arrays["scores"], "scores")

    order = np.argsort(values, kind="stable")
    sorted_positive = positive[order]
    sorted_weights = sample_weights[order]
    starts = _group_starts(values[order])
    positive_weight = np.add.reduceat(np.where(sorted_positive, sorted_weights, 0.0), starts)
    negative_weight = np.add.reduceat(np.where(sorted_positive, 0.0, sorted_weights), starts)

    total_positive = positive_weight.sum()
    total_negative = negative_weight.sum()
    if total_positive == 0 or total_negative == 0:
        return math.nan
    negatives_below = np.cumsum(negative_weight) - negative_weight
    wins = np.sum(positive_weight * (negatives_below + 0.5 * negative_weight))
    return float(wins / (total_positive * total_negative))


def compute_gauc_details(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> GaucDetails:
    """User-weighted AUC (GAUC) with the number of users counted and skipped.

    ``GAUC = sum_u w_u AUC_u / sum_u w_u``, ``w_u`` the impressions of user u (Zhou et al. 2018, Sec. 6.3;
    Zhu et al. 2017); users whose impressions are all of one class have no AUC and count nowhere. With one positive
    and one negative per user it is the fraction of users whose positive scores higher. Vectorised over users, with
    int64 counts, so the per-user Mann-Whitney counts are exact. ``users`` may be any sortable dtype.
    """
    arrays = _as_checked_arrays(users=users, labels=labels, scores=scores)
    user_ids = _check_users(arrays["users"])
    positive = _check_labels(arrays["labels"])
    values = _check_finite(arrays["scores"], "scores")
    size = values.shape[0]

    # lexsort sorts by its last key first: primary user, secondary score.
    order = np.lexsort((values, user_ids))
    sorted_users = user_ids[order]
    sorted_positive = positive[order].astype(np.int64)

    # Tie groups: runs of equal (user, score); a group never spans two users.
    group_starts = _group_starts(sorted_users, values[order])
    group_sizes = np.diff(np.append(group_starts, size))
    group_positives = np.add.reduceat(sorted_positive, group_starts)
    group_negatives = group_sizes - group_positives

    user_first_group = _group_starts(sorted_users[group_starts])
    starts_user = np.zeros(group_starts.size, dtype=np.int64)
    starts_user[user_first_group] = 1
    group_to_user = np.cumsum(starts_user) - 1
    # Negatives in lower-scored groups of the same user: a global exclusive cumsum minus its value at the user's start.
    negatives_before = np.cumsum(group_negatives) - group_negatives
    negatives_below = negatives_before - negatives_before[user_first_group][group_to_user]
    # Twice the Mann-Whitney count keeps the tie half in integers.
    twice_wins = group_positives * (2 * negatives_below + group_negatives)

    user_twice_wins = np.add.reduceat(twice_wins, user_first_group)
    user_positives = np.add.reduceat(group_positives, user_first_group)
    user_negatives = np.add.reduceat(group_negatives, user_first_group)
    counted = (user_positives > 0) & (user_negatives > 0)
    users_counted = int(np.count_nonzero(counted))
    users_skipped = int(counted.size - users_counted)
    if users_counted == 0:
        return GaucDetails(math.nan, 0, users_skipped, 0)

    pairs = user_positives[counted] * user_negatives[counted]
    user_auc = user_twice_wins[counted] / (2.0 * pairs)
    impressions = user_positives[counted] + user_negatives[counted]
    total_impressions = int(impressions.sum())
    gauc = float(np.sum(impressions * user_auc) / total_impressions)
    return GaucDetails(gauc, users_counted, users_skipped, total_impressions)


def compute_gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """User-weighted AUC (GAUC) as a float, NaN when no user has both classes (``compute_gauc_details``)."""
    return compute_gauc_details(users, labels, scores).gauc


def compute_logloss(
    labels: np.ndarray,
    probabilities_or_logits: np.ndarray,
    from_logits: bool = False,
    eps: float = 1e-7,
) -> float:
    """Mean binary cross-entropy of probabilities in [0, 1], or of logits when ``from_logits``.

    Probabilities are clipped to ``[eps, 1 - eps]``, so a confident wrong prediction costs ``-log(eps)``, not
    infinity; logits need no clipping.
    """
    arrays = _as_checked_arrays(labels=labels, predictions=probabilities_or_logits)
    positive = _check_labels(arrays["labels"])
    predictions = _check_finite(arrays["predictions"], "probabilities_or_logits")
    if from_logits:
        # -log sigmoid(z) = log(1 + e^-z) and -log(1 - sigmoid(z)) = log(1 + e^z):
        # logaddexp never overflows, where log(sigmoid(z)) is log(0) = -inf at z = -100.
        losses = np.where(positive, np.logaddexp(0.0, -predictions), np.logaddexp(0.0, predictions))
    else:
        if np.any((predictions < 0) | (predictions > 1)):
            raise ValueError("probabilities must lie in [0, 1]; pass from_logits=True for logits")
        clipped = np.clip(predictions, eps, 1.0 - eps)
        losses = np.where(positive, -np.log(clipped), -np.log1p(-clipped))
    return float(np.mean(losses))


def compute_relaimpr(auc_model: float, auc_base: float) -> float:
    """Relative improvement of an AUC (or GAUC) over a base model's, in percent, measured from random guessing.

    ``RelaImpr = ((AUC_model - 0.5) / (AUC_base - 0.5) - 1) * 100%`` (Zhou et al. 2018, Sec. 6.3); e.g. 5.35 for
    (0.8818, 0.8624). Both must be finite and ``auc_base`` must differ from 0.5.
    """
    if not (math.isfinite(auc_model) and math.isfinite(auc_base)):
        raise ValueError(f"RelaImpr needs finite AUCs; got auc_model={auc_model!r}, auc_base={auc_base!r}")
    if auc_base == 0.5:
        raise ValueError("RelaImpr is undefined for a base AUC of exactly 0.5 (random guessing)")
    return float(((auc_model - 0.5) / (auc_base - 0.5) - 1.0) * 100.0)


def evaluate_predictions(users: np.ndarray, labels: np.ndarray, logits: np.ndarray) -> Dict[str, float]:
    """Every evaluation metric of a split, from the model's logits, as Python floats.

    Returns "gauc", "auc", "logloss", "accuracy" (predicted positive when the logit is > 0), "samples" and
    "gauc_users" (users counted in GAUC). AUC and GAUC use the logits, not probabilities: in float32 the sigmoid
    rounds every logit above about 17 to 1.0, which would turn distinct confident predictions into ties.
    """
    arrays = _as_checked_arrays(users=users, labels=labels, logits=logits)
    positive = _check_labels(arrays["labels"])
    values = _check_finite(arrays["logits"], "logits")
    gauc = compute_gauc_details(arrays["users"], positive, values)
    return {
        "gauc": gauc.gauc,
        "auc": compute_auc(positive, values),
        "logloss": compute_logloss(positive, values, from_logits=True),
        "accuracy": float(np.mean((values > 0) == positive)),
        "samples": float(values.shape[0]),
        "gauc_users": float(gauc.users_counted),
    }


LOWER_IS_BETTER = frozenset({"logloss"})


def is_better(metric: str, value: Optional[float], best: Optional[float]) -> bool:
    """Whether ``value`` of ``metric`` beats ``best`` (None or not finite: anything finite does)."""
    if value is None or not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    return value < best if metric in LOWER_IS_BETTER else value > best
