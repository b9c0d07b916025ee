"""The train step and loop: device iterations, data parallelism, recompilation, checkpoints."""

import dataclasses
import os
import re

import jax
import numpy as np
import pytest

from din_jax import checkpoint as ckpt
from din_jax.config import ConfigError, TrainConfig, checkpoint_metadata
from din_jax.data.batching import plan_chunks
from din_jax.data.synthetic import make_item_categories, make_synthetic_batch
from din_jax.models import build_model
from din_jax.train import loop as training
from din_jax.train import optim
from din_jax.train import setup as builders
from din_jax.train import step as train_lib
from din_jax.train.setup import make_p_train
from din_jax.train.sparse_step import make_sparse_optimizer

NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, T = 50, 60, 6, 12
MODEL_CONFIG = {
    "item_dim": 4,
    "category_dim": 4,
    "attention_hidden": (8, 4),
    "mlp_hidden": (8, 4),
    "activation": "dice",
    "attention_activation": "dice",
}


def _model(axis_name=train_lib.AXIS_NAME, **overrides):
    config = dict(MODEL_CONFIG, **overrides)
    return build_model("din", NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, config, axis_name=axis_name)


def _batches(count, batch_size, seed=0):
    rng = np.random.default_rng(seed)
    categories = make_item_categories(NUM_ITEMS, NUM_CATEGORIES, 0)
    return [
        make_synthetic_batch(rng, batch_size, T, NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, item_category=categories)
        for _ in range(count)
    ]


def _stack(batches, axis=0):
    return {key: np.stack([b[key] for b in batches], axis=axis) for key in batches[0]}


def _state(model, devices, lr=0.5):
    tx = optim.make_optimizer(TrainConfig(use_synthetic_data=True, optimizer="sgd", learning_rate=lr))
    return train_lib.replicate(train_lib.create_train_state(model, tx, seed=3, max_seq_len=T), devices)


def _host(state):
    return train_lib.unreplicate_to_host(state)


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_device_iterations_equal_single_micro_batch_calls():
    model = _model()
    devices = jax.local_devices()[:1]
    p_train = make_p_train(model, devices, donate=False)
    batches = _batches(4, 16)
    one_call, metrics = p_train(_state(model, devices), _stack([_stack(batches)]))
    several = _state(model, devices)
    losses = []
    for batch in batches:
        several, m = p_train(several, _stack([_stack([batch])]))
        losses.append(float(np.asarray(m["loss"])[0, 0]))
    _assert_trees_close(_host(one_call).params, _host(several).params)
    _assert_trees_close(_host(one_call).batch_stats, _host(several).batch_stats)
    np.testing.assert_allclose(np.asarray(metrics["loss"])[0], losses, rtol=1e-5)
    assert int(_host(one_call).step) == 4


def test_two_devices_equal_one_device_with_the_global_batch():
    if jax.local_device_count() < 2:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=2 (set by tests/conftest.py)")
    model = _model()
    batches = _batches(3, 32, seed=1)
    one = jax.local_devices()[:1]
    two = jax.local_devices()[:2]
    single, _ = make_p_train(model, one, donate=False)(_state(model, one), _stack([_stack(batches)]))
    # Device r takes the r-th half of every global micro-batch.
    halves = [_stack([{k: v[r * 16 : (r + 1) * 16] for k, v in b.items()} for b in batches]) for r in range(2)]
    double, metrics = make_p_train(model, two, donate=False)(_state(model, two), _stack(halves))
    _assert_trees_close(_host(single).params, _host(double).params, rtol=1e-4, atol=1e-5)
    _assert_trees_close(_host(single).batch_stats, _host(double).batch_stats, rtol=1e-4, atol=1e-5)
    # Both replicas hold identical parameters.
    leaves = jax.tree_util.tree_leaves(jax.device_get(double.params))
    for leaf in leaves:
        np.testing.assert_array_equal(np.asarray(leaf)[0], np.asarray(leaf)[1])
    np.testing.assert_array_equal(np.asarray(metrics["loss"])[0], np.asarray(metrics["loss"])[1])


