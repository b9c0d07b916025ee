"""Reduced precision and chunked inference give the float32 predictions (within stated tolerances)."""

import jax
import numpy as np
import pytest

from din_jax import metrics, optim, train_lib
from din_jax.config import TrainConfig
from din_jax.data.pipeline import gather_chunk, plan_chunks
from din_jax.data.synthetic import make_synthetic_dataset
from din_jax.models import build_model

T = 20
MODEL_CONFIG = {"item_dim": 8, "category_dim": 8, "user_dim": 4, "attention_hidden": (16, 8), "mlp_hidden": (16, 8),
                "activation": "prelu", "attention_activation": "sigmoid"}

# Tolerances on probabilities of a trained model (float32 parameters, the
# compute dtype only changes): float16 keeps 11 significant bits, bfloat16 8.
TOLERANCE = {"float16": {"max_abs_p": 0.01, "auc": 0.003}, "bfloat16": {"max_abs_p": 0.05, "auc": 0.01}}


@pytest.fixture(scope="module")
def trained():
    source = make_synthetic_dataset(2048, 0, 1024, max_seq_len=T, num_users=40, num_items=120, num_categories=8,
                                    seed=2, length_spec="uniform:1:%d" % T)
    model = build_model("din", 40, 120, 8, MODEL_CONFIG, axis_name=train_lib.AXIS_NAME)
    config = TrainConfig(use_synthetic_data=True, optimizer="adam", learning_rate=0.01, max_seq_len=T)
    devices = jax.local_devices()[:1]
    state = train_lib.replicate(train_lib.create_train_state(model, optim.make_optimizer(config), 0, T), devices)
    p_train = train_lib.make_p_train_chunk(model, devices, donate=False)
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
