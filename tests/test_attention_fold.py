"""The first attention layer with the query folded in equals the concatenated and the split forms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from din_jax.layers import DinAttention, History

B, T, D = 5, 7, 6


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    query = jnp.asarray(rng.normal(size=(B, D)).astype(np.float32))
    keys = jnp.asarray(rng.normal(size=(B, T, D)).astype(np.float32))
    history = History.padded(jnp.array([0, 1, 3, 7, 5]), T)
    return query, keys.reshape(B * T, D), history


FORMS = {
    "concat": dict(split_first_layer=False),
    "split": dict(split_first_layer=True, fold_query=False),
    "fold": dict(split_first_layer=True, fold_query=True, fold_min_length=0),
}


@pytest.mark.parametrize("activation", ["sigmoid", "dice"])
@pytest.mark.parametrize("normalization", ["none", "softmax"])
def test_all_forms_agree_forward_and_gradient(activation, normalization):
    query, keys, mask = _inputs(1)
    modules = {
        name: DinAttention(hidden=(8, 4), activation=activation, normalization=normalization, **form)
        for name, form in FORMS.items()
    }
    variables = modules["fold"].init(jax.random.PRNGKey(3), query, keys, mask)

    def loss(module, params, query, keys):
        (pooled, weights), _ = module.apply(
            {"params": params, "batch_stats": variables.get("batch_stats", {})},
            query,
            keys,
            mask,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.sum(pooled * pooled) + jnp.sum(jnp.sin(weights))

    results = {
        name: jax.value_and_grad(functools.partial(loss, module), argnums=(0, 1, 2))(variables["params"], query, keys)
        for name, module in modules.items()
    }
    value, grads = results["concat"]
    for name in ("split", "fold"):
        other_value, other_grads = results[name]
        np.testing.assert_allclose(float(other_value), float(value), rtol=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(other_grads), jax.tree_util.tree_leaves(grads)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_fold_is_used_from_its_minimum_length_on():
    query, keys, mask = _inputs(2)
    short = DinAttention(hidden=(8,), fold_min_length=T + 1)
    folded = DinAttention(hidden=(8,), fold_min_length=T)
    variables = short.init(jax.random.PRNGKey(0), query, keys, mask)
    jaxpr_short = str(jax.make_jaxpr(lambda v: short.apply(v, query, keys, mask))(variables))
    jaxpr_folded = str(jax.make_jaxpr(lambda v: folded.apply(v, query, keys, mask))(variables))
    # The folded form has a batched product (the per-sample matrix); the split form has none.
    assert "dot_general" in jaxpr_folded and jaxpr_folded.count("dot_general") < jaxpr_short.count("dot_general")
    np.testing.assert_allclose(
        np.asarray(folded.apply(variables, query, keys, mask)[0]),
        np.asarray(short.apply(variables, query, keys, mask)[0]),
        rtol=1e-5,
        atol=1e-6,
    )
