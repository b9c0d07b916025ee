"""Activations: Dice's statistics in training and inference, PReLU, the registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from din_jax import layers
from din_jax.layers import Dice, PReLU


def _dice_by_hand(x, mean, var, alpha, eps=1e-8):
    p = 1.0 / (1.0 + np.exp(-(x - mean) / np.sqrt(var + eps)))
    return p * x + (1.0 - p) * alpha * x


def test_dice_training_uses_batch_statistics_and_updates_moving_averages():
    x = np.array([[1.0, -2.0], [3.0, 0.0], [-1.0, 4.0], [5.0, 2.0]], np.float32)
    dice = Dice(momentum=0.9)
    variables = dice.init(jax.random.PRNGKey(0), jnp.asarray(x))
    params = {"alpha": jnp.array([0.25, -0.5], jnp.float32)}
    out, updates = dice.apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, jnp.asarray(x), train=True, mutable=["batch_stats"]
    )
    mean, var = x.mean(axis=0), x.var(axis=0)
    np.testing.assert_allclose(np.asarray(out), _dice_by_hand(x, mean, var, np.array([0.25, -0.5])), rtol=1e-5)
    stats = updates["batch_stats"]
    np.testing.assert_allclose(np.asarray(stats["mean"]), 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(stats["var"]), 0.9 * 1.0 + 0.1 * var, rtol=1e-6)


def test_dice_inference_uses_moving_averages_not_the_batch():
    x = np.array([[1.0, -2.0], [3.0, 0.0]], np.float32)
    dice = Dice()
    stats = {"mean": jnp.array([10.0, -3.0]), "var": jnp.array([4.0, 0.25])}
    params = {"alpha": jnp.array([0.1, 0.2], jnp.float32)}
    out = dice.apply({"params": params, "batch_stats": stats}, jnp.asarray(x), train=False)
    expected = _dice_by_hand(x, np.array([10.0, -3.0]), np.array([4.0, 0.25]), np.array([0.1, 0.2]))
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5)
    # The output of one row does not depend on the other rows at inference.
    single = dice.apply({"params": params, "batch_stats": stats}, jnp.asarray(x[:1]), train=False)
    np.testing.assert_allclose(np.asarray(single)[0], np.asarray(out)[0], rtol=1e-6)


def test_dice_initial_alpha_is_zero_and_epsilon_is_1e8():
    dice = Dice()
    variables = dice.init(jax.random.PRNGKey(0), jnp.ones((3, 5)))
    np.testing.assert_array_equal(np.asarray(variables["params"]["alpha"]), np.zeros(5))
    assert dice.epsilon == 1e-8


def test_dice_mask_excludes_padding_from_statistics():
    x = np.array([[[1.0], [3.0], [100.0]]], np.float32)  # [B=1, T=3, H=1]
    mask = np.array([[True, True, False]])
    dice = Dice(momentum=0.0)
    variables = dice.init(jax.random.PRNGKey(0), jnp.asarray(x))
    _, updates = dice.apply(variables, jnp.asarray(x), train=True, mask=jnp.asarray(mask), mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(updates["batch_stats"]["mean"]), [2.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(updates["batch_stats"]["var"]), [1.0], rtol=1e-6)


def test_prelu_per_channel():
    prelu = PReLU()
    x = jnp.array([[-2.0, 3.0], [4.0, -1.0]])
    out = prelu.apply({"params": {"alpha": jnp.array([0.5, 0.1])}}, x)
    np.testing.assert_allclose(np.asarray(out), [[-1.0, 3.0], [4.0, -0.1]], rtol=1e-6)


def test_registry():
    assert {"sigmoid", "relu", "prelu", "dice"} <= set(layers.ACTIVATIONS.names())
    with pytest.raises(ValueError, match=r"unknown activation 'swishy'; choose from \["):
        layers.make_activation("swishy")
    # axis_name reaches only the activations that have the field.
    assert layers.make_activation("dice", axis_name="batch").axis_name == "batch"
    assert isinstance(layers.make_activation("relu", axis_name="batch"), layers.ReLU)
