"""The dataset directory: gather, negatives resampling, atomic writes, and load errors."""

import json
import os

import numpy as np
import pytest
from dataprep_testlib import build, fixture, write_random_dataset

from data_prep.report import DataPrepError
from din_jax.data import dataset as dataset_lib
from din_jax.data.dataset import DatasetError, load_dataset
from din_jax.data.writer import write_dataset


def _slow_gather(rows, sequences, offsets, item_category, max_seq_len):
    """One sample at a time, straight from the format's definition."""
    out = {key: [] for key in ("user", "item", "category", "hist_item", "hist_category", "hist_len", "label")}
    for user, sequence, position, item, label in rows.tolist():
        prefix = sequences[offsets[sequence] : offsets[sequence] + position].tolist()
        history = prefix[-max_seq_len:]
        padded = history + [0] * (max_seq_len - len(history))
        out["user"].append(user)
        out["item"].append(item)
        out["category"].append(int(item_category[item]))
        out["hist_item"].append(padded)
        out["hist_category"].append([int(item_category[i]) for i in history] + [0] * (max_seq_len - len(history)))
        out["hist_len"].append(len(history))
        out["label"].append(float(label))
    return out


@pytest.mark.parametrize("max_seq_len", [1, 3, 5, 12, 20])
def test_gather_matches_reference_loop(tmp_path, max_seq_len):
    path = str(tmp_path / "ds")
    sequences, offsets, item_category, splits = write_random_dataset(path, seed=max_seq_len)
    dataset = load_dataset(path)
    for split in ("train", "validation", "test"):
        indices = np.random.default_rng(1).integers(0, len(splits[split]), size=17)
        batch = dataset.gather(split, indices, max_seq_len)
        expected = _slow_gather(splits[split][indices], sequences, offsets, item_category, max_seq_len)
        for key, values in expected.items():
            assert batch[key].tolist() == values, key
        assert batch["hist_item"].shape == (17, max_seq_len)
        for key in ("user", "item", "category", "hist_item", "hist_category", "hist_len"):
            assert batch[key].dtype == np.int32, key
        assert batch["label"].dtype == np.float32


def test_gather_uses_given_samples_and_empty_batches(tmp_path):
    path = str(tmp_path / "ds")
    write_random_dataset(path)
    dataset = load_dataset(path)
    custom = np.array(dataset.samples("train"))
    custom[:, 3] = 0
    assert dataset.gather("train", np.arange(5), 4, samples=custom)["item"].tolist() == [0] * 5
    empty = dataset.gather("train", np.zeros(0, dtype=np.int64), 4)
    assert empty["hist_item"].shape == (0, 4) and empty["label"].shape == (0,)


def test_unknown_split_lists_valid_names(tmp_path):
    path = str(tmp_path / "ds")
    write_random_dataset(path)
    with pytest.raises(DatasetError, match=r"unknown split 'dev'.*'test'.*'train'.*'validation'"):
        load_dataset(path).samples("dev")


def test_resample_negatives_never_hits_user_items(tmp_path):
    dataset, _ = build(tmp_path, format="interactions", input=fixture("interactions", "three_users.csv"))
    original = np.asarray(dataset.samples("train"))
    sequences = np.asarray(dataset.sequences)
    for seed in range(20):
        resampled = dataset.resample_negatives(np.random.default_rng(seed))
        assert resampled.dtype == np.int32 and resampled.shape == original.shape
        positives = resampled[:, 4] == 1
        assert np.array_equal(resampled[positives], original[positives])
        assert np.array_equal(resampled[:, [0, 1, 2, 4]], original[:, [0, 1, 2, 4]])
        for user, item in resampled[~positives][:, [0, 3]].tolist():
            own = sequences[dataset.offsets[user] : dataset.offsets[user + 1]]
            assert item not in own
    first = dataset.resample_negatives(np.random.default_rng(3))
    assert np.array_equal(first, dataset.resample_negatives(np.random.default_rng(3)))
    # The stored samples are untouched (a copy comes back).
    assert np.array_equal(np.asarray(dataset.samples("train")), original)


def test_resample_negatives_on_a_larger_random_dataset(tmp_path):
    path = str(tmp_path / "ds")
    sequences, offsets, _, splits = write_random_dataset(path, users=50, items=40, max_len=30, seed=5)
    dataset = load_dataset(path)
    draws = [dataset.resample_negatives(np.random.default_rng(seed)) for seed in (0, 1)]
    assert not np.array_equal(draws[0], draws[1])
    for rows in draws:
        for user, item, label in rows[:, [0, 3, 4]].tolist():
            if label == 0:
                assert item not in sequences[offsets[user] : offsets[user + 1]]


