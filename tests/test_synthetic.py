"""Tests of din_jax.data.synthetic: batch format, label rule, determinism, the dataset."""

import numpy as np
import pytest

from din_jax.data import synthetic
from din_jax.metrics import compute_auc

BATCH_KEYS = {"user", "item", "category", "hist_item", "hist_category", "hist_len", "label"}


def make_batch(seed=0, batch_size=4000, max_seq_len=30, **kwargs):
    options = {"num_users": 50, "num_items": 200, "num_categories": 12}
    options.update(kwargs)
    return synthetic.make_synthetic_batch(np.random.default_rng(seed), batch_size, max_seq_len, **options)


def distinct_history_categories(batch):
    """Number of distinct categories among each row's valid history positions."""
    hist_category = batch["hist_category"].astype(np.int64)
    valid = np.arange(hist_category.shape[1])[None, :] < batch["hist_len"][:, None]
    ordered = np.sort(np.where(valid, hist_category, -1), axis=1)
    changes = (ordered[:, 1:] != ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    return changes.sum(axis=1) + (ordered[:, 0] >= 0)


def assert_batch_format(batch, batch_size, max_seq_len):
    assert set(batch) == BATCH_KEYS
    for key in BATCH_KEYS - {"label"}:
        assert batch[key].dtype == np.int32, key
    assert batch["label"].dtype == np.float32
    for key in ["user", "item", "category", "hist_len", "label"]:
        assert batch[key].shape == (batch_size,), key
    assert batch["hist_item"].shape == (batch_size, max_seq_len)
    assert batch["hist_category"].shape == (batch_size, max_seq_len)


# --- batches -----------------------------------------------------------------


def test_batch_format_and_masks():
    batch = make_batch(batch_size=3000, max_seq_len=30, min_len=5)
    assert_batch_format(batch, 3000, 30)
    lengths = batch["hist_len"]
    assert lengths.min() >= 5 and lengths.max() <= 30
    assert lengths.min() == 5 and lengths.max() == 30  # both ends are reachable
    padded = np.arange(30)[None, :] >= lengths[:, None]
    assert np.all(batch["hist_item"][padded] == 0)
    assert np.all(batch["hist_category"][padded] == 0)
    assert set(np.unique(batch["label"])) == {0.0, 1.0}


def test_batch_ids_are_consistent_with_the_category_map():
    item_category = synthetic.make_item_categories(200, 12, seed=5)
    batch = make_batch(item_category=item_category)
    valid = np.arange(30)[None, :] < batch["hist_len"][:, None]
    np.testing.assert_array_equal(batch["hist_category"][valid], item_category[batch["hist_item"][valid]])
    np.testing.assert_array_equal(batch["category"], item_category[batch["item"]])
    assert batch["user"].min() >= 0 and batch["user"].max() < 50
    assert batch["item"].min() >= 0 and batch["item"].max() < 200


def test_label_rule_holds_on_every_row():
    batch = make_batch()
    np.testing.assert_array_equal(synthetic.compute_rule_labels(batch), batch["label"] == 1.0)


@pytest.mark.parametrize("batch_size", [4000, 4001, 1])
def test_labels_are_balanced(batch_size):
    batch = make_batch(batch_size=batch_size)
    positives = int(batch["label"].sum())
    assert positives in (batch_size // 2, batch_size // 2 + batch_size % 2)


def test_rule_separates_labels_perfectly():
    batch = make_batch(batch_size=2000)
    rule_score = synthetic.compute_rule_labels(batch).astype(np.float32)
    assert compute_auc(batch["label"], rule_score) == 1.0


def test_history_alone_carries_no_label_signal():
    # Long histories over few categories: a generator that drew negatives'
    # histories differently would make "number of distinct categories" an
    # almost perfect predictor without looking at the candidate.
    batch = make_batch(batch_size=20000, max_seq_len=100, num_categories=8)
    labels = batch["label"]
    assert abs(compute_auc(labels, distinct_history_categories(batch)) - 0.5) < 0.03
    assert abs(compute_auc(labels, batch["hist_len"]) - 0.5) < 0.03


def test_batches_are_deterministic_per_seed():
    first, again, other = make_batch(seed=3), make_batch(seed=3), make_batch(seed=4)
    for key in BATCH_KEYS:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["hist_item"], other["hist_item"])


def test_full_length_spec_and_empty_batch():
    batch = make_batch(batch_size=64, max_seq_len=16, length_spec="full:16")
    assert np.all(batch["hist_len"] == 16)
    np.testing.assert_array_equal(synthetic.compute_rule_labels(batch), batch["label"] == 1.0)
    empty = make_batch(batch_size=0, max_seq_len=16)
    assert_batch_format(empty, 0, 16)


def test_batch_argument_errors():
    with pytest.raises(ValueError, match="num_categories >= 2"):
        make_batch(num_categories=1)
    with pytest.raises(ValueError, match="history item"):
        make_batch(length_spec="uniform:0:10")
    with pytest.raises(ValueError, match="min_len"):
        make_batch(min_len=0)
    with pytest.raises(ValueError, match="every category"):
        make_batch(item_category=np.zeros(200, dtype=np.int32))


# --- lengths and categories --------------------------------------------------


def test_sample_lengths_uniform_and_full():
    rng = np.random.default_rng(0)
    uniform = synthetic.sample_lengths(rng, "uniform:3:7", 5000, max_seq_len=10)
    assert uniform.dtype == np.int32 and uniform.shape == (5000,)
    assert set(np.unique(uniform)) == {3, 4, 5, 6, 7}
    full = synthetic.sample_lengths(rng, "full:10", 100, max_seq_len=10)
    assert np.all(full == 10)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("normal:3:4", "choose from"),
        ("electronics-ish", "choose from"),
        ("uniform:5", "uniform:LO:HI"),
        ("uniform:a:9", "not an integer"),
        ("uniform:8:4", "above"),
        ("full:200", "max_seq_len"),
        ("full:-1", "max_seq_len"),
        ("full", "full:N"),
    ],
)
def test_sample_lengths_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        synthetic.sample_lengths(np.random.default_rng(0), spec, 10, max_seq_len=100)


