"""Length buckets: every sample once, static shapes, determinism, and unchanged mathematics."""

import jax
import numpy as np
import pytest

from din_jax.config import ConfigError, TrainConfig
from din_jax.data.batching import (
    gather_chunk,
    normalize_buckets,
    parse_length_buckets,
    plan_bucketed_chunks,
    plan_chunks,
    plan_split_chunks,
)
from din_jax.data.synthetic import make_synthetic_dataset
from din_jax.models import build_model
from din_jax.train import optim
from din_jax.train import step as train_lib
from din_jax.train.evaluation import predict_split
from din_jax.train.loop import Trainer
from din_jax.train.setup import make_p_train

MAX_LEN = 20
BUCKETS = (4, 8, 12, 20)
MODEL_CONFIG = {
    "item_dim": 4,
    "category_dim": 4,
    "attention_hidden": (8, 4),
    "mlp_hidden": (8, 4),
    "activation": "prelu",
}


def _lengths(n, seed=0):
    # Skewed like real histories: mostly short.
    rng = np.random.default_rng(seed)
    return np.minimum(rng.geometric(0.15, size=n), MAX_LEN).astype(np.int32)


def _flat(plan):
    return np.concatenate([c.transpose(1, 0, 2).reshape(-1)[:v] for c, v in zip(plan.calls, plan.valid)])


def test_normalize_and_parse():
    assert parse_length_buckets("8, 16,32") == (8, 16, 32)
    assert parse_length_buckets("") == ()
    assert normalize_buckets((4, 8), 20) == (4, 8, 20)
    assert normalize_buckets((), 20) == (20,)
    assert normalize_buckets((20,), 20) == (20,)
    with pytest.raises(ValueError, match="outside"):
        normalize_buckets((0, 8), 20)
    with pytest.raises(ValueError, match="increase"):
        normalize_buckets((8, 8), 20)
    with pytest.raises(ValueError, match="integers"):
        parse_length_buckets("8,x")


@pytest.mark.parametrize("replicas,k,b", [(1, 3, 8), (2, 4, 5), (1, 1, 16)])
def test_every_sample_once_in_static_shapes_that_hold_its_history(replicas, k, b):
    n = 1013
    lengths = _lengths(n)
    order = np.random.default_rng(1).permutation(n)
    plan = plan_bucketed_chunks(order, lengths, BUCKETS, replicas, k, b, drop_remainder=True, shuffle_seed=[7, 1])
    global_batch = replicas * b
    seen = _flat(plan)
    assert len(seen) == len(np.unique(seen))
    assert len(seen) == (n // global_batch) * global_batch  # only the remainder < one global batch is dropped
    dropped = np.setdiff1d(order, seen)
    assert len(dropped) < global_batch
    allowed_k = {k} | {2**i for i in range(8) if 2**i < k}
    for indices, seq_len, valid in zip(plan.calls, plan.seq_lens, plan.valid):
        assert indices.shape[0] == replicas and indices.shape[2] == b and indices.shape[1] in allowed_k
        assert seq_len in BUCKETS
        assert lengths[indices].max() <= seq_len
        assert valid == indices.size
    # Steps per epoch do not change with buckets.
    assert sum(c.shape[1] for c in plan.calls) == n // global_batch


def test_buckets_cut_the_padding():
    n = 4000
    lengths = _lengths(n)
    plan = plan_bucketed_chunks(np.arange(n), lengths, BUCKETS, 1, 4, 16, shuffle_seed=[0, 1])
    padded = sum(c.size * t for c, t in zip(plan.calls, plan.seq_lens))
    assert padded < 0.6 * n * MAX_LEN


def test_the_plan_is_a_function_of_the_seed():
    n = 700
    lengths = _lengths(n)
    order = np.random.default_rng(3).permutation(n)
    a = plan_bucketed_chunks(order, lengths, BUCKETS, 1, 2, 8, shuffle_seed=[5, 2])
    b = plan_bucketed_chunks(order, lengths, BUCKETS, 1, 2, 8, shuffle_seed=[5, 2])
    c = plan_bucketed_chunks(order, lengths, BUCKETS, 1, 2, 8, shuffle_seed=[5, 3])
    assert a.seq_lens == b.seq_lens and all(np.array_equal(x, y) for x, y in zip(a.calls, b.calls))
    assert a.seq_lens != c.seq_lens or not all(np.array_equal(x, y) for x, y in zip(a.calls, c.calls))


def test_one_bucket_is_plan_chunks():
    n = 301
    order = np.random.default_rng(4).permutation(n)
    for buckets in [(MAX_LEN,)]:
        plan = plan_bucketed_chunks(order, _lengths(n), buckets, 2, 3, 7, drop_remainder=True)
        reference = plan_chunks(order, 2, 3, 7, drop_remainder=True)
        assert len(plan.calls) == len(reference.calls)
        for x, y in zip(plan.calls, reference.calls):
            np.testing.assert_array_equal(x, y)
        assert plan.seq_lens == [MAX_LEN] * len(plan.calls)


def test_evaluation_plans_cover_every_sample_with_padding():
    n = 555
    lengths = _lengths(n, seed=2)
    plan = plan_bucketed_chunks(np.arange(n), lengths, BUCKETS, 2, 3, 8, drop_remainder=False)
    seen = _flat(plan)
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))
    assert sum(plan.valid) == n