class _TraceCounter:
    """A model whose ``apply`` counts its calls: a Python side effect, so it counts traces, not executions."""

    def __init__(self, model):
        self.model, self.traces = model, 0

    def apply(self, *args, **kwargs):
        self.traces += 1
        return self.model.apply(*args, **kwargs)


def test_second_call_with_the_same_shapes_does_not_trace_again():
    model = _model()
    devices = jax.local_devices()[:1]
    counter = _TraceCounter(model)
    p_train = make_p_train(counter, devices, donate=True)
    chunk = _stack([_stack(_batches(2, 8))])
    state = _state(model, devices)
    state, _ = p_train(state, chunk)
    traced = counter.traces
    assert traced >= 1
    for _ in range(3):
        state, _ = p_train(state, chunk)
    assert counter.traces == traced
    predict_counter = _TraceCounter(_model(axis_name=None))
    p_predict = train_lib.make_p_predict_chunk(predict_counter, devices)
    variables = train_lib.replicate({"params": _host(state).params, "batch_stats": _host(state).batch_stats}, devices)
    p_predict(variables, chunk)
    traced = predict_counter.traces
    p_predict(variables, chunk)
    assert traced >= 1 and predict_counter.traces == traced


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path):
    model = _model(axis_name=None)
    variables = train_lib.init_variables(model, seed=5, max_seq_len=T)
    batch = _batches(1, 16, seed=4)[0]
    # Non-trivial statistics, so that batch_stats must round-trip too.
    _, updates = model.apply(variables, batch, train=True, mutable=["batch_stats"])
    variables["batch_stats"] = jax.device_get(updates["batch_stats"])
    expected = np.asarray(model.apply(variables, batch))
    config = TrainConfig(use_synthetic_data=True, model_config=MODEL_CONFIG, max_seq_len=T)
    vocab = {"users": NUM_USERS, "items": NUM_ITEMS, "categories": NUM_CATEGORIES}
    path = str(tmp_path / "best")
    ckpt.save_checkpoint(path, jax.device_get(variables), checkpoint_metadata(config, vocab, 7))
    restored_model, restored = builders.load_variables_for_inference(path, config, vocab)
    np.testing.assert_array_equal(np.asarray(restored_model.apply(restored, batch)), expected)
    assert ckpt.read_metadata(path)["step"] == 7


