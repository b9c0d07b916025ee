"""The DIN protocol on a hand-written log whose every sample is known."""

import numpy as np
import pytest
from dataprep_testlib import build, fixture

from data_prep.report import DataPrepError

# three_users.csv after cleaning: dave (2 reviews) dropped, one exact duplicate
# of bob's i6 review dropped. Sorted ids: alice 0, bob 1, carol 2; i1..i6 ->
# 0..5; c1..c3 -> 0..2. Time order (ties keep file order: alice's i1 before i4):
ALICE = [2, 0, 3, 1, 4]  # i3 i1 i4 i2 i5
BOB = [0, 5, 1]  # i1 i6 i2
CAROL = [1, 4, 2, 5]  # i2 i5 i3 i6
ITEMS_OF = {0: set(ALICE), 1: set(BOB), 2: set(CAROL)}


def _build(tmp_path, **extra):
    return build(tmp_path, format="interactions", input=fixture("interactions", "three_users.csv"), seed=7, **extra)


def _positives(rows):
    return [tuple(row) for row in rows[rows[:, 4] == 1].tolist()]


def test_sequences_ids_and_drops(tmp_path):
    dataset, meta = _build(tmp_path)
    assert (meta["users"], meta["items"], meta["categories"]) == (3, 6, 3)
    assert dataset.id_map("user") == ["alice", "bob", "carol"]
    assert dataset.id_map("item") == ["i1", "i2", "i3", "i4", "i5", "i6"]
    assert dataset.id_map("category") == ["c1", "c2", "c3"]
    assert dataset.item_category.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.asarray(dataset.sequences).tolist() == ALICE + BOB + CAROL
    assert dataset.offsets.tolist() == [0, 5, 8, 12]
    assert meta["dropped"]["short_users"] == 1
    assert meta["dropped"]["short_user_reviews"] == 2
    assert meta["dropped"]["duplicate_reviews"] == 1
    assert meta["protocol"]["name"] == "validation"


def test_exact_train_validation_test_samples(tmp_path):
    dataset, meta = _build(tmp_path)
    # (user, sequence, position, target, label): history = first `position` items.
    assert _positives(dataset.samples("train")) == [(0, 0, 1, 0, 1), (0, 0, 2, 3, 1), (2, 2, 1, 4, 1)]
    assert _positives(dataset.samples("validation")) == [(0, 0, 3, 1, 1), (1, 1, 1, 5, 1), (2, 2, 2, 2, 1)]
    assert _positives(dataset.samples("test")) == [(0, 0, 4, 4, 1), (1, 1, 2, 1, 1), (2, 2, 3, 5, 1)]
    assert meta["splits"] == {"train": 6, "validation": 6, "test": 6}
    for split in ("train", "validation", "test"):
        rows = np.asarray(dataset.samples(split))
        # Each positive is followed by its negative: same user, sequence, position.
        assert (rows[0::2, 4] == 1).all() and (rows[1::2, 4] == 0).all()
        assert (rows[0::2, :3] == rows[1::2, :3]).all()
        for user, item in rows[1::2][:, [0, 3]].tolist():
            assert item not in ITEMS_OF[user]
    # Alice reviewed every item but i6: her negatives can only be i6.
    train = np.asarray(dataset.samples("train"))
    assert train[(train[:, 0] == 0) & (train[:, 4] == 0), 3].tolist() == [5, 5]


def test_histories_through_gather(tmp_path):
    dataset, _ = _build(tmp_path)
    batch = dataset.gather("test", np.array([0, 2, 4]), max_seq_len=6)
    assert batch["user"].tolist() == [0, 1, 2]
    assert batch["item"].tolist() == [4, 1, 5]
    assert batch["category"].tolist() == [2, 0, 2]
    assert batch["hist_len"].tolist() == [4, 2, 3]
    assert batch["hist_item"].tolist() == [[2, 0, 3, 1, 0, 0], [0, 5, 0, 0, 0, 0], [1, 4, 2, 0, 0, 0]]
    assert batch["hist_category"].tolist() == [[1, 0, 1, 0, 0, 0], [0, 2, 0, 0, 0, 0], [0, 2, 1, 0, 0, 0]]
    assert batch["label"].tolist() == [1.0, 1.0, 1.0]
    assert batch["label"].dtype == np.float32
    # Cut to the last T items of the prefix, left-aligned.
    short = dataset.gather("test", np.array([0, 1]), max_seq_len=2)
    assert short["hist_item"].tolist() == [[3, 1], [3, 1]]
    assert short["hist_len"].tolist() == [2, 2]
    assert dataset.history_lengths("test", 2).tolist() == [2, 2, 2, 2, 2, 2]
    assert dataset.history_lengths("train", 100).tolist() == [1, 1, 2, 2, 1, 1]


def test_authors_split_has_no_validation(tmp_path):
    dataset, meta = _build(tmp_path, protocol="authors")
    assert _positives(dataset.samples("train")) == [
        (0, 0, 1, 0, 1),
        (0, 0, 2, 3, 1),
        (0, 0, 3, 1, 1),
        (1, 1, 1, 5, 1),
        (2, 2, 1, 4, 1),
        (2, 2, 2, 2, 1),
    ]
    assert _positives(dataset.samples("test")) == [(0, 0, 4, 4, 1), (1, 1, 2, 1, 1), (2, 2, 3, 5, 1)]
    assert meta["splits"]["validation"] == 0
    assert dataset.split_names() == ["train", "test"]
    assert meta["protocol"]["name"] == "authors"
    assert "none" in meta["protocol"]["validation_targets"]


def test_negatives_are_seeded(tmp_path):
    first, _ = _build(tmp_path / "a")
    again, _ = _build(tmp_path / "b")
    for split in ("train", "validation", "test"):
        assert np.array_equal(first.samples(split), again.samples(split))
    seeds = set()
    for seed in range(8):
        dataset, _ = build(
            tmp_path / str(seed), format="interactions", input=fixture("interactions", "three_users.csv"), seed=seed
        )
        seeds.add(tuple(np.asarray(dataset.samples("test"))[:, 3].tolist()))
    assert len(seeds) > 1


def test_training_frequencies(tmp_path):
    dataset, _ = _build(tmp_path)
    train = np.asarray(dataset.samples("train"))
    expected_items = np.zeros(6, dtype=np.int64)
    for _, sequence, position, item, _ in train.tolist():
        history = np.asarray(dataset.sequences)[dataset.offsets[sequence] : dataset.offsets[sequence] + position]
        np.add.at(expected_items, history, 1)
        expected_items[item] += 1
    assert dataset.item_frequencies().tolist() == expected_items.tolist()
    assert (
        dataset.category_frequencies().tolist()
        == np.bincount(dataset.item_category[np.repeat(np.arange(6), expected_items)], minlength=3).tolist()
    )
    assert dataset.user_frequencies().tolist() == [4, 0, 2]


@pytest.mark.parametrize("bad", ["sideways", ""])
def test_unknown_protocol_is_rejected(tmp_path, bad):
    with pytest.raises(DataPrepError, match="unknown protocol"):
        _build(tmp_path, protocol=bad)
