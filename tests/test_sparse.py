"""Sparse embedding updates equal the dense ones (SGD, Adagrad, MBA, clipping); lazy Adam touches present rows only."""

import dataclasses

import jax
import numpy as np
import pytest

from din_jax.config import ConfigError, TrainConfig
from din_jax.data.synthetic import make_item_categories, make_synthetic_batch
from din_jax.layers import CATEGORY_TABLE, ITEM_TABLE, USER_TABLE
from din_jax.models import build_model
from din_jax.train import optim
from din_jax.train import sparse_step as sparse
from din_jax.train import step as train_lib
from din_jax.train.regularization import make_regularization
from din_jax.train.setup import make_p_train

NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, T = 40, 50, 6, 10
MODEL_CONFIG = {
    "item_dim": 4,
    "category_dim": 4,
    "user_dim": 3,
    "attention_hidden": (8, 4),
    "mlp_hidden": (8, 4),
    "activation": "dice",
    "attention_activation": "sigmoid",
}


def _model(name="din", **overrides):
    config = dict(
        MODEL_CONFIG if name == "din" else {"item_dim": 4, "category_dim": 4, "user_dim": 3, "mlp_hidden": (8, 4)},
        **overrides,
    )
    if name == "lr":
        config = {"user_dim": 1}
    return build_model(name, NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, config, axis_name=train_lib.AXIS_NAME)


