"""Packed micro-batches: the same logits, gradients and epochs as padded ones (docs/TRAINING.md)."""

import flax
import jax
import numpy as np
import optax
import pytest

from din_jax.config import TrainConfig
from din_jax.data.batching import (
    PREDICT_POSITIONS,
    gather_chunk,
    pack_micro_batches,
    packed_positions,
    plan_chunks,
    plan_epoch,
    plan_packed_chunks,
    plan_packed_prediction,
    predict_rows,
)
from din_jax.data.synthetic import make_synthetic_dataset
from din_jax.models import build_model
from din_jax.train.evaluation import predict_split
from din_jax.train.regularization import make_regularization
from din_jax.train.sparse_step import make_sparse_optimizer, make_sparse_train_step
from din_jax.train.step import (
    batch_loss,
    create_train_state,
    make_p_predict_chunk,
    make_p_train_chunk,
    make_train_step,
    replicate,
    unreplicate_to_host,
)

T = 12
SOURCE = make_synthetic_dataset(300, 0, 101, max_seq_len=T, seed=3, min_len=1, num_users=40)
VOCAB = (int(SOURCE.num_users), int(SOURCE.num_items), int(SOURCE.num_categories))
SMALL = dict(item_dim=4, category_dim=4, mlp_hidden=(5,))
DIN = dict(SMALL, attention_hidden=(6, 3))

# Every pooler, Dice in the attention unit and in the MLP, and the models that pool the history another way.
MODELS = {
    "din": ("din", dict(DIN)),
    "din_softmax": ("din", dict(DIN, attention="din_softmax")),
    "din_dice": ("din", dict(DIN, attention_activation="dice", activation="dice")),
    "din_unsplit": ("din", dict(DIN, split_attention=False, use_history_sum=True, user_dim=3)),
    "dot": ("din", dict(DIN, attention="dot")),
    "mean": ("din", dict(DIN, attention="mean")),
    "sum": ("din", dict(DIN, attention="sum")),
    "mha": ("din", dict(DIN, attention="mha", attention_heads=2)),
    "base": ("base", dict(SMALL, activation="dice")),
    "lr": ("lr", {}),
    "wide_deep": ("wide_deep", dict(SMALL, pooling="sum")),
    "pnn": ("pnn", dict(SMALL)),
    "deepfm": ("deepfm", dict(SMALL)),
}


def _model(name):
    model, config = MODELS[name]
    return build_model(model, *VOCAB, dict(config), axis_name=None)


def _batches(indices, positions=None, garbage_seed=None):
    """The padded batch of ``indices`` (-1: an empty slot, left out) and the packed one of the same samples."""
    indices = np.asarray(indices)
    padded = SOURCE.gather("train", indices[indices >= 0], T)
    lengths = SOURCE.history_lengths("train", T)
    total = int(np.sum(np.where(indices >= 0, lengths[indices], 0)))
    packed = gather_chunk(SOURCE, "train", indices[None], T, positions=positions or total + 5)
    packed = {key: value[0] for key, value in packed.items()}
    if garbage_seed is not None:  # random ids at unused positions and empty slots
        rng = np.random.default_rng(garbage_seed)
        unused = packed["hist_segment"] == len(indices)
        for key, size in (("hist_item", VOCAB[1]), ("hist_category", VOCAB[2])):
            packed[key] = np.where(unused, rng.integers(0, size, unused.shape), packed[key]).astype(np.int32)
        empty = packed["weight"] == 0
        for key, size in (("item", VOCAB[1]), ("category", VOCAB[2]), ("user", VOCAB[0])):
            packed[key] = np.where(empty, rng.integers(0, size, empty.shape), packed[key]).astype(np.int32)
    return padded, packed


def _loss_and_grads(model, variables, batch):
    def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": variables.get("batch_stats", {})},
            batch,
            train=True,
            mutable=["batch_stats"],
        )
        return batch_loss(logits, batch), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    return loss, grads, flax.core.unfreeze(updates).get("batch_stats", {})


def _assert_trees_close(a, b, rtol=2e-5, atol=1e-6):
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_packed_and_padded_give_the_same_logits_gradients_and_statistics(name):
    model = _model(name)
    indices = np.random.default_rng(0).choice(SOURCE.num_samples("train"), 10, replace=False)
    padded, packed = _batches(indices)
    variables = flax.core.unfreeze(model.init(jax.random.PRNGKey(1), padded))
    np.testing.assert_allclose(
        np.asarray(model.apply(variables, packed)), np.asarray(model.apply(variables, padded)), rtol=2e-5, atol=1e-6
    )
    loss_a, grads_a, stats_a = _loss_and_grads(model, variables, padded)
    loss_b, grads_b, stats_b = _loss_and_grads(model, variables, packed)
    np.testing.assert_allclose(float(loss_b), float(loss_a), rtol=1e-6)
    _assert_trees_close(grads_b, grads_a)
    _assert_trees_close(stats_b, stats_a)