def test_config_validates_the_buckets_and_the_update_mode():
    TrainConfig(use_synthetic_data=True, length_buckets=(8, 16), max_seq_len=20, batching="padded").validate()
    with pytest.raises(ConfigError, match="--length_buckets"):
        TrainConfig(use_synthetic_data=True, length_buckets=(16, 8), max_seq_len=20, batching="padded").validate()
    with pytest.raises(ConfigError, match="--length_buckets"):
        TrainConfig(use_synthetic_data=True, length_buckets=(8, 30), max_seq_len=20, batching="padded").validate()
    with pytest.raises(ConfigError, match="--length_buckets .* --batching padded"):
        TrainConfig(use_synthetic_data=True, length_buckets=(8, 16), max_seq_len=20).validate()
    with pytest.raises(ConfigError, match="--packed_positions"):
        TrainConfig(use_synthetic_data=True, packed_positions=10, max_seq_len=20).validate()
    with pytest.raises(ConfigError, match="--batching"):
        TrainConfig(use_synthetic_data=True, batching="ragged").validate()
    with pytest.raises(ConfigError, match="--embedding_updates"):
        TrainConfig(use_synthetic_data=True, embedding_updates="lazy").validate()
    with pytest.raises(ConfigError, match="--l2"):
        TrainConfig(use_synthetic_data=True, embedding_updates="sparse", l2=0.1).validate()


def _source():
    return make_synthetic_dataset(
        600,
        0,
        203,
        max_seq_len=MAX_LEN,
        num_users=30,
        num_items=60,
        num_categories=6,
        seed=1,
        length_spec="uniform:1:%d" % MAX_LEN,
    )


def test_bucketed_predictions_equal_padded_ones_in_the_stored_order():
    source = _source()
    model = build_model("din", source.num_users, source.num_items, source.num_categories, MODEL_CONFIG)
    variables = train_lib.init_variables(model, 0, MAX_LEN)
    devices = jax.local_devices()[:1]
    p_predict = train_lib.make_p_predict_chunk(model, devices)
    plain = predict_split(p_predict, variables, source, "test", devices, 16, 3, MAX_LEN)
    bucketed = predict_split(p_predict, variables, source, "test", devices, 16, 3, MAX_LEN, length_buckets=BUCKETS)
    np.testing.assert_array_equal(plain["user"], bucketed["user"])
    np.testing.assert_array_equal(plain["label"], bucketed["label"])
    np.testing.assert_allclose(plain["logits"], bucketed["logits"], rtol=1e-5, atol=1e-6)


def test_a_train_step_on_a_shorter_bucket_equals_the_padded_step():
    source = _source()
    model = build_model(
        "din", source.num_users, source.num_items, source.num_categories, MODEL_CONFIG, axis_name=train_lib.AXIS_NAME
    )
    devices = jax.local_devices()[:1]
    config = TrainConfig(use_synthetic_data=True, learning_rate=0.5, max_seq_len=MAX_LEN)
    plan = plan_split_chunks(source, "train", np.arange(600), MAX_LEN, BUCKETS, 1, 2, 16, drop_remainder=True)
    indices, seq_len = next((c, t) for c, t in zip(plan.calls, plan.seq_lens) if t < MAX_LEN)
    p_train = make_p_train(model, devices, donate=False)
    results = []
    for length in (seq_len, MAX_LEN):
        state = train_lib.replicate(
            train_lib.create_train_state(model, optim.make_optimizer(config), 0, MAX_LEN), devices
        )
        state, metrics = p_train(state, gather_chunk(source, "train", indices, length))
        results.append((train_lib.unreplicate_to_host(state).params, np.asarray(metrics["loss"])))
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(results[0][0]), jax.tree_util.tree_leaves(results[1][0])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_trainer_with_buckets_and_sparse_updates_runs_whole_epochs():
    source = make_synthetic_dataset(
        640,
        128,
        0,
        max_seq_len=MAX_LEN,
        num_users=30,
        num_items=60,
        num_categories=6,
        seed=1,
        length_spec="uniform:1:%d" % MAX_LEN,
    )
    config = TrainConfig(
        use_synthetic_data=True,
        max_seq_len=MAX_LEN,
        micro_batch_size=16,
        device_iterations=4,
        replicas=1,
        epochs=2,
        learning_rate=0.5,
        model_config=MODEL_CONFIG,
        length_buckets=(5, 10),
        batching="padded",
        embedding_updates="sparse",
        prefetch=1,
        checkpoint_every=0,
    )
    trainer = Trainer(config, source)
    first = trainer._epoch_plan(1)
    again = trainer._epoch_plan(1)
    assert first.seq_lens == again.seq_lens and len(set(first.seq_lens)) > 1
    summary = trainer.train(handle_signals=False)
    assert summary["steps"] == 2 * (640 // 16)
    assert {shape[1] for shape in trainer._compiled_shapes} <= {5, 10, MAX_LEN}
    assert np.isfinite(summary["validation"]["logloss"])