def test_resample_refused_for_fixed_negatives(tmp_path):
    path = str(tmp_path / "ds")
    write_random_dataset(path, resampleable=False)
    with pytest.raises(DatasetError, match="cannot be resampled"):
        load_dataset(path).resample_negatives(np.random.default_rng(0))


def test_written_files_and_meta(tmp_path):
    path = str(tmp_path / "ds")
    write_random_dataset(path)
    names = sorted(os.listdir(path))
    assert names == sorted(
        [
            "meta.json",
            "sequences.npy",
            "sequence_offsets.npy",
            "item_category.npy",
            "train.npy",
            "validation.npy",
            "test.npy",
            "train_item_freq.npy",
            "train_category_freq.npy",
            "train_user_freq.npy",
            "user_ids.txt",
            "item_ids.txt",
            "category_ids.txt",
        ]
    )
    meta = json.load(open(os.path.join(path, "meta.json")))
    assert meta["format"] == "din_jax.dataset" and meta["version"] == 1
    assert (meta["users"], meta["items"], meta["categories"]) == (7, 30, 4)
    assert meta["splits"] == {"train": 40, "validation": 9, "test": 11}
    assert np.load(os.path.join(path, "sequence_offsets.npy")).dtype == np.int64
    assert np.load(os.path.join(path, "train_item_freq.npy")).dtype == np.int64
    dataset = load_dataset(path)
    assert isinstance(dataset.samples("train"), np.memmap)
    assert dataset.item_frequencies().sum() == (np.minimum(np.asarray(dataset.samples("train"))[:, 2], 5).sum() + 40)


# ----------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------


def _failing_save(after: int):
    real_save = np.save
    calls = {"n": 0}

    def save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError("disk full (simulated)")
        return real_save(*args, **kwargs)

    return save


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_lib.np, "save", _failing_save(after=3))
    with pytest.raises(OSError, match="simulated"):
        write_random_dataset(str(tmp_path / "ds"))
    assert os.listdir(str(tmp_path)) == []


def test_failed_build_leaves_no_output(tmp_path):
    with pytest.raises(DataPrepError, match="no column 'no_such_column'"):
        build(
            tmp_path, format="interactions", input=fixture("interactions", "three_users.csv"), user_col="no_such_column"
        )
    assert os.listdir(str(tmp_path)) == []


def test_overwrite_keeps_old_until_new_is_complete(tmp_path, monkeypatch):
    path = str(tmp_path / "ds")
    write_random_dataset(path, seed=1)
    before = np.array(load_dataset(path).samples("train"))
    with pytest.raises(DatasetError, match="already exists"):
        write_random_dataset(path, seed=2)
    monkeypatch.setattr(dataset_lib.np, "save", _failing_save(after=5))
    with pytest.raises(OSError):
        _overwrite_random(path, seed=2)
    monkeypatch.undo()
    assert np.array_equal(np.asarray(load_dataset(path).samples("train")), before)
    assert os.listdir(str(tmp_path)) == ["ds"]
    _overwrite_random(path, seed=2)
    assert not np.array_equal(np.asarray(load_dataset(path).samples("train")), before)
    assert os.listdir(str(tmp_path)) == ["ds"]


def _overwrite_random(path, seed):
    other = os.path.join(os.path.dirname(path), "scratch")
    sequences, offsets, item_category, splits = write_random_dataset(other, seed=seed)
    source = load_dataset(other)
    write_dataset(
        path,
        sequences=sequences,
        offsets=offsets,
        item_category=item_category,
        splits=splits,
        meta={"name": "x", "negatives": {"resampleable": True}},
        id_maps={kind: source.id_map(kind) for kind in ("user", "item", "category")},
        overwrite=True,
    )
    import shutil

    shutil.rmtree(other)


def test_overwrite_refuses_a_directory_that_is_not_a_dataset(tmp_path):
    target = tmp_path / "home"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not a din_jax dataset"):
        _overwrite_random(str(target), seed=0)
    assert (target / "precious.txt").read_text() == "keep me"


