"""Tests of din_jax.metrics: hand-computed values, brute force, error cases."""

import math
import warnings

import numpy as np
import pytest

from din_jax import metrics


def brute_force_auc(labels, scores, weights=None):
    """AUC by looping over every (positive, negative) pair, ties one half."""
    if weights is None:
        weights = np.ones(len(labels))
    wins = 0.0
    pairs = 0.0
    for i in range(len(labels)):
        if labels[i] != 1:
            continue
        for j in range(len(labels)):
            if labels[j] != 0:
                continue
            pair_weight = weights[i] * weights[j]
            pairs += pair_weight
            if scores[i] > scores[j]:
                wins += pair_weight
            elif scores[i] == scores[j]:
                wins += 0.5 * pair_weight
    return wins / pairs


def brute_force_gauc(users, labels, scores):
    """GAUC by a loop over users, each AUC by brute force."""
    numerator = 0.0
    denominator = 0
    for user in np.unique(users):
        mine = users == user
        user_labels = labels[mine]
        if user_labels.min() == user_labels.max():
            continue
        numerator += mine.sum() * brute_force_auc(user_labels, scores[mine])
        denominator += mine.sum()
    return numerator / denominator


# --- AUC ---------------------------------------------------------------------


def test_auc_hand_computed():
    # Positive 0.9 beats both negatives, positive 0.4 beats one: 3 of 4 pairs.
    assert metrics.compute_auc([1, 0, 1, 0], [0.9, 0.1, 0.4, 0.6]) == 0.75


def test_auc_tie_counts_half():
    # Pairs: (0.5 vs 0.5) tie 0.5, (0.5 vs 0.2) 1, (0.7 vs 0.5) 1, (0.7 vs 0.2) 1.
    assert metrics.compute_auc([1, 0, 1, 0], [0.5, 0.5, 0.7, 0.2]) == 0.875


def test_auc_constant_predictor_is_one_half():
    labels = np.array([1, 0, 0, 0, 1, 0, 0], dtype=np.int32)
    assert metrics.compute_auc(labels, np.zeros(7, dtype=np.float32)) == 0.5


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_auc_matches_brute_force_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=257)
    # One decimal: about 20 distinct values over 257 samples, so many ties.
    scores = np.round(rng.normal(size=257) + 0.5 * labels, 1).astype(np.float32)
    assert metrics.compute_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_weighted_auc_matches_brute_force():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, size=120)
    scores = np.round(rng.normal(size=120), 1)
    weights = rng.uniform(0.0, 3.0, size=120)
    expected = brute_force_auc(labels, scores, weights)
    assert metrics.compute_auc(labels, scores, weights) == pytest.approx(expected, abs=1e-12)


def test_integer_weights_equal_repeated_samples():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=50)
    scores = np.round(rng.normal(size=50), 1)
    counts = rng.integers(0, 4, size=50)
    repeated = metrics.compute_auc(np.repeat(labels, counts), np.repeat(scores, counts))
    assert metrics.compute_auc(labels, scores, counts) == pytest.approx(repeated, abs=1e-12)


def test_auc_invariant_to_monotone_transform():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, size=500)
    logits = rng.normal(size=500)
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    assert metrics.compute_auc(labels, logits) == metrics.compute_auc(labels, probabilities)


def test_auc_accepts_any_common_shape_and_bool_labels():
    labels = np.array([[True, False], [True, False]])
    scores = np.array([[0.9, 0.1], [0.4, 0.6]], dtype=np.float32)
    assert metrics.compute_auc(labels, scores) == 0.75


def test_auc_single_class_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(metrics.compute_auc([1, 1, 1], [0.1, 0.2, 0.3]))
        assert math.isnan(metrics.compute_auc([0, 0], [0.1, 0.2]))
        assert math.isnan(metrics.compute_auc([1, 0], [0.1, 0.2], weights=[1.0, 0.0]))


def test_auc_returns_python_float():
    assert type(metrics.compute_auc([1, 0], [0.3, 0.2])) is float


# --- GAUC --------------------------------------------------------------------


def three_user_example():
    """User 42: AUC 1/2 over 3 impressions; user 7: AUC 7/8 over 4; user 1000: all positive."""
    rows = [
        # (user, label, score), interleaved to exercise the sort.
        (42, 1, 0.8),
        (7, 1, 0.6),
        (1000, 1, 0.5),
        (42, 0, 0.3),
        (7, 1, 0.2),
        (7, 0, 0.2),
        (1000, 1, 0.4),
        (42, 0, 0.9),
        (7, 0, 0.1),
    ]
    users, labels, scores = (np.array(column) for column in zip(*rows))
    return users.astype(np.int32), labels.astype(np.int32), scores.astype(np.float32)


