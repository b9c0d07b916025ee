"""Reduced precision and chunked inference give the float32 predictions (within stated tolerances)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from din_jax import metrics
from din_jax.config import ConfigError, TrainConfig
from din_jax.data.batching import gather_chunk, plan_chunks
from din_jax.data.synthetic import make_synthetic_dataset
from din_jax.models import build_model
from din_jax.train import optim
from din_jax.train import step as train_lib
from din_jax.train.setup import make_p_train

T = 20
MODEL_CONFIG = {
    "item_dim": 8,
    "category_dim": 8,
    "user_dim": 4,
    "attention_hidden": (16, 8),
    "mlp_hidden": (16, 8),
    "activation": "prelu",
    "attention_activation": "sigmoid",
}

# Tolerances on probabilities of a trained model (float32 parameters, the
# compute dtype only changes): float16 keeps 11 significant bits, bfloat16 8.
TOLERANCE = {"float16": {"max_abs_p": 0.01, "auc": 0.003}, "bfloat16": {"max_abs_p": 0.05, "auc": 0.01}}


@pytest.fixture(scope="module")
def trained():
    source = make_synthetic_dataset(
        2048,
        0,
        1024,
        max_seq_len=T,
        num_users=40,
        num_items=120,
        num_categories=8,
        seed=2,
        length_spec="uniform:1:%d" % T,
    )
    model = build_model("din", 40, 120, 8, MODEL_CONFIG, axis_name=train_lib.AXIS_NAME)
    config = TrainConfig(use_synthetic_data=True, optimizer="adam", learning_rate=0.01, max_seq_len=T)
    devices = jax.local_devices()[:1]
    state = train_lib.replicate(train_lib.create_train_state(model, optim.make_optimizer(config), 0, T), devices)
    p_train = make_p_train(model, devices, donate=False)
    plan = plan_chunks(np.random.default_rng(0).permutation(2048), 1, 16, 32, drop_remainder=True)
    for _ in range(3):
        for indices in plan.calls:
            state, _ = p_train(state, gather_chunk(source, "train", indices, T))
    host = train_lib.unreplicate_to_host(state)
    batch = source.gather("test", np.arange(1024), T)
    return {"params": host.params, "batch_stats": host.batch_stats}, batch


def _predict(variables, batch, data_type):
    model = build_model("din", 40, 120, 8, dict(MODEL_CONFIG, dtype=train_lib.compute_dtype(data_type)))
    return np.asarray(jax.jit(lambda v, b: model.apply(v, b))(variables, batch), np.float64)


@pytest.mark.parametrize("data_type", ["float16", "bfloat16"])
def test_reduced_precision_predictions_are_close_to_float32(trained, data_type):
    variables, batch = trained
    reference = _predict(variables, batch, "float32")
    auc = metrics.compute_auc(batch["label"], reference)
    assert auc > 0.8  # the model learnt something, so the comparison means something
    logits = _predict(variables, batch, data_type)
    assert np.all(np.isfinite(logits))
    p, p32 = 1 / (1 + np.exp(-logits)), 1 / (1 + np.exp(-reference))
    assert np.max(np.abs(p - p32)) < TOLERANCE[data_type]["max_abs_p"]
    assert abs(metrics.compute_auc(batch["label"], logits) - auc) < TOLERANCE[data_type]["auc"]


def test_inference_in_row_chunks_equals_the_whole_batch(trained):
    variables, batch = trained
    model = build_model("din", 40, 120, 8, MODEL_CONFIG)
    devices = jax.local_devices()[:1]
    replicated = train_lib.replicate(variables, devices)
    chunk = {key: value.reshape((1, 2, 512) + value.shape[1:]) for key, value in batch.items()}
    whole = np.asarray(train_lib.make_p_predict_chunk(model, devices)(replicated, chunk))
    chunked = np.asarray(train_lib.make_p_predict_chunk(model, devices, positions_per_pass=128 * T)(replicated, chunk))
    assert chunked.shape == whole.shape == (1, 2, 512)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def _gradient_recorder():
    """An optimiser whose state is the last gradient and whose update is zero: the step's gradient, read back."""
    import optax

    def update(grads, state, params=None):
        return jax.tree_util.tree_map(jnp.zeros_like, grads), grads

    return optax.GradientTransformation(lambda params: jax.tree_util.tree_map(jnp.zeros_like, params), update)