@pytest.mark.parametrize("name", ["din", "din_dice", "din_softmax", "base", "wide_deep", "lr"])
def test_unused_positions_and_empty_slots_change_nothing(name):
    model = _model(name)
    indices = np.random.default_rng(1).choice(SOURCE.num_samples("train"), 6, replace=False)
    with_empty = np.concatenate([indices[:3], [-1], indices[3:], [-1]])
    _, clean = _batches(indices)
    _, dirty = _batches(with_empty, positions=clean["hist_item"].shape[0] + 17, garbage_seed=4)
    variables = flax.core.unfreeze(model.init(jax.random.PRNGKey(2), clean))
    real = dirty["weight"] > 0
    np.testing.assert_allclose(
        np.asarray(model.apply(variables, dirty))[real], np.asarray(model.apply(variables, clean)), rtol=2e-5, atol=1e-6
    )
    loss_a, grads_a, stats_a = _loss_and_grads(model, variables, clean)
    loss_b, grads_b, stats_b = _loss_and_grads(model, variables, dirty)
    np.testing.assert_allclose(float(loss_b), float(loss_a), rtol=1e-6)
    _assert_trees_close(grads_b, grads_a)
    _assert_trees_close(stats_b, stats_a)


def test_din_attention_weights_come_back_per_position():
    model = _model("din_softmax")
    indices = np.arange(7)
    padded, packed = _batches(indices)
    variables = model.init(jax.random.PRNGKey(0), padded)
    _, weights_BxT = model.apply(variables, padded, return_attention=True)
    _, weights_P = model.apply(variables, packed, return_attention=True)
    weights_P, segment = np.asarray(weights_P), packed["hist_segment"]
    for b in range(len(indices)):
        n = int(padded["hist_len"][b])
        np.testing.assert_allclose(weights_P[segment == b], np.asarray(weights_BxT)[b, :n], rtol=2e-5, atol=1e-6)
    assert np.all(weights_P[segment == len(indices)] == 0)


@pytest.mark.parametrize("updates", ["dense", "sparse"])
def test_one_train_step_with_mba_is_the_same_packed_and_padded(updates):
    model = _model("din_dice")
    config = TrainConfig(use_synthetic_data=True, optimizer="adam", learning_rate=0.01, max_seq_len=T, mba_lambda=0.1)
    frequencies = {"item": SOURCE.item_frequencies(), "category": SOURCE.category_frequencies()}
    regularization = make_regularization(0.1, 0.0, frequencies)
    if updates == "sparse":
        tx = make_sparse_optimizer(model, config)
        step = make_sparse_train_step(model, None, regularization)
    else:
        tx, step = optax.adam(0.01), make_train_step(model, None, regularization)
    state = create_train_state(model, tx, 0, T)
    padded, packed = _batches(np.arange(20, 36))
    new_a, metrics_a = jax.jit(step)(state, padded)
    new_b, metrics_b = jax.jit(step)(state, packed)
    np.testing.assert_allclose(float(metrics_b["loss"]), float(metrics_a["loss"]), rtol=1e-6)
    _assert_trees_close(new_b.params, new_a.params, rtol=1e-5, atol=1e-6)
    _assert_trees_close(new_b.batch_stats, new_a.batch_stats)


def test_packing_keeps_the_order_defers_what_does_not_fit_and_never_overflows():
    lengths = SOURCE.history_lengths("train", T)
    order = np.random.default_rng(5).permutation(len(lengths))
    for positions in (T, 40, packed_positions(lengths, 8, T)):
        rows, deferred = pack_micro_batches(order, lengths, 8, positions)
        np.testing.assert_array_equal(rows[rows >= 0], order)  # every sample once, in the order's order
        assert np.all(np.where(rows >= 0, lengths[rows], 0).sum(axis=1) <= positions)
        assert np.all(rows[:-1, 0] >= 0)  # only empty slots at the ends of micro-batches
    assert deferred == 0 or rows.shape[0] >= len(order) // 8
    tight, deferred = pack_micro_batches(order, lengths, 8, 40)
    assert deferred > 0
    # Without overflow a micro-batch is the plain cut of the order.
    loose, none = pack_micro_batches(order, lengths, 8, 8 * T)
    assert none == 0 and np.array_equal(loose.reshape(-1)[: len(order)], order)


def test_a_packed_epoch_has_the_padded_epochs_samples():
    config = TrainConfig(use_synthetic_data=True, max_seq_len=T, micro_batch_size=8, device_iterations=3, seed=7)
    padded = plan_epoch(SOURCE, TrainConfig(**dict(config.to_dict(), batching="padded")), 2, replicas=2)
    for positions in (0, 40):
        packed = plan_epoch(SOURCE, TrainConfig(**dict(config.to_dict(), packed_positions=positions)), 2, replicas=2)
        assert packed.positions > 0
        ids = np.concatenate([c.reshape(-1) for c in packed.calls])
        expected = np.concatenate([c.reshape(-1) for c in padded.calls])
        assert sorted(ids[ids >= 0].tolist()) == sorted(expected.tolist())
        assert sum(packed.valid) == len(expected)
        for call in packed.calls:  # replicas, device iterations, micro-batch
            assert call.shape[0] == 2 and call.shape[2] == 8
    # The plan is a function of seed and epoch (resuming relies on it).
    again = plan_epoch(SOURCE, config, 2, replicas=2)
    assert all(np.array_equal(a, b) for a, b in zip(plan_epoch(SOURCE, config, 2, 2).calls, again.calls))