def _batches(count, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    categories = make_item_categories(NUM_ITEMS, NUM_CATEGORIES, 0)
    return [
        make_synthetic_batch(rng, batch_size, T, NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, item_category=categories)
        for _ in range(count)
    ]


def _stack(batches):
    return {key: np.stack([b[key] for b in batches]) for key in batches[0]}


def _chunk(batches, devices):
    """(R, K, B, ...): device r takes the r-th slice of every global micro-batch."""
    per = batches[0]["label"].shape[0] // devices
    return _stack(
        [_stack([{k: v[r * per : (r + 1) * per] for k, v in b.items()} for b in batches]) for r in range(devices)]
    )


def _config(**overrides):
    values = dict(use_synthetic_data=True, optimizer="sgd", learning_rate=0.5, max_seq_len=T)
    values.update(overrides)
    return TrainConfig(**values)


def _run(model, config, batches, devices, embedding_updates, regularization=None):
    devs = jax.local_devices()[:devices]
    if embedding_updates == "sparse":
        tx = sparse.make_sparse_optimizer(model, config)
    else:
        tx = optim.make_optimizer(config)
    state = train_lib.replicate(train_lib.create_train_state(model, tx, seed=3, max_seq_len=T), devs)
    p_train = make_p_train(
        model, devs, donate=False, regularization=regularization, embedding_updates=embedding_updates
    )
    state, metrics = p_train(state, _chunk(batches, devices))
    return train_lib.unreplicate_to_host(state), np.asarray(metrics["loss"])


def _assert_trees_close(a, b, rtol=2e-5, atol=2e-6):
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _two_devices():
    if jax.local_device_count() < 2:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=2 (set by tests/conftest.py)")


def test_the_lookup_paths_are_the_feature_embedding_tables():
    paths = sparse.embedding_lookup_paths(_model(), T)
    assert paths == [
        ("embedding", CATEGORY_TABLE),
        ("embedding", ITEM_TABLE),
        ("embedding", "item_bias"),
        ("embedding", USER_TABLE),
    ]


def test_sparse_sgd_equals_dense_sgd_after_several_steps():
    model = _model()
    batches = _batches(5, 16)
    dense, dense_loss = _run(model, _config(), batches, 1, "dense")
    sparse_state, sparse_loss = _run(model, _config(), batches, 1, "sparse")
    _assert_trees_close(dense.params, sparse_state.params)
    _assert_trees_close(dense.batch_stats, sparse_state.batch_stats)
    np.testing.assert_allclose(dense_loss, sparse_loss, rtol=1e-5)
    assert int(sparse_state.step) == 5
    # The rows of ids never looked up are bit-for-bit the initial ones.
    initial = train_lib.create_train_state(model, optim.make_optimizer(_config()), seed=3, max_seq_len=T)
    seen = np.unique(np.concatenate([np.concatenate([b["user"]]) for b in batches]))
    unseen = np.setdiff1d(np.arange(NUM_USERS), seen)
    assert unseen.size > 0
    np.testing.assert_array_equal(
        np.asarray(sparse_state.params["embedding"][USER_TABLE])[unseen],
        np.asarray(initial.params["embedding"][USER_TABLE])[unseen],
    )


def test_sparse_sgd_on_two_devices_equals_dense_on_one_and_two():
    _two_devices()
    model = _model()
    batches = _batches(4, 16, seed=1)
    dense_one, _ = _run(model, _config(), batches, 1, "dense")
    dense_two, _ = _run(model, _config(), batches, 2, "dense")
    sparse_two, _ = _run(model, _config(), batches, 2, "sparse")
    _assert_trees_close(dense_two.params, sparse_two.params)
    _assert_trees_close(dense_one.params, sparse_two.params, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["lr", "deepfm", "wide_deep"])
def test_sparse_sgd_equals_dense_for_the_competitors(name):
    model = _model(name)
    batches = _batches(3, 16, seed=2)
    dense, _ = _run(model, _config(), batches, 1, "dense")
    sparse_state, _ = _run(model, _config(), batches, 1, "sparse")
    _assert_trees_close(dense.params, sparse_state.params)


def test_lazy_adagrad_equals_dense_adagrad():
    model = _model()
    batches = _batches(4, 16, seed=3)
    config = _config(optimizer="adagrad", learning_rate=0.05)
    dense, _ = _run(model, config, batches, 1, "dense")
    sparse_state, _ = _run(model, config, batches, 1, "sparse")
    _assert_trees_close(dense.params, sparse_state.params)
    # The accumulators agree too.
    dense_acc = dense.opt_state[0].sum_of_squares["embedding"][ITEM_TABLE]
    sparse_acc = sparse_state.opt_state["tables"]["sum_of_squares"]["embedding/" + ITEM_TABLE]
    np.testing.assert_allclose(np.asarray(dense_acc), np.asarray(sparse_acc), rtol=1e-5, atol=1e-6)


def test_lazy_adagrad_on_two_devices_equals_dense():
    _two_devices()
    model = _model()
    batches = _batches(3, 16, seed=4)
    config = _config(optimizer="adagrad", learning_rate=0.05)
    dense, _ = _run(model, config, batches, 2, "dense")
    sparse_state, _ = _run(model, config, batches, 2, "sparse")
    _assert_trees_close(dense.params, sparse_state.params)


def _lazy_adam_reference(table, row_gradients, lr, steps_present):
    """Lazy Adam on one table from per-step summed row gradients ({row: g}), by the formula."""
    table = np.array(table, np.float64)
    mu = np.zeros_like(table)
    nu = np.zeros_like(table)
    for t, grads in enumerate(row_gradients, 1):
        for row, g in grads.items():
            mu[row] = 0.9 * mu[row] + 0.1 * g
            nu[row] = 0.999 * nu[row] + 0.001 * g * g
            mu_hat = mu[row] / (1 - 0.9**t)
            nu_hat = nu[row] / (1 - 0.999**t)
            table[row] -= lr * mu_hat / (np.sqrt(nu_hat) + 1e-8)
    return table, mu, nu


def test_lazy_adam_touches_only_present_rows_and_follows_the_formula():
    model = _model(activation="prelu")
    batches = _batches(3, 8, seed=5)
    config = _config(optimizer="adam", learning_rate=0.01)
    tx = sparse.make_sparse_optimizer(model, config)
    devs = jax.local_devices()[:1]
    host = train_lib.create_train_state(model, tx, seed=3, max_seq_len=T)
    initial_users = np.asarray(host.params["embedding"][USER_TABLE]).copy()
    state = train_lib.replicate(host, devs)
    p_train = make_p_train(model, devs, donate=False, embedding_updates="sparse")

    # Per step, the user-table gradient of the step's own parameters (users occur once per row).
    grads_per_step = []
    for batch in batches:
        params = train_lib.unreplicate_to_host(state).params
        stats = train_lib.unreplicate_to_host(state).batch_stats

        def loss(user_table, params=params, stats=stats, batch=batch):
            p = jax.tree_util.tree_map(lambda x: x, params)
            p["embedding"] = dict(p["embedding"], **{USER_TABLE: user_table})
            logits, _ = model.apply(
                {"params": p, "batch_stats": stats},
                batch,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.PRNGKey(0)},
            )
            return train_lib.compute_loss(logits, batch["label"])

        g = np.asarray(jax.grad(loss)(params["embedding"][USER_TABLE]))
        grads_per_step.append({int(u): g[int(u)] for u in np.unique(batch["user"])})
        state, _ = p_train(state, _stack([_stack([batch])]))

    final = train_lib.unreplicate_to_host(state)
    expected, mu, nu = _lazy_adam_reference(initial_users, grads_per_step, 0.01, len(batches))
    users = np.asarray(final.params["embedding"][USER_TABLE])
    np.testing.assert_allclose(users, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(final.opt_state["tables"]["mu"]["embedding/" + USER_TABLE]), mu, rtol=1e-4, atol=1e-7
    )
    np.testing.assert_allclose(
        np.asarray(final.opt_state["tables"]["nu"]["embedding/" + USER_TABLE]), nu, rtol=1e-4, atol=1e-9
    )
    present = np.unique(np.concatenate([b["user"] for b in batches]))
    absent = np.setdiff1d(np.arange(NUM_USERS), present)
    np.testing.assert_array_equal(users[absent], initial_users[absent])
    assert not np.any(np.asarray(final.opt_state["tables"]["nu"]["embedding/" + USER_TABLE])[absent])