def test_gauc_hand_computed_three_users():
    users, labels, scores = three_user_example()
    # User 42: positive 0.8 beats 0.3, loses to 0.9: AUC 1/2, weight 3.
    # User 7: 0.6 beats 0.2 and 0.1 (2); 0.2 ties 0.2 (1/2), beats 0.1 (1):
    # AUC 3.5/4, weight 4. User 1000 has only positives: skipped.
    expected = (3 * 0.5 + 4 * 0.875) / (3 + 4)
    assert metrics.compute_gauc(users, labels, scores) == pytest.approx(expected, abs=1e-15)
    details = metrics.compute_gauc_details(users, labels, scores)
    assert details.gauc == pytest.approx(5.0 / 7.0, abs=1e-15)
    assert details.users_counted == 2
    assert details.users_skipped == 1
    assert details.impressions_counted == 7


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gauc_matches_per_user_brute_force(seed):
    rng = np.random.default_rng(seed)
    size = 600
    users = rng.integers(0, 60, size=size) * 13  # sparse, non-contiguous ids
    labels = rng.integers(0, 2, size=size)
    scores = np.round(rng.normal(size=size), 1)
    expected = brute_force_gauc(users, labels, scores)
    assert metrics.compute_gauc(users, labels, scores) == pytest.approx(expected, abs=1e-12)


def test_gauc_one_positive_one_negative_is_fraction_of_users_ranked_right():
    rng = np.random.default_rng(11)
    num_users = 1000
    positive_scores = np.round(rng.normal(0.3, 1.0, size=num_users), 1)
    negative_scores = np.round(rng.normal(0.0, 1.0, size=num_users), 1)
    users = np.concatenate([np.arange(num_users), np.arange(num_users)])
    labels = np.concatenate([np.ones(num_users), np.zeros(num_users)])
    scores = np.concatenate([positive_scores, negative_scores])
    order = rng.permutation(2 * num_users)
    expected = np.mean((positive_scores > negative_scores) + 0.5 * (positive_scores == negative_scores))
    assert np.any(positive_scores == negative_scores)  # the tie rule is exercised
    got = metrics.compute_gauc(users[order], labels[order], scores[order])
    assert got == pytest.approx(expected, abs=1e-12)


def test_gauc_with_no_two_class_user_is_nan():
    details = metrics.compute_gauc_details([1, 1, 2], [1, 1, 0], [0.2, 0.3, 0.4])
    assert math.isnan(details.gauc)
    assert (details.users_counted, details.users_skipped) == (0, 2)


def test_gauc_of_one_user_equals_auc():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, size=100)
    scores = np.round(rng.normal(size=100), 1)
    users = np.full(100, 3)
    assert metrics.compute_gauc(users, labels, scores) == pytest.approx(metrics.compute_auc(labels, scores))


# --- logloss -----------------------------------------------------------------


def test_logloss_probabilities_hand_computed():
    expected = -(math.log(0.8) + math.log(1 - 0.4)) / 2
    assert metrics.compute_logloss([1, 0], [0.8, 0.4]) == pytest.approx(expected, rel=1e-12)


def test_logloss_from_logits_matches_direct_formula():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=200)
    logits = rng.normal(scale=4.0, size=200)
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    expected = -np.mean(labels * np.log(probabilities) + (1 - labels) * np.log(1 - probabilities))
    got = metrics.compute_logloss(labels, logits, from_logits=True)
    assert got == pytest.approx(expected, rel=1e-10)


def test_logloss_from_logits_is_stable_at_extremes():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or divide-by-zero warnings
        right = metrics.compute_logloss([1, 0], np.array([100.0, -100.0], dtype=np.float32), from_logits=True)
        wrong = metrics.compute_logloss([0, 1], np.array([100.0, -100.0], dtype=np.float32), from_logits=True)
    assert right == pytest.approx(math.exp(-100.0), rel=1e-6)
    assert wrong == pytest.approx(100.0, rel=1e-12)


def test_logloss_clips_probabilities():
    loss = metrics.compute_logloss([0, 1], [1.0, 0.0], eps=1e-7)
    assert loss == pytest.approx(-math.log(1e-7), rel=1e-6)


def test_logloss_rejects_probabilities_outside_unit_interval():
    with pytest.raises(ValueError, match="from_logits"):
        metrics.compute_logloss([1, 0], [1.5, 0.2])


# --- RelaImpr ----------------------------------------------------------------


def test_relaimpr_on_paper_numbers():
    # DIN paper Table 3 (Amazon): BaseModel 0.8624, DIN 0.8818 (+5.35%), DIN with Dice 0.8871 (+6.82%).
    assert metrics.compute_relaimpr(0.8818, 0.8624) == pytest.approx((0.3818 / 0.3624 - 1) * 100, rel=1e-12)
    assert round(metrics.compute_relaimpr(0.8818, 0.8624), 2) == 5.35
    assert round(metrics.compute_relaimpr(0.8871, 0.8624), 2) == 6.82
    assert metrics.compute_relaimpr(0.8624, 0.8624) == 0.0