def test_checkpoint_errors(tmp_path):
    config = TrainConfig(use_synthetic_data=True, model_config=MODEL_CONFIG, max_seq_len=T)
    vocab = {"users": NUM_USERS, "items": NUM_ITEMS, "categories": NUM_CATEGORIES}
    variables = train_lib.init_variables(_model(axis_name=None), seed=0, max_seq_len=T)
    path = str(tmp_path / "ckpt")
    ckpt.save_checkpoint(path, jax.device_get(variables), checkpoint_metadata(config, vocab, 1))
    other = TrainConfig(use_synthetic_data=True, model_config=dict(MODEL_CONFIG, item_dim=6), max_seq_len=T)
    with pytest.raises(ckpt.CheckpointError, match=r"'params/.*' has shape .* but the model expects"):
        builders.load_variables_for_inference(path, other, vocab)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.load_checkpoint(str(tmp_path / "missing"))
    # A flipped byte is caught by the checksum; the file is not trusted.
    state_file = os.path.join(path, ckpt.STATE_FILE)
    data = bytearray(open(state_file, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(state_file, "wb").write(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.load_checkpoint(path)


def test_plan_chunks_covers_each_sample_once():
    order = np.random.default_rng(0).permutation(103)
    plan = plan_chunks(order, replicas=2, device_iterations=4, micro_batch_size=5, drop_remainder=True)
    seen = np.concatenate([c.transpose(1, 0, 2).reshape(-1) for c in plan.calls])
    np.testing.assert_array_equal(seen, order[:100])
    assert [c.shape for c in plan.calls] == [(2, 4, 5), (2, 4, 5), (2, 2, 5)]
    evaluation = plan_chunks(np.arange(103), replicas=2, device_iterations=4, micro_batch_size=5, drop_remainder=False)
    assert sum(evaluation.valid) == 103
    flat = np.concatenate([c.transpose(1, 0, 2).reshape(-1)[:v] for c, v in zip(evaluation.calls, evaluation.valid)])
    np.testing.assert_array_equal(flat, np.arange(103))


def test_learning_rate_schedules(tmp_path):
    paper = optim.make_learning_rate_schedule(
        TrainConfig(use_synthetic_data=True, learning_rate=1.0, lr_schedule="paper", lr_decay_steps=10)
    )
    assert float(paper(9)) == pytest.approx(1.0) and float(paper(10)) == pytest.approx(0.1)
    lr_file = tmp_path / "lr.txt"
    lr_file.write_text("# step lr\n0 0.5\n100, 0.05\n")
    from_file = optim.make_learning_rate_schedule(
        TrainConfig(use_synthetic_data=True, lr_schedule="file", lr_file=str(lr_file))
    )
    assert float(from_file(99)) == pytest.approx(0.5) and float(from_file(100)) == pytest.approx(0.05)
    lr_file.write_text("0 0.5\n100 zero\n")
    with pytest.raises(ConfigError, match=r"lr.txt, line 2: expected 'STEP LR'"):
        optim.read_lr_file(str(lr_file))


def test_config_errors_name_the_flag():
    with pytest.raises(ConfigError, match="--optimizer"):
        TrainConfig(use_synthetic_data=True, optimizer="rmsprop").validate()
    with pytest.raises(ConfigError, match="--dataset"):
        TrainConfig().validate()
    with pytest.raises(ConfigError, match="--replicas 64"):
        train_lib.resolve_devices(64)


def test_training_on_learnable_synthetic_data_reaches_auc_090(tmp_path):
    config = TrainConfig(
        use_synthetic_data=True,
        synthetic_samples=(6000, 1000, 1000),
        max_seq_len=20,
        epochs=3,
        micro_batch_size=32,
        device_iterations=50,
        replicas=1,
        optimizer="adam",
        learning_rate=0.005,
        model_config={"item_dim": 8, "category_dim": 8, "mlp_hidden": (32, 16)},
        model_path=str(tmp_path / "run"),
    )
    summary = training.train_and_evaluate(config)
    assert summary["test"]["auc"] >= 0.9
    assert summary["validation"]["gauc"] >= 0.9
    assert os.path.isfile(tmp_path / "run" / "summary.json")
    assert os.path.isfile(tmp_path / "run" / "best" / ckpt.STATE_FILE)
    assert summary["best_step"] in [h["step"] for h in summary["history"]]


def test_non_finite_loss_stops_with_the_step_and_still_scores_test():
    config = TrainConfig(
        use_synthetic_data=True,
        synthetic_samples=(640, 64, 64),
        max_seq_len=8,
        epochs=1,
        micro_batch_size=32,
        device_iterations=4,
        replicas=1,
        learning_rate=1e30,
        model_config={"item_dim": 4, "category_dim": 4, "mlp_hidden": (4,)},
    )
    summary = training.train_and_evaluate(config)
    stopped = summary["stopped"]
    assert stopped["reason"] == "non-finite" and summary["steps"] == stopped["step"] - 1
    assert re.search(r"at step %d \(epoch 1\); lower --learning_rate" % stopped["step"], stopped["message"])
    # Step 1's huge parameters predict NaN: no step can be selected, so test is not scored (a summary all the same).
    assert summary["test"] is None and summary["validation"] is None
    float16 = dataclasses.replace(config, data_type="float16")
    assert "or lower --loss_scaling (now 1024;" in training.train_and_evaluate(float16)["stopped"]["message"]


@pytest.mark.parametrize("updates", ["dense", "sparse"])
def test_a_non_finite_step_leaves_the_state_of_the_last_good_one(updates):
    # Step 2's batch has a NaN label, so its loss and gradients are NaN: steps 2 and 3 must change nothing.
    model = _model(activation="prelu", attention_activation="sigmoid")
    devices = jax.local_devices()[:1]
    config = TrainConfig(use_synthetic_data=True, max_seq_len=T, learning_rate=0.01)
    tx = make_sparse_optimizer(model, config) if updates == "sparse" else optim.make_optimizer(config)
    state = train_lib.replicate(train_lib.create_train_state(model, tx, seed=3, max_seq_len=T), devices)
    p_train = make_p_train(model, devices, donate=False, embedding_updates=updates)
    batches = _batches(3, 16)
    batches[1]["label"][3] = np.nan
    after_one, _ = p_train(state, _stack([_stack(batches[:1])]))
    after_three, metrics = p_train(state, _stack([_stack(batches)]))
    assert np.asarray(metrics["halted_at"])[0].tolist() == [0, 2, 2]
    host = _host(after_three)
    assert int(host.step) == 1 and int(host.halted_at) == 2
    _assert_trees_close(host.params, _host(after_one).params, rtol=0, atol=0)
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(host.params))


def test_an_exploding_finite_loss_is_warned_about_once(caplog):
    from din_jax.train.stopping import divergence_warning

    with caplog.at_level("WARNING"):
        warned = divergence_warning(0.69, 10, False)
        assert warned is False and caplog.text == ""
        warned = divergence_warning(1e6, 20, warned)
        assert warned is True and "training loss 1e+06 at step 20, far above chance (0.69)" in caplog.text
        divergence_warning(2e6, 30, warned)
        assert caplog.text.count("far above chance") == 1


def test_dropout_draws_its_own_mask_on_each_device():
    devices = jax.local_devices()[:2]
    state = _state(_model(), [devices[0]])
    host = _host(state)
    keys = jax.pmap(lambda s: train_lib.step_dropout_rng(s, "batch"), axis_name="batch", devices=devices)(
        train_lib.replicate(host, devices)
    )
    keys = np.asarray(jax.device_get(keys))
    assert not np.array_equal(keys[0], keys[1])
    # On one device (no axis) the key is the step's.
    one = np.asarray(train_lib.step_dropout_rng(host, None))
    np.testing.assert_array_equal(one, np.asarray(jax.random.fold_in(host.dropout_rng, host.step)))


def test_negatives_are_resampled_by_default_where_the_data_allows_it():
    from din_jax.data.dataset import Dataset
    from din_jax.data.synthetic import make_synthetic_dataset

    config = TrainConfig(
        use_synthetic_data=True,
        synthetic_samples=(320, 64, 64),
        max_seq_len=8,
        epochs=1,
        micro_batch_size=32,
        device_iterations=5,
        replicas=1,
        model_config={"item_dim": 4, "category_dim": 4, "mlp_hidden": (4,)},
    )
    source = make_synthetic_dataset(320, 64, 64, max_seq_len=8, seed=config.seed)
    assert training.Trainer(config, source=source).config.resample_negatives is True
    explicit = dataclasses.replace(config, resample_negatives=False)
    assert training.Trainer(explicit, source=source).config.resample_negatives is False
    fixed = Dataset.from_arrays(
        dict(source.meta, negatives={"resampleable": False}),
        source.sequences,
        source.offsets,
        source.item_category,
        {name: source.samples(name) for name in source.split_names()},
    )
    trainer = training.Trainer(config, source=fixed)
    assert trainer.config.resample_negatives is False
    assert trainer.train(handle_signals=False)["flags"]["resample_negatives"] is False


def test_early_stopping_stops_after_the_patience_and_says_so():
    config = TrainConfig(
        use_synthetic_data=True,
        synthetic_samples=(640, 64, 64),
        max_seq_len=8,
        epochs=8,
        micro_batch_size=32,
        device_iterations=5,
        replicas=1,
        eval_every=5,
        early_stop_patience=2,
        optimizer="sgd",
        learning_rate=1e-30,
        model_config={"item_dim": 4, "category_dim": 4, "mlp_hidden": (4,)},
    )
    # A learning rate of 1e-30 changes nothing: the first evaluation stays the best.
    summary = training.train_and_evaluate(config, handle_signals=False)
    assert summary["stopped"]["reason"] == "early_stop" and summary["best_step"] == 5
    assert summary["steps"] == 15 and [h["step"] for h in summary["history"]] == [5, 10, 15]
    assert "2 evaluations without a better validation gauc than step 5's" in summary["stopped"]["message"]