def test_lazy_adam_ignores_ids_at_padded_positions():
    model = _model(activation="prelu")
    batch = _batches(1, 8, seed=6)[0]
    batch["hist_len"] = np.ones_like(batch["hist_len"])
    batch["hist_item"][:, 1:] = NUM_ITEMS - 1  # a padded-only id
    batch["item"] = np.where(batch["item"] == NUM_ITEMS - 1, 0, batch["item"]).astype(np.int32)
    batch["hist_item"][:, 0] = np.where(batch["hist_item"][:, 0] == NUM_ITEMS - 1, 0, batch["hist_item"][:, 0])
    config = _config(optimizer="adam", learning_rate=0.01)
    state, _ = _run(model, config, [batch], 1, "sparse")
    initial = train_lib.create_train_state(model, sparse.make_sparse_optimizer(model, config), seed=3, max_seq_len=T)
    np.testing.assert_array_equal(
        np.asarray(state.params["embedding"][ITEM_TABLE])[NUM_ITEMS - 1],
        np.asarray(initial.params["embedding"][ITEM_TABLE])[NUM_ITEMS - 1],
    )


@pytest.mark.parametrize("devices", [1, 2])
def test_sparse_mba_equals_dense_mba(devices):
    if devices == 2:
        _two_devices()
    model = _model()
    batches = _batches(4, 16, seed=7)
    rng = np.random.default_rng(0)
    frequencies = {
        ITEM_TABLE: rng.integers(0, 20, NUM_ITEMS),
        CATEGORY_TABLE: rng.integers(1, 50, NUM_CATEGORIES),
        USER_TABLE: rng.integers(1, 5, NUM_USERS),
    }
    regularization = make_regularization(mba_lambda=0.5, frequencies=frequencies)
    dense, _ = _run(model, _config(), batches, devices, "dense", regularization)
    sparse_state, _ = _run(model, _config(), batches, devices, "sparse", regularization)
    _assert_trees_close(dense.params, sparse_state.params)
    plain, _ = _run(model, _config(), batches, devices, "sparse")
    assert not np.allclose(plain.params["embedding"][ITEM_TABLE], sparse_state.params["embedding"][ITEM_TABLE])


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_sparse_clipping_equals_dense_clipping(optimizer):
    model = _model()
    batches = _batches(3, 16, seed=8)
    config = _config(optimizer=optimizer, clip_norm=0.05)
    dense, _ = _run(model, config, batches, 1, "dense")
    sparse_state, _ = _run(model, config, batches, 1, "sparse")
    _assert_trees_close(dense.params, sparse_state.params)


