"""The history poolers: masking, normalisation, the split first layer, the registry."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from din_jax import layers
from din_jax.layers import DinAttention, DotAttention, History, MeanPooling, SumPooling, masked_softmax

B, T, D = 4, 6, 8
LENGTHS = np.array([0, 1, 3, 6], np.int32)


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    query = rng.normal(size=(B, D)).astype(np.float32)
    keys = rng.normal(size=(B, T, D)).astype(np.float32)
    mask = np.arange(T)[None, :] < LENGTHS[:, None]
    return jnp.asarray(query), jnp.asarray(keys), jnp.asarray(mask)


def padded(query, keys_BxTxD, mask_BxT):
    """A pooler's arguments for padded ``[B, T, D]`` keys with a left-aligned mask."""
    b, t, d = keys_BxTxD.shape
    return query, keys_BxTxD.reshape(b * t, d), History.padded(jnp.sum(mask_BxT, axis=-1), t)


def _with_garbage(keys, mask, seed=1):
    garbage = np.random.default_rng(seed).normal(scale=50.0, size=keys.shape).astype(np.float32)
    return jnp.where(mask[..., None], keys, garbage)


POOLERS = {
    "din_none": DinAttention(normalization="none"),
    "din_softmax": DinAttention(normalization="softmax"),
    "din_dice": DinAttention(activation="dice"),
    "dot": DotAttention(),
    "mean": MeanPooling(),
    "sum": SumPooling(),
}


