"""The `electronics` history-length distribution: derived from the embedded sample, as skewed as the real data."""

import csv
import json
import os

import numpy as np
import pytest

from din_jax.data.synthetic import (
    ELECTRONICS_HISTORY_LENGTH_COUNTS,
    ELECTRONICS_SAMPLE_FILE,
    make_synthetic_dataset,
    parse_length_spec,
    sample_lengths,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sample_lengths():
    path = os.path.join(ROOT, ELECTRONICS_SAMPLE_FILE)
    if not os.path.isfile(path):
        pytest.skip("the embedded Electronics sample is not in this checkout")
    with open(path, newline="") as handle:
        return np.array([len(json.loads(row[1])) for row in csv.reader(handle)])


def test_the_table_is_the_histogram_of_the_embedded_sample():
    lengths = _sample_lengths()
    expected = np.bincount(np.minimum(lengths, 100), minlength=101)[1:]
    np.testing.assert_array_equal(np.asarray(ELECTRONICS_HISTORY_LENGTH_COUNTS), expected)
    # The figures quoted for the full training set.
    assert np.median(lengths) == 4
    assert abs(lengths.mean() - 8.8) < 0.1
    assert np.percentile(lengths, 90) == 18
    assert abs(np.percentile(lengths, 99) - 85) <= 1


def test_samples_follow_the_table():
    distribution = parse_length_spec("electronics", 100)
    assert (distribution.low, distribution.high) == (1, 100)
    drawn = sample_lengths(np.random.default_rng(0), distribution, 200000, 100)
    assert drawn.min() >= 1 and drawn.max() <= 100
    assert np.median(drawn) == 4
    assert abs(drawn.mean() - 8.33) < 0.1  # the mean after the cut at 100
    assert np.percentile(drawn, 90) == 18


def test_a_shorter_max_seq_len_folds_the_tail():
    distribution = parse_length_spec("electronics", 20)
    assert distribution.high == 20
    counts = np.asarray(ELECTRONICS_HISTORY_LENGTH_COUNTS, np.float64)
    np.testing.assert_allclose(distribution.probabilities[-1], counts[19:].sum() / counts.sum())
    with pytest.raises(ValueError, match="write it as electronics"):
        parse_length_spec("electronics:5", 100)


def test_a_synthetic_dataset_with_electronics_lengths():
    source = make_synthetic_dataset(
        3000, 10, 10, max_seq_len=100, num_users=50, num_items=80, num_categories=8, length_spec="electronics"
    )
    lengths = source.history_lengths("train", 100)
    assert 3 <= np.median(lengths) <= 5