@pytest.mark.parametrize("devices", [1, 2])
def test_evaluation_scores_every_sample_in_order_packed_as_padded(devices):
    model = build_model("din", *VOCAB, dict(DIN, activation="dice"), axis_name="batch")
    variables = flax.core.unfreeze(model.init(jax.random.PRNGKey(3), SOURCE.gather("test", np.arange(4), T)))
    p_predict = make_p_predict_chunk(model, jax.local_devices()[:devices])
    args = (p_predict, variables, SOURCE, "test", jax.local_devices()[:devices], 8, 3, T)
    padded = predict_split(*args, batching="padded")
    packed = predict_split(*args, batching="packed")
    assert len(packed["logits"]) == SOURCE.num_samples("test") == 101
    np.testing.assert_array_equal(packed["user"], padded["user"])
    np.testing.assert_array_equal(packed["label"], padded["label"])
    np.testing.assert_allclose(packed["logits"], padded["logits"], rtol=2e-5, atol=1e-6)


def test_plan_packed_chunks_fills_the_last_step_with_empty_micro_batches():
    lengths = np.full(13, 2)
    plan = plan_packed_chunks(np.arange(13), lengths, 2, 4, 3, 6, drop_remainder=False)
    ids = np.concatenate([c.transpose(1, 0, 2).reshape(-1) for c in plan.calls])
    assert sorted(ids[ids >= 0].tolist()) == list(range(13)) and sum(plan.valid) == 13
    assert plan_chunks(np.arange(13), 2, 4, 3, drop_remainder=True).calls[0].shape == (2, 2, 3)
    dropped = plan_packed_chunks(np.arange(13), lengths, 2, 4, 3, 6, drop_remainder=True)
    kept = np.concatenate([c.reshape(-1) for c in dropped.calls])
    assert sorted(kept[kept >= 0].tolist()) == list(range(12))
    with pytest.raises(ValueError, match="does not fit"):
        pack_micro_batches(np.arange(3), np.array([1, 9, 1]), 2, 8)


def test_devices_with_different_numbers_of_real_samples_average_as_one_global_batch():
    """Two devices, one holding 4 real samples and the other 2 (and 2 empty slots), take the step of the 6
    samples padded as 2 x 3: the loss, the SGD update and the Dice statistics agree."""
    devices = jax.local_devices()[:2]
    model = build_model("din", *VOCAB, dict(DIN, activation="dice", attention_activation="dice"), axis_name="batch")
    tx = optax.sgd(0.5)
    state = create_train_state(model, tx, 0, T)
    p_train = make_p_train_chunk(make_train_step(model, "batch"), devices, donate=False)
    samples = np.arange(40, 46)
    packed_ids = np.array([[samples[:4]], [np.concatenate([samples[4:], [-1, -1]])]])  # (R, K, B)
    padded_ids = samples.reshape(2, 1, 3)
    packed = gather_chunk(SOURCE, "train", packed_ids, T, positions=8 * T)
    padded = gather_chunk(SOURCE, "train", padded_ids, T)
    new_a, metrics_a = p_train(replicate(state, devices), padded)
    new_b, metrics_b = p_train(replicate(state, devices), packed)
    np.testing.assert_allclose(np.asarray(metrics_b["loss"]), np.asarray(metrics_a["loss"]), rtol=1e-6)
    _assert_trees_close(unreplicate_to_host(new_b.params), unreplicate_to_host(new_a.params), rtol=1e-5, atol=1e-6)
    _assert_trees_close(unreplicate_to_host(new_b.batch_stats), unreplicate_to_host(new_a.batch_stats))


def test_packed_prediction_uses_cache_sized_buffers_that_depend_only_on_the_samples():
    lengths = np.random.default_rng(0).integers(1, 101, 5000)
    rows = predict_rows(lengths, 4096)
    assert rows == int(PREDICT_POSITIONS // lengths.mean()) and predict_rows(lengths, 8) == 8
    plans = [
        plan_packed_prediction(order, lengths, 1, 1, 4096, 100)
        for order in (np.arange(5000), np.random.default_rng(1).permutation(5000))
    ]
    assert plans[0].positions == plans[1].positions <= PREDICT_POSITIONS * 1.2
    for plan in plans:
        ids = np.concatenate([c.reshape(-1) for c in plan.calls])
        assert sorted(ids[ids >= 0].tolist()) == list(range(5000))
        assert all(c.shape[1] == -(-4096 // rows) for c in plan.calls[:-1]) and plan.calls[0].shape[2] == rows