def test_unknown_spec_lists_valid_forms():
    with pytest.raises(ValueError) as error:
        synthetic.parse_length_spec("zipf:2", 100)
    assert "uniform:LO:HI" in str(error.value) and "full:N" in str(error.value)


def test_item_categories_balanced_and_deterministic():
    item_category = synthetic.make_item_categories(103, 10, seed=1)
    assert item_category.dtype == np.int32 and item_category.shape == (103,)
    counts = np.bincount(item_category, minlength=10)
    assert counts.min() == 10 and counts.max() == 11
    np.testing.assert_array_equal(item_category, synthetic.make_item_categories(103, 10, seed=1))
    assert not np.array_equal(item_category, synthetic.make_item_categories(103, 10, seed=2))
    with pytest.raises(ValueError):
        synthetic.make_item_categories(5, 10, seed=0)


# --- the dataset -------------------------------------------------------------


def make_dataset(**kwargs):
    options = {
        "num_train": 700,
        "num_validation": 150,
        "num_test": 200,
        "max_seq_len": 20,
        "num_users": 40,
        "num_items": 120,
        "num_categories": 9,
        "seed": 2,
    }
    options.update(kwargs)
    return synthetic.make_synthetic_dataset(**options)


def test_dataset_interface():
    dataset = make_dataset()
    assert dataset.split_names() == ["train", "validation", "test"]
    assert [dataset.num_samples(name) for name in dataset.split_names()] == [700, 150, 200]
    assert (dataset.num_users, dataset.num_items, dataset.num_categories) == (40, 120, 9)
    assert dataset.item_category.dtype == np.int32 and dataset.item_category.shape == (120,)
    assert dataset.meta["name"] == "synthetic"
    assert dataset.meta["splits"] == {"train": 700, "validation": 150, "test": 200}
    samples = dataset.samples("test")
    assert samples.dtype == np.int32 and samples.shape == (200, 5)
    assert set(np.unique(samples[:, 4])) == {0, 1}
    # Each row is its own sequence and its history is all of it.
    np.testing.assert_array_equal(samples[:, 1], 850 + np.arange(200))
    lengths = np.diff(dataset.offsets)[samples[:, 1]]
    np.testing.assert_array_equal(samples[:, 2], lengths)
    assert not samples.flags.writeable
    with pytest.raises(ValueError, match="choose from"):
        dataset.num_samples("dev")


def test_dataset_gather_is_a_valid_batch_following_the_rule():
    dataset = make_dataset()
    for split in dataset.split_names():
        indices = np.arange(dataset.num_samples(split))[::-1]
        batch = dataset.gather(split, indices, 20)
        assert_batch_format(batch, indices.shape[0], 20)
        np.testing.assert_array_equal(synthetic.compute_rule_labels(batch), batch["label"] == 1.0)
        padded = np.arange(20)[None, :] >= batch["hist_len"][:, None]
        assert np.all(batch["hist_item"][padded] == 0) and np.all(batch["hist_category"][padded] == 0)
        np.testing.assert_array_equal(batch["label"], dataset.samples(split)[indices, 4])


def test_dataset_labels_balanced_per_split():
    dataset = make_dataset(num_train=1001, num_validation=0, num_test=10)
    assert abs(int(dataset.samples("train")[:, 4].sum()) - 500) <= 1
    assert dataset.num_samples("validation") == 0
    assert dataset.split_names() == ["train", "test"]  # an empty split is left out
    assert_batch_format(dataset.gather("validation", np.zeros(0, dtype=np.int64), 20), 0, 20)