@pytest.mark.parametrize("name", sorted(POOLERS))
@pytest.mark.parametrize("train", [False, True])
def test_padding_garbage_does_not_change_output(name, train):
    pool = POOLERS[name]
    query, keys, mask = _inputs()
    variables = pool.init(jax.random.PRNGKey(0), *padded(query, keys, mask))
    run = functools.partial(pool.apply, variables, train=train, mutable=["batch_stats"] if train else False)
    clean = run(*padded(query, keys, mask))
    dirty = run(*padded(query, _with_garbage(keys, mask), mask))
    if train:
        clean, dirty = clean[0], dirty[0]
    np.testing.assert_allclose(np.asarray(clean[0]), np.asarray(dirty[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(clean[1]), np.asarray(dirty[1]), rtol=1e-5, atol=1e-6)
    # Weights are zero on padding, and an empty history pools to zeros.
    assert np.all(np.asarray(clean[1]).reshape(B, T)[~np.asarray(mask)] == 0)
    np.testing.assert_array_equal(np.asarray(clean[0])[0], np.zeros(D, np.float32))


@pytest.mark.parametrize("name", sorted(POOLERS))
def test_gradient_wrt_padded_positions_is_exactly_zero(name):
    pool = POOLERS[name]
    query, keys, mask = _inputs()
    keys = _with_garbage(keys, mask)
    variables = pool.init(jax.random.PRNGKey(0), *padded(query, keys, mask))

    def total(keys):
        (pooled, _), _ = pool.apply(variables, *padded(query, keys, mask), train=True, mutable=["batch_stats"])
        return jnp.sum(pooled**2)

    grad = np.asarray(jax.grad(total)(keys))
    unused = ~np.asarray(mask)
    assert np.all(grad[unused] == 0.0)
    assert np.any(grad[~unused] != 0.0)


class _FixedScores(nn.Module):
    """Replaces the attention MLP by known scores, to check normalisation by hand."""

    normalization: str

    @nn.compact
    def __call__(self, scores, keys, mask):
        if self.normalization == "softmax":
            weights = masked_softmax(scores / jnp.sqrt(jnp.float32(keys.shape[-1])), mask)
        else:
            weights = jnp.where(mask, scores, 0.0)
        return jnp.einsum("bt,btd->bd", weights, keys), weights


def test_masked_softmax_by_hand():
    scores = jnp.array([[1.0, 2.0, 3.0], [5.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = jnp.array([[True, True, False], [True, False, False], [False, False, False]])
    weights = np.asarray(masked_softmax(scores, mask))
    e1, e2 = np.exp(1.0), np.exp(2.0)
    np.testing.assert_allclose(weights[0], [e1 / (e1 + e2), e2 / (e1 + e2), 0.0], rtol=1e-6)
    np.testing.assert_allclose(weights[1], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(weights[2], [0.0, 0.0, 0.0])


def test_din_normalizations_on_hand_made_inputs():
    """With a one-unit MLP whose output we set, check both normalisations exactly."""
    dim = 2
    query = jnp.array([[1.0, 0.0]])
    keys = jnp.array([[[1.0, 0.0], [0.0, 1.0], [7.0, 7.0]]])
    mask = jnp.array([[True, True, False]])
    for normalization in ("none", "softmax"):
        pool = DinAttention(hidden=(1,), activation="identity", normalization=normalization)
        variables = jax.tree_util.tree_map(np.asarray, pool.init(jax.random.PRNGKey(0), *padded(query, keys, mask)))
        params = jax.tree_util.tree_map(np.zeros_like, variables["params"])
        # score_j = 2 * (q . k_j) through the product block: kernel rows 3D..4D.
        params["first_kernel"][3 * dim :, 0] = 1.0
        params["Dense_0"]["kernel"][0, 0] = 2.0
        pooled, weights = pool.apply({"params": params}, *padded(query, keys, mask))
        scores = np.array([2.0, 0.0])
        if normalization == "none":
            expected_w = scores
        else:
            z = np.exp(scores / np.sqrt(dim))
            expected_w = z / z.sum()
        np.testing.assert_allclose(np.asarray(weights), np.append(expected_w, 0.0), rtol=1e-6)
        expected = expected_w[0] * np.array([1.0, 0.0]) + expected_w[1] * np.array([0.0, 1.0])
        np.testing.assert_allclose(np.asarray(pooled)[0], expected, rtol=1e-6)
    # Unnormalised weights keep the intensity: they need not sum to one.
    assert not np.isclose(np.asarray(weights).sum(), 2.0)


@pytest.mark.parametrize("activation", ["sigmoid", "dice"])
def test_split_first_layer_equals_concatenation(activation):
    query, keys, mask = _inputs(3)
    split = DinAttention(activation=activation, split_first_layer=True)
    concat = DinAttention(activation=activation, split_first_layer=False)
    variables = split.init(jax.random.PRNGKey(2), *padded(query, keys, mask))

    def loss(module, params, keys):
        (pooled, weights), _ = module.apply(
            {"params": params, "batch_stats": variables.get("batch_stats", {})},
            *padded(query, keys, mask),
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.sum(pooled * pooled) + jnp.sum(weights)

    value_a, grads_a = jax.value_and_grad(functools.partial(loss, split), argnums=(0, 1))(variables["params"], keys)
    value_b, grads_b = jax.value_and_grad(functools.partial(loss, concat), argnums=(0, 1))(variables["params"], keys)
    np.testing.assert_allclose(float(value_a), float(value_b), rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(grads_a), jax.tree_util.tree_leaves(grads_b)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_registry_names_and_errors():
    assert {"din", "din_softmax", "dot", "mean", "sum"} <= set(layers.ATTENTIONS.names())
    with pytest.raises(ValueError, match=r"unknown attention 'nope'; choose from \["):
        layers.make_attention("nope")
    # A preset's bound normalisation wins over the model's default.
    module = layers.make_attention("din_softmax", normalization="none", hidden=(4,))
    assert module.normalization == "softmax" and tuple(module.hidden) == (4,)
    # Poolers without those fields just ignore them.
    assert isinstance(layers.make_attention("mean", hidden=(4,), normalization="none"), MeanPooling)


def test_user_registered_attention_is_usable_by_name():
    class MaxPooling(nn.Module):
        @nn.compact
        def __call__(self, query, keys, history, train=False):
            filled = jnp.where(history.valid_P[:, None], keys, -1e9)
            pooled = jax.ops.segment_max(filled, history.segment_P, history.num_samples)
            pooled = jnp.where(history.count()[:, None] > 0, pooled, 0.0)
            return pooled, history.valid_P.astype(jnp.float32)

    layers.register_attention("test_max", MaxPooling)
    try:
        with pytest.raises(ValueError, match="already registered"):
            layers.register_attention("test_max", MaxPooling)
        query, keys, mask = _inputs()
        pool = layers.make_attention("test_max", hidden=(3,))
        pooled, _ = pool.apply({}, *padded(query, keys, mask))
        np.testing.assert_allclose(np.asarray(pooled)[2], np.asarray(keys)[2, :3].max(axis=0))
    finally:
        layers.ATTENTIONS._entries.pop("test_max", None)
