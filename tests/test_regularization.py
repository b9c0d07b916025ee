"""Mini-batch aware regularisation and plain L2: the update rule against a direct implementation."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from din_jax.config import ConfigError, TrainConfig
from din_jax.data.synthetic import make_synthetic_dataset
from din_jax.models import build_model
from din_jax.train import optim
from din_jax.train import step as train_lib
from din_jax.train.regularization import (
    add_regularization_gradients,
    batch_presence,
    compute_inverse_frequencies,
    find_embedding_tables,
    make_regularization,
    regularization_for,
)
from din_jax.train.setup import make_p_train

NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, T = 5, 10, 4, 3
LR, LAMBDA = 0.5, 0.3
MODEL_CONFIG = {"item_dim": 2, "category_dim": 2, "user_dim": 2, "attention_hidden": (4,), "mlp_hidden": (4,)}
BASE_CONFIG = {"item_dim": 2, "category_dim": 2, "user_dim": 2, "mlp_hidden": (4,)}
ITEM_FREQ = np.array([3, 1, 4, 1, 5, 9, 2, 6, 0, 5], np.int64)  # item 8 never occurs in training
CATEGORY_FREQ = np.array([7, 2, 8, 1], np.int64)
USER_FREQ = np.array([2, 3, 1, 4, 5], np.int64)


def _batch():
    """Four samples; padded history positions hold ids (7, 9) that must not count as present."""
    return {
        "user": np.array([0, 2, 2, 4], np.int32),
        "item": np.array([1, 3, 1, 5], np.int32),
        "category": np.array([1, 3, 1, 2], np.int32),
        "hist_item": np.array([[0, 2, 7], [4, 9, 9], [0, 0, 0], [2, 6, 4]], np.int32),
        "hist_category": np.array([[0, 2, 3], [0, 3, 3], [0, 0, 0], [2, 2, 0]], np.int32),
        "hist_len": np.array([2, 1, 0, 3], np.int32),
        "label": np.array([1, 0, 1, 0], np.float32),
    }


def _direct_presence(batch):
    """alpha_mj written out sample by sample."""
    present = {"item": set(), "category": set(), "user": set()}
    for b in range(len(batch["item"])):
        present["item"].add(int(batch["item"][b]))
        present["category"].add(int(batch["category"][b]))
        present["user"].add(int(batch["user"][b]))
        for t in range(int(batch["hist_len"][b])):
            present["item"].add(int(batch["hist_item"][b, t]))
            present["category"].add(int(batch["hist_category"][b, t]))
    return present


def _regularization(mba_lambda=LAMBDA, l2=0.0):
    return make_regularization(mba_lambda, l2, {"item": ITEM_FREQ, "category": CATEGORY_FREQ, "user": USER_FREQ})


def _sgd_step(model, batch, regularization):
    tx = optim.make_optimizer(TrainConfig(use_synthetic_data=True, optimizer="sgd", learning_rate=LR))
    state = train_lib.create_train_state(model, tx, seed=0, max_seq_len=T)
    step = jax.jit(train_lib.make_train_step(model, axis_name=None, regularization=regularization))
    new_state, _ = step(state, batch)
    return jax.device_get(state.params), jax.device_get(new_state.params)


def test_inverse_frequencies_guard_zero_counts():
    np.testing.assert_allclose(compute_inverse_frequencies(np.array([0, 1, 4])), [0.0, 1.0, 0.25])
    with pytest.raises(ValueError):
        compute_inverse_frequencies(np.array([1, -1]))


def test_make_regularization():
    assert make_regularization(0.0, 0.0) is None
    with pytest.raises(ValueError, match="training frequencies"):
        make_regularization(0.01, 0.0, {"item": ITEM_FREQ})
    assert make_regularization(0.0, 1e-4).inverse_frequencies == {}


def test_batch_presence_counts_valid_positions_only():
    batch = _batch()
    presence = jax.device_get(batch_presence(batch, {"item": NUM_ITEMS, "category": NUM_CATEGORIES, "user": NUM_USERS}))
    expected = _direct_presence(batch)
    for table in ("item", "category", "user"):
        assert set(np.flatnonzero(presence[table]).tolist()) == expected[table], table
    assert not presence["item"][7] and not presence["item"][9]


def test_every_feature_embedding_table_is_found():
    shapes = {}
    deepfm_config = {"item_dim": 2, "category_dim": 2, "mlp_hidden": (4,)}
    for name, config in (("din", MODEL_CONFIG), ("lr", {"user_dim": 1}), ("deepfm", deepfm_config)):
        model = build_model(name, NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, config, axis_name=None)
        shapes[name] = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), _batch()))["params"]
    assert find_embedding_tables(shapes["din"]) == [("embedding", t) for t in ("category", "item", "user")]
    assert find_embedding_tables(shapes["lr"]) == [("linear", "embedding", t) for t in ("category", "item", "user")]
    # DeepFM: the shared embedding and the first-order weights; not the per-item bias.
    assert find_embedding_tables(shapes["deepfm"]) == [
        ("embedding", "category"),
        ("embedding", "item"),
        ("fm_first_order", "embedding", "category"),
        ("fm_first_order", "embedding", "item"),
    ]


def test_mba_update_equals_the_paper_formula():
    """w_j <- w_j - lr (g_j + lambda alpha_mj / n_j w_j), with SGD, for every embedding table."""
    model = build_model("din", NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, MODEL_CONFIG, axis_name=None)
    batch = _batch()
    before, plain = _sgd_step(model, batch, None)
    _, regularized = _sgd_step(model, batch, _regularization())
    tables = find_embedding_tables(before)
    assert tables == [("embedding", "category"), ("embedding", "item"), ("embedding", "user")]
    present = _direct_presence(batch)
    frequencies = {"item": ITEM_FREQ, "category": CATEGORY_FREQ, "user": USER_FREQ}

    def at(tree, path):
        for key in path:
            tree = tree[key]
        return np.asarray(tree)

    for path in tables:
        table = path[-1]
        w = at(before, path)
        expected = at(plain, path).copy()
        for j in range(w.shape[0]):
            if j in present[table]:
                expected[j] -= LR * LAMBDA / frequencies[table][j] * w[j]
        np.testing.assert_allclose(at(regularized, path), expected, rtol=1e-5, atol=1e-7)
    # Everything else (MLP, attention, the item bias) is untouched by MBA.
    flat_plain, flat_regularized = traverse_util.flatten_dict(plain), traverse_util.flatten_dict(regularized)
    assert ("embedding", "item_bias") in flat_plain
    for path, leaf in flat_plain.items():
        if path not in tables:
            np.testing.assert_array_equal(np.asarray(flat_regularized[path]), np.asarray(leaf))


def test_l2_adds_l2_times_w_to_every_gradient():
    params = {
        "embedding": {
            "item": np.ones((NUM_ITEMS, 2), np.float32),
            "category": np.full((NUM_CATEGORIES, 2), 2.0, np.float32),
        },
        "mlp": {"kernel": np.arange(6, dtype=np.float32).reshape(3, 2), "bias": np.array([-1.0], np.float32)},
    }
    grads = jax.tree_util.tree_map(lambda w: np.full_like(w, 0.5), params)
    out = add_regularization_gradients(grads, params, _batch(), _regularization(mba_lambda=0.0, l2=0.1))
    expected = jax.tree_util.tree_map(lambda g, w: g + 0.1 * w, grads, params)
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(expected)
    for a, b in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


def test_mba_presence_is_global_across_data_parallel_devices():
    """Two devices each holding half the batch give the update of one device with all of it.

    Item 5 (sample 3) and user 4 occur on device 1 only: a per-device penalty
    averaged with pmean would give them half the paper's term, and the two
    runs would differ (that the term is there at all is the previous test).
    """
    if jax.local_device_count() < 2:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=2 (set by tests/conftest.py)")
    model = build_model("base", NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, BASE_CONFIG)
    batch = _batch()
    regularization = _regularization()
    tx = optim.make_optimizer(TrainConfig(use_synthetic_data=True, optimizer="sgd", learning_rate=LR))
    host_state = train_lib.create_train_state(model, tx, seed=0, max_seq_len=T)
    results = []
    for devices, chunk in (
        (jax.local_devices()[:1], {k: v[None, None] for k, v in batch.items()}),
        (jax.local_devices()[:2], {k: np.stack([v[:2], v[2:]])[:, None] for k, v in batch.items()}),
    ):
        p_train = make_p_train(model, devices, donate=False, regularization=regularization)
        state, _ = p_train(train_lib.replicate(host_state, devices), chunk)
        results.append(train_lib.unreplicate_to_host(state).params)
    for a, b in zip(jax.tree_util.tree_leaves(results[0]), jax.tree_util.tree_leaves(results[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_regularization_for_reads_the_dataset_frequencies():
    source = make_synthetic_dataset(50, 10, 10, max_seq_len=5, num_users=7, num_items=20, num_categories=4, seed=0)
    config = TrainConfig(use_synthetic_data=True, mba_lambda=0.01)
    regularization = regularization_for(config, source)
    counts = source.item_frequencies()
    np.testing.assert_allclose(
        regularization.inverse_frequencies["item"], np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0), rtol=1e-6
    )
    assert regularization_for(TrainConfig(use_synthetic_data=True), source) is None


def test_config_validates_the_coefficients():
    for name in ("mba_lambda", "l2"):
        with pytest.raises(ConfigError, match="--%s must be a finite number >= 0" % name):
            TrainConfig(use_synthetic_data=True, **{name: -0.1}).validate()
        with pytest.raises(ConfigError):
            TrainConfig(use_synthetic_data=True, **{name: float("nan")}).validate()


def test_wrong_frequency_length_is_reported():
    params = {
        "embedding": {
            "item": np.zeros((NUM_ITEMS, 2), np.float32),
            "category": np.zeros((NUM_CATEGORIES, 2), np.float32),
        }
    }
    bad = make_regularization(0.1, 0.0, {"item": ITEM_FREQ[:5], "category": CATEGORY_FREQ, "user": USER_FREQ})
    with pytest.raises(ValueError, match="has 10 rows but 5 frequencies"):
        add_regularization_gradients(params, params, _batch(), bad)
    no_users = make_regularization(0.1, 0.0, {"item": ITEM_FREQ, "category": CATEGORY_FREQ})
    params["embedding"]["user"] = np.zeros((NUM_USERS, 2), np.float32)
    with pytest.raises(ValueError, match="no training frequencies for the 'user' table"):
        add_regularization_gradients(params, params, _batch(), no_users)


def test_mba_counts_n_j_at_the_history_length_training_uses(tmp_path):
    from conftest import write_dataset_directory

    from din_jax.data.dataset import count_training_frequencies, load_dataset

    source = make_synthetic_dataset(400, 40, 40, max_seq_len=20, num_users=30, num_items=50, num_categories=5, seed=1)
    path = str(tmp_path / "data")
    write_dataset_directory(source, path, 20)
    splits = {name: np.asarray(source.samples(name)) for name in source.split_names()}
    stored = load_dataset(path)
    at_20, at_3 = stored.item_frequencies(), stored.item_frequencies(3)
    expected_3 = count_training_frequencies(
        splits["train"], source.sequences, source.offsets, source.item_category, 30, 5, 3
    )["item"]
    np.testing.assert_array_equal(at_3, expected_3)
    assert at_20.sum() > at_3.sum()  # a shorter cut counts fewer history occurrences
    np.testing.assert_array_equal(stored.item_frequencies(20), at_20)  # the build's length: the stored counts
    regularization = regularization_for(TrainConfig(dataset=path, max_seq_len=3, mba_lambda=0.01), stored)
    np.testing.assert_allclose(
        regularization.inverse_frequencies["item"], np.where(at_3 > 0, 1.0 / np.maximum(at_3, 1), 0)
    )