def test_relaimpr_rejects_base_of_one_half_and_nan():
    with pytest.raises(ValueError, match="0.5"):
        metrics.compute_relaimpr(0.7, 0.5)
    with pytest.raises(ValueError, match="finite"):
        metrics.compute_relaimpr(float("nan"), 0.7)


# --- evaluate_predictions ----------------------------------------------------


def test_evaluate_predictions():
    users, labels, scores = three_user_example()
    logits = (scores - 0.5) * 10.0  # a monotone map, logit 0 at score 0.5
    result = metrics.evaluate_predictions(users, labels, logits)
    assert set(result) == {"gauc", "auc", "logloss", "accuracy", "samples", "gauc_users"}
    assert all(type(value) is float for value in result.values())
    assert result["gauc"] == pytest.approx(5.0 / 7.0)
    assert result["auc"] == pytest.approx(brute_force_auc(labels, scores))
    assert result["logloss"] == pytest.approx(metrics.compute_logloss(labels, logits, from_logits=True))
    # Predicted positive when logit > 0: the score-0.5 row (logit 0) counts negative.
    predicted = scores > 0.5
    assert result["accuracy"] == pytest.approx(np.mean(predicted == (labels == 1)))
    assert result["samples"] == 9.0
    assert result["gauc_users"] == 2.0


def test_evaluate_predictions_accuracy_at_logit_zero():
    result = metrics.evaluate_predictions([0, 0, 1, 1], [1, 0, 1, 0], [0.0, 0.0, 2.0, -2.0])
    assert result["accuracy"] == 0.75  # logit 0 is predicted negative


# --- input validation --------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: metrics.compute_auc([1, 0, 1], [0.1, 0.2]),
        lambda: metrics.compute_auc([1, 0], [0.1, 0.2], weights=[1.0]),
        lambda: metrics.compute_gauc([1, 2], [1, 0, 1], [0.1, 0.2, 0.3]),
        lambda: metrics.compute_logloss([1, 0], [[0.1, 0.2]]),
        lambda: metrics.evaluate_predictions([1, 2, 3], [1, 0], [0.1, 0.2]),
    ],
)
def test_mismatched_shapes_raise(call):
    with pytest.raises(ValueError, match="same shape"):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: metrics.compute_auc([], []),
        lambda: metrics.compute_gauc([], [], []),
        lambda: metrics.compute_logloss([], []),
        lambda: metrics.evaluate_predictions([], [], []),
    ],
)
def test_empty_input_raises(call):
    with pytest.raises(ValueError, match="empty"):
        call()


@pytest.mark.parametrize("bad_labels", [[1, 2, 0], [1, -1, 0], [1.0, 0.5, 0.0], [1.0, float("nan"), 0.0]])
def test_labels_outside_zero_one_raise(bad_labels):
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        metrics.compute_auc(bad_labels, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        metrics.compute_gauc([1, 1, 1], bad_labels, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        metrics.compute_logloss(bad_labels, [0.1, 0.2, 0.3])


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_raise(bad_value):
    scores = [0.1, bad_value, 0.3]
    with pytest.raises(ValueError, match="finite"):
        metrics.compute_auc([1, 0, 1], scores)
    with pytest.raises(ValueError, match="finite"):
        metrics.compute_gauc([1, 1, 1], [1, 0, 1], scores)
    with pytest.raises(ValueError, match="finite"):
        metrics.compute_logloss([1, 0, 1], scores, from_logits=True)
    with pytest.raises(ValueError, match="finite"):
        metrics.evaluate_predictions([1, 1, 1], [1, 0, 1], scores)


def test_bad_weights_and_users_raise():
    with pytest.raises(ValueError, match="non-negative"):
        metrics.compute_auc([1, 0], [0.1, 0.2], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="finite"):
        metrics.compute_auc([1, 0], [0.1, 0.2], weights=[1.0, float("nan")])
    with pytest.raises(ValueError, match="users"):
        metrics.compute_gauc([1.0, float("nan")], [1, 0], [0.1, 0.2])


def test_string_labels_raise():
    with pytest.raises(ValueError, match="numeric"):
        metrics.compute_auc(["1", "0"], [0.1, 0.2])


def test_is_better_compares_by_the_metrics_direction():
    is_better = metrics.is_better
    assert is_better("gauc", 0.7, 0.6) and not is_better("gauc", 0.6, 0.7) and is_better("logloss", 0.4, 0.5)
    assert is_better("gauc", 0.5, None) and is_better("gauc", 0.5, float("nan"))
    assert not is_better("gauc", float("nan"), None) and not is_better("gauc", None, 0.5)