def test_plain_l2_is_refused_and_the_dense_optimizer_path_fails_loudly():
    model = _model()
    with pytest.raises(ConfigError, match="--l2"):
        sparse.make_sparse_optimizer(model, _config(l2=0.1))
    with pytest.raises(ConfigError, match="--l2"):
        sparse.make_sparse_train_step(model, None, make_regularization(l2=0.1))
    tx = sparse.make_sparse_optimizer(model, _config())
    with pytest.raises(TypeError, match="make_sparse_train_step"):
        tx.update({}, {})


def test_sparse_state_checkpoints_and_the_learning_rate_schedule_applies():
    model = _model()
    batches = _batches(4, 16, seed=9)
    config = _config(lr_schedule="paper", lr_decay_steps=2, lr_decay_factor=0.1)
    dense, _ = _run(model, config, batches, 1, "dense")
    sparse_state, _ = _run(model, dataclasses.replace(config), batches, 1, "sparse")
    _assert_trees_close(dense.params, sparse_state.params)


def test_parts_of_a_micro_batch_give_the_same_update():
    model = _model(activation="prelu")
    batches = _batches(3, 16, seed=10)
    config = _config(optimizer="adam", learning_rate=0.01)
    devs = jax.local_devices()[:1]
    results = []
    for rows in (0, 4 * T):  # whole micro-batches, then 4 rows per pass
        state = train_lib.replicate(
            train_lib.create_train_state(model, sparse.make_sparse_optimizer(model, config), seed=3, max_seq_len=T),
            devs,
        )
        p_train = make_p_train(model, devs, donate=False, embedding_updates="sparse", positions_per_pass=rows)
        state, metrics = p_train(state, _chunk(batches, 1))
        results.append((train_lib.unreplicate_to_host(state), np.asarray(metrics["loss"])))
    _assert_trees_close(results[0][0].params, results[1][0].params)
    _assert_trees_close(results[0][0].opt_state, results[1][0].opt_state)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)


def test_parts_of_a_micro_batch_refuse_batch_statistics():
    model = _model()  # Dice in the MLP
    devs = jax.local_devices()[:1]
    state = train_lib.replicate(
        train_lib.create_train_state(model, sparse.make_sparse_optimizer(model, _config()), seed=3, max_seq_len=T), devs
    )
    p_train = make_p_train(model, devs, donate=False, embedding_updates="sparse", positions_per_pass=4)
    with pytest.raises(ValueError, match="batch statistics"):
        p_train(state, _chunk(_batches(1, 16), 1))


def test_rows_per_pass_is_a_power_of_two_divisor_within_the_budget():
    assert train_lib.rows_per_pass(1024, 64, 0) == 1024
    assert train_lib.rows_per_pass(1024, 64, 4096) == 64
    assert train_lib.rows_per_pass(1024, 8, 4096) == 512
    assert train_lib.rows_per_pass(1024, 100, 4096) == 32
    assert train_lib.rows_per_pass(96, 100, 4096) == 32
    assert train_lib.rows_per_pass(32, 100, 4096) == 32  # fits: one pass
    assert train_lib.rows_per_pass(24, 1000, 10) == 1