def _step_gradient(data_type, loss_scale, variables, batch, sizes):
    model = build_model("din", 40, 120, 8, dict(sizes, dtype=train_lib.compute_dtype(data_type)))
    state = train_lib.TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=_gradient_recorder(),
        batch_stats=variables["batch_stats"],
        dropout_rng=jax.random.PRNGKey(0),
    )
    step = jax.jit(train_lib.make_train_step(model, axis_name=None, loss_scale=loss_scale))
    new_state, metrics = step(state, batch)
    flat = traverse_util.flatten_dict(flax.core.unfreeze(new_state.opt_state))
    return {key: np.asarray(value, np.float64) for key, value in flat.items()}, float(metrics["loss"])


def test_loss_scaling_keeps_float16_gradients_and_leaves_float32_bit_for_bit():
    # The din_amazon widths: the attention unit gets the smallest gradients. A
    # large micro-batch makes each sample's cotangents small (the loss is a mean).
    sizes = dict(
        MODEL_CONFIG, item_dim=64, category_dim=64, attention_hidden=(80, 40), mlp_hidden=(80, 40), activation="dice"
    )
    rows = 1024
    source = make_synthetic_dataset(
        rows, 0, 8, max_seq_len=T, num_users=40, num_items=120, num_categories=8, seed=3, length_spec="uniform:1:%d" % T
    )
    batch = source.gather("train", np.arange(rows), T)
    variables = train_lib.init_variables(build_model("din", 40, 120, 8, sizes), 0, T)
    reference, loss = _step_gradient("float32", 1.0, variables, batch, sizes)
    scaled, scaled_loss = _step_gradient("float32", 1024.0, variables, batch, sizes)
    assert scaled_loss == loss  # the reported loss is the data loss
    for key in reference:  # a power of two scales every float32 product exactly
        np.testing.assert_array_equal(scaled[key], reference[key], err_msg="/".join(key))

    def error(gradients, key):
        return np.linalg.norm(gradients[key] - reference[key]) / np.linalg.norm(reference[key])

    plain, _ = _step_gradient("float16", 1.0, variables, batch, sizes)
    kept, _ = _step_gradient("float16", 1024.0, variables, batch, sizes)
    # Without scaling float16 cotangents underflow in the attention unit's first layer: 9 % (kernel) and 108 %
    # (bias) relative error with jax 0.10, 6 % and 6 % with jax 0.4.13, which sums in float32; scaled, 0.07 % and
    # 2.7 % (0.07 % and 0.1 %), float16's rounding of the sums.
    kernel, bias = ("attention_unit", "first_kernel"), ("attention_unit", "first_bias")
    assert error(plain, kernel) > 0.03 and error(kept, kernel) < 0.01
    assert error(plain, bias) > 0.03 and error(kept, bias) < 0.05
    attention = [key for key in reference if key[0] == "attention_unit"]
    assert sum(error(kept, key) for key in attention) < sum(error(plain, key) for key in attention) / 3


def test_loss_scaling_flag_resolution():
    assert TrainConfig(use_synthetic_data=True).effective_loss_scaling() == 1.0
    assert TrainConfig(use_synthetic_data=True, data_type="bfloat16").effective_loss_scaling() == 1.0
    assert TrainConfig(use_synthetic_data=True, data_type="float16").effective_loss_scaling() == 1024.0
    assert TrainConfig(use_synthetic_data=True, data_type="float16", loss_scaling=128).effective_loss_scaling() == 128
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="--loss_scaling must be a finite number >= 0"):
            TrainConfig(use_synthetic_data=True, loss_scaling=bad).validate()