def test_write_validates_invariants(tmp_path):
    good = dict(
        sequences=np.array([1, 2, 3], dtype=np.int32),
        offsets=np.array([0, 3], dtype=np.int64),
        item_category=np.zeros(4, dtype=np.int32),
        meta={"name": "x"},
        id_maps={"user": ["a"], "item": ["0", "1", "2", "3"], "category": ["c"]},
    )
    with pytest.raises(DatasetError, match="position < 1"):
        write_dataset(str(tmp_path / "a"), splits={"train": np.array([[0, 0, 0, 1, 1]])}, **good)
    with pytest.raises(DatasetError, match="beyond the end"):
        write_dataset(str(tmp_path / "b"), splits={"train": np.array([[0, 0, 4, 1, 1]])}, **good)
    with pytest.raises(DatasetError, match="item ids outside"):
        write_dataset(str(tmp_path / "c"), splits={"train": np.array([[0, 0, 1, 9, 1]])}, **good)
    with pytest.raises(DatasetError, match="user ids outside"):
        write_dataset(str(tmp_path / "d"), splits={"train": np.array([[3, 0, 1, 1, 1]])}, **good)
    with pytest.raises(DatasetError, match="labels"):
        write_dataset(str(tmp_path / "e"), splits={"train": np.array([[0, 0, 1, 1, 2]])}, **good)
    assert os.listdir(str(tmp_path)) == []


# ----------------------------------------------------------------------------
# Load errors: one clear DatasetError naming the directory and the file
# ----------------------------------------------------------------------------


@pytest.fixture
def dataset_dir(tmp_path):
    path = str(tmp_path / "ds")
    write_random_dataset(path)
    return path


def _edit_meta(path, **changes):
    meta_path = os.path.join(path, "meta.json")
    meta = json.load(open(meta_path))
    meta.update(changes)
    json.dump(meta, open(meta_path, "w"))


def test_other_version_is_refused(dataset_dir):
    _edit_meta(dataset_dir, version=2)
    with pytest.raises(DatasetError, match=r"ds: meta.json: format version 2"):
        load_dataset(dataset_dir)


def test_truncated_npy_is_refused(dataset_dir):
    file = os.path.join(dataset_dir, "train.npy")
    data = open(file, "rb").read()
    open(file, "wb").write(data[: len(data) - 7])
    with pytest.raises(DatasetError, match=r"ds: train.npy: truncated or corrupt"):
        load_dataset(dataset_dir)


def test_corrupt_header_is_refused(dataset_dir):
    open(os.path.join(dataset_dir, "sequences.npy"), "wb").write(b"not numpy at all")
    with pytest.raises(DatasetError, match=r"sequences.npy: truncated or corrupt"):
        load_dataset(dataset_dir)


def test_missing_file_is_refused(dataset_dir):
    os.remove(os.path.join(dataset_dir, "item_category.npy"))
    with pytest.raises(DatasetError, match=r"item_category.npy: missing file"):
        load_dataset(dataset_dir)


def test_missing_meta_and_directory(tmp_path, dataset_dir):
    with pytest.raises(DatasetError, match="no such directory"):
        load_dataset(str(tmp_path / "nowhere"))
    os.remove(os.path.join(dataset_dir, "meta.json"))
    with pytest.raises(DatasetError, match=r"meta.json: missing file"):
        load_dataset(dataset_dir)


def test_arrays_inconsistent_with_meta(dataset_dir):
    _edit_meta(dataset_dir, splits={"train": 41, "validation": 9, "test": 11})
    with pytest.raises(DatasetError, match=r"train.npy: shape \(40, 5\) but meta.json implies \(41, 5\)"):
        load_dataset(dataset_dir)


def test_id_map_length_mismatch(dataset_dir):
    with open(os.path.join(dataset_dir, "user_ids.txt"), "a") as handle:
        handle.write("extra\n")
    with pytest.raises(DatasetError, match=r"user_ids.txt: 8 lines but meta.json has 7 users"):
        load_dataset(dataset_dir)


def test_out_of_range_values_are_refused(dataset_dir):
    rows = np.load(os.path.join(dataset_dir, "test.npy"))
    rows[0, 3] = 999
    np.save(os.path.join(dataset_dir, "test.npy"), rows)
    with pytest.raises(DatasetError, match=r"test.npy: item ids outside \[0, 30\)"):
        load_dataset(dataset_dir)
    assert load_dataset(dataset_dir, check_values=False).num_samples("test") == 11