def test_dataset_gather_cuts_histories_to_their_last_items():
    dataset = make_dataset()
    rows = dataset.samples("train")[:50]
    batch = dataset.gather("train", np.arange(50), 4)
    wide = dataset.gather("train", np.arange(50), 25)
    for row, (_, sequence, position, _, _) in enumerate(rows):
        history = dataset.sequences[dataset.offsets[sequence] :][:position]
        kept = history[-4:]
        assert batch["hist_len"][row] == kept.shape[0]
        np.testing.assert_array_equal(batch["hist_item"][row, : kept.shape[0]], kept)
        np.testing.assert_array_equal(wide["hist_item"][row, :position], history)
        assert np.all(wide["hist_item"][row, position:] == 0)


def test_dataset_gather_from_given_samples():
    dataset = make_dataset()
    samples = dataset.samples("train").copy()
    samples[:, 4] = 1 - samples[:, 4]  # e.g. a caller's own labels
    batch = dataset.gather("train", np.array([3, 1]), 20, samples=samples)
    np.testing.assert_array_equal(batch["label"], samples[[3, 1], 4].astype(np.float32))


def test_dataset_history_lengths():
    dataset = make_dataset()
    np.testing.assert_array_equal(dataset.history_lengths("train", 20), dataset.samples("train")[:, 2])
    cut = dataset.history_lengths("train", 6)
    assert cut.dtype == np.int32 and cut.max() == 6


def test_dataset_frequencies():
    dataset = make_dataset()
    train = dataset.samples("train")
    items, categories, users = (dataset.item_frequencies(), dataset.category_frequencies(), dataset.user_frequencies())
    assert items.dtype == categories.dtype == users.dtype == np.int64
    assert items.shape == (120,) and categories.shape == (9,) and users.shape == (40,)
    features_per_row = 1 + train[:, 2].astype(np.int64)  # candidate + history
    assert items.sum() == categories.sum() == features_per_row.sum()
    assert users.sum() == 700
    expected_items = np.bincount(train[:, 3], minlength=120)
    for _, sequence, position, _, _ in train:
        start = dataset.offsets[sequence]
        expected_items += np.bincount(dataset.sequences[start : start + position], minlength=120)
    np.testing.assert_array_equal(items, expected_items)
    np.testing.assert_array_equal(categories, np.bincount(dataset.item_category, weights=items, minlength=9))


def test_dataset_is_deterministic_per_seed_and_splits_are_independent():
    first, again = make_dataset(), make_dataset()
    np.testing.assert_array_equal(first.sequences, again.sequences)
    for split in first.split_names():
        np.testing.assert_array_equal(first.samples(split), again.samples(split))
    other_seed = make_dataset(seed=3)
    assert not np.array_equal(first.samples("train"), other_seed.samples("train"))
    # Resizing the test split leaves the training rows and histories as they were.
    resized = make_dataset(num_test=10)
    np.testing.assert_array_equal(first.samples("train"), resized.samples("train"))
    train_events = first.offsets[700]
    np.testing.assert_array_equal(first.sequences[:train_events], resized.sequences[:train_events])


def test_dataset_generation_in_chunks_matches_layout(monkeypatch):
    # Several generation chunks must pack histories and sequence ids seamlessly.
    monkeypatch.setattr(synthetic, "_GENERATION_CHUNK_ROWS", 64)
    dataset = make_dataset(num_train=300)
    batch = dataset.gather("train", np.arange(300), 20)
    np.testing.assert_array_equal(dataset.samples("train")[:, 1], np.arange(300))
    np.testing.assert_array_equal(synthetic.compute_rule_labels(batch), batch["label"] == 1.0)


def test_resampled_negatives_keep_the_rule():
    dataset = make_dataset()
    stored = dataset.samples("train").copy()
    resampled = dataset.resample_negatives(np.random.default_rng(9))
    np.testing.assert_array_equal(dataset.samples("train"), stored)  # stored rows untouched
    assert resampled.dtype == np.int32 and resampled.shape == stored.shape
    positive = stored[:, 4] == 1
    np.testing.assert_array_equal(resampled[positive], stored[positive])
    np.testing.assert_array_equal(resampled[:, [0, 1, 2, 4]], stored[:, [0, 1, 2, 4]])
    assert np.any(resampled[~positive, 3] != stored[~positive, 3])  # new items were drawn
    np.testing.assert_array_equal(dataset.item_category[resampled[:, 3]], dataset.item_category[stored[:, 3]])
    batch = dataset.gather("train", np.arange(700), 20, samples=resampled)
    np.testing.assert_array_equal(synthetic.compute_rule_labels(batch), batch["label"] == 1.0)
