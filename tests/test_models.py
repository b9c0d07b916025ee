"""The models of the comparison: forward shapes, padding invariance, their parts, registry errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from din_jax.config import get_preset
from din_jax.data.synthetic import make_item_categories, make_synthetic_batch
from din_jax.models import MODELS, build_model, model_fields
from din_jax.models.deepfm import fm_second_order
from din_jax.models.pnn import pairwise_inner_products
from din_jax.models.wide_deep import cross_ids

NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, T, B = 12, 40, 6, 7, 9
COMPETITORS = ("lr", "base", "wide_deep", "pnn", "deepfm")
SMALL = {"item_dim": 4, "category_dim": 4, "mlp_hidden": (8, 4)}


def _config(name, **overrides):
    """Small sizes for a model, only the fields it has."""
    config = dict(SMALL, attention_hidden=(8, 4), **overrides)
    fields = model_fields(name)
    return {key: value for key, value in config.items() if key in fields}


def _batch(seed=0, batch_size=B):
    rng = np.random.default_rng(seed)
    categories = make_item_categories(NUM_ITEMS, NUM_CATEGORIES, 0)
    batch = make_synthetic_batch(rng, batch_size, T, NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, item_category=categories)
    batch["hist_len"][0] = 0  # an empty history
    batch["hist_len"][1] = T  # a full one
    return batch


def _init_apply(model, batch, train=False):
    variables = model.init(jax.random.PRNGKey(0), batch)
    if train:
        out, _ = model.apply(
            variables, batch, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.PRNGKey(1)}
        )
        return variables, out
    return variables, model.apply(variables, batch)


def test_every_paper_model_is_registered():
    assert set(COMPETITORS) | {"din"} <= set(MODELS.names())


@pytest.mark.parametrize("name", COMPETITORS + ("din",))
def test_forward_gives_float32_logits_of_shape_batch(name):
    model = build_model(name, NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, _config(name))
    batch = _batch()
    _, logits = _init_apply(model, batch)
    assert logits.shape == (B,) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(logits)))
    _, train_logits = _init_apply(model, batch, train=True)
    assert train_logits.shape == (B,)


@pytest.mark.parametrize("name", COMPETITORS)
def test_unequal_widths_and_bfloat16_compute(name):
    config = _config(name, category_dim=2, user_dim=3, activation="dice")
    model = build_model(name, NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, dict(config, dtype=jnp.bfloat16))
    # Traced, not run: shapes and dtypes are what this checks.
    logits = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), _batch())[0])
    assert logits.shape == (B,) and logits.dtype == jnp.float32


_DIN_VARIANTS = {
    "din": {},
    "din_softmax_dice": {"attention_normalization": "softmax", "attention_activation": "dice", "activation": "dice"},
    "din_unsplit_history_sum": {"split_attention": False, "use_history_sum": True},
}


@pytest.mark.parametrize("name", COMPETITORS + tuple(_DIN_VARIANTS))
@pytest.mark.parametrize("train", [False, True])
def test_padded_history_positions_do_not_matter(name, train):
    model_name = "din" if name in _DIN_VARIANTS else name
    config = _config(model_name, user_dim=2, **_DIN_VARIANTS.get(name, {}))
    model = build_model(model_name, NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, config)
    batch = _batch(seed=1)
    garbage = dict(batch)
    padded = np.arange(T)[None, :] >= batch["hist_len"][:, None]
    rng = np.random.default_rng(5)
    garbage["hist_item"] = np.where(padded, rng.integers(0, NUM_ITEMS, (B, T)), batch["hist_item"]).astype(np.int32)
    garbage["hist_category"] = np.where(padded, rng.integers(0, NUM_CATEGORIES, (B, T)), batch["hist_category"]).astype(
        np.int32
    )
    # In training, Dice's batch statistics must not see the padded positions either.
    variables, logits = _init_apply(model, batch, train=train)
    _, garbage_logits = _init_apply(model, garbage, train=train)
    np.testing.assert_allclose(np.asarray(garbage_logits), np.asarray(logits), rtol=1e-6, atol=1e-6)


def test_lr_is_the_sum_of_the_active_feature_weights():
    model = build_model("lr", NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, {"user_dim": 1, "pooling": "mean"})
    batch = _batch(seed=2)
    variables = model.init(jax.random.PRNGKey(3), batch)
    params = jax.device_get(variables["params"])
    tables = params["linear"]["embedding"]
    item, category, user = np.asarray(tables["item"]), np.asarray(tables["category"]), np.asarray(tables["user"])
    expected = []
    for b in range(B):
        n = batch["hist_len"][b]
        history = 0.0
        if n:
            history = item[batch["hist_item"][b, :n], 1].mean() + category[batch["hist_category"][b, :n], 1].mean()
        expected.append(
            float(params["bias"])
            + item[batch["item"][b], 0]
            + category[batch["category"][b], 0]
            + history
            + user[batch["user"][b], 0]
        )
    np.testing.assert_allclose(np.asarray(model.apply(variables, batch)), expected, rtol=1e-5, atol=1e-6)
    assert "item_dim" not in model_fields("lr")


def test_base_pooling_mean_and_sum_differ_and_sum_scales_with_length():
    batch = _batch(seed=3)
    outputs = {}
    for pooling in ("mean", "sum"):
        model = build_model("base", NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, _config("base", pooling=pooling))
        outputs[pooling] = np.asarray(_init_apply(model, batch)[1])
    # Same initialisation, so histories of length <= 1 give identical scores.
    short = batch["hist_len"] <= 1
    np.testing.assert_allclose(outputs["mean"][short], outputs["sum"][short], rtol=1e-6)
    assert not np.allclose(outputs["mean"][~short], outputs["sum"][~short])


def test_pairwise_inner_products_and_fm_second_order_match_brute_force():
    fields = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    pairs = list(itertools.combinations(range(5), 2))
    brute = np.array([[fields[b, i] @ fields[b, j] for i, j in pairs] for b in range(3)])
    np.testing.assert_allclose(np.asarray(pairwise_inner_products(jnp.asarray(fields))), brute, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(fm_second_order(jnp.asarray(fields))), brute.sum(axis=1), rtol=1e-4, atol=1e-4
    )


def test_cross_ids_exact_when_they_fit_hashed_in_range_otherwise():
    left = jnp.array([0, 3, 5], jnp.int32)
    right = jnp.array([[0, 1], [2, 5], [5, 4]], jnp.int32)
    exact = np.asarray(cross_ids(left, right, 6, 36))
    np.testing.assert_array_equal(exact, np.asarray(left)[:, None] * 6 + np.asarray(right))
    big = jnp.array([2**30, 7], jnp.int32)
    hashed = np.asarray(cross_ids(big, jnp.array([[3], [3]], jnp.int32), 1000, 17))
    assert hashed.dtype == np.int32 and np.all((hashed >= 0) & (hashed < 17))


def test_wide_deep_cross_tables_are_capped_by_wide_buckets():
    model = build_model("wide_deep", NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, _config("wide_deep", wide_buckets=50))
    params = model.init(jax.random.PRNGKey(0), _batch())["params"]
    assert params["category_cross"].shape == (NUM_CATEGORIES * NUM_CATEGORIES, 1)
    assert params["item_category_cross"].shape == (50, 1)


def test_pnn_products():
    batch = _batch(seed=4)
    widths = {}
    for product in ("inner", "elementwise", "both"):
        model = build_model("pnn", NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, _config("pnn", product=product))
        params = model.init(jax.random.PRNGKey(0), batch)["params"]
        widths[product] = params["mlp"]["Dense_0"]["kernel"].shape[0]
    # [pooled, candidate] = 16, + 6 inner products of 4 fields, + 8 element-wise products.
    assert widths == {"inner": 16 + 6, "elementwise": 16 + 8, "both": 16 + 6 + 8}


def test_registry_and_field_errors():
    with pytest.raises(ValueError, match=r"unknown model 'nope'; choose from \[.*'base'.*'lr'"):
        build_model("nope", NUM_USERS, NUM_ITEMS, NUM_CATEGORIES)
    with pytest.raises(ValueError, match=r"model 'lr' has no field\(s\) \['attention'\]"):
        build_model("lr", NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, {"attention": "din"})
    with pytest.raises(ValueError, match="unknown attention 'nope'"):
        model = build_model("base", NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, _config("base", pooling="nope"))
        model.init(jax.random.PRNGKey(0), _batch())
    with pytest.raises(ValueError, match="unknown PNN product"):
        model = build_model("pnn", NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, _config("pnn", product="outer"))
        model.init(jax.random.PRNGKey(0), _batch())
    with pytest.raises(ValueError, match="lr pools the history bag"):
        build_model("lr", NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, {"pooling": "din"}).init(
            jax.random.PRNGKey(0), _batch()
        )


def test_competitor_presets_name_only_fields_of_their_model():
    for name in ("base_amazon", "wide_deep_amazon", "pnn_amazon", "deepfm_amazon"):
        preset = get_preset(name)
        assert set(preset["model_config"]) <= set(model_fields(preset["model"]))
        build_model(preset["model"], NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, preset["model_config"])


# The worked example of docs/RESULTS.md ("Your own attention"), verbatim.
CUSTOM_ATTENTION_EXAMPLE = '''
import flax.linen as nn
import jax.numpy as jnp

from din_jax.layers import register_attention


class CosineAttention(nn.Module):
    """Softmax over the history of the cosine similarity to the candidate."""

    temperature: float = 0.1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, query_BxD, keys_PxD, history, train=False):
        q_BxD = query_BxD / (jnp.linalg.norm(query_BxD, axis=-1, keepdims=True) + 1e-6)
        k_PxD = keys_PxD / (jnp.linalg.norm(keys_PxD, axis=-1, keepdims=True) + 1e-6)
        weights_P = history.softmax(jnp.sum(history.spread(q_BxD) * k_PxD, axis=-1) / self.temperature)
        return history.weighted_sum(weights_P, keys_PxD), weights_P


register_attention("cosine", CosineAttention, overwrite=True)
'''


def test_the_custom_attention_example_runs_in_din_and_base():
    namespace = {}
    exec(compile(CUSTOM_ATTENTION_EXAMPLE, "my_attention.py", "exec"), namespace)
    batch = _batch(seed=6)
    model = build_model("din", NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, _config("din", attention="cosine"))
    variables = model.init(jax.random.PRNGKey(0), batch)
    logits, weights = model.apply(variables, batch, return_attention=True)
    assert logits.shape == (B,)
    sums = np.asarray(weights).sum(axis=1)
    np.testing.assert_allclose(sums[batch["hist_len"] > 0], 1.0, rtol=1e-5)
    assert sums[0] == 0.0  # the empty history
    base = build_model("base", NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, _config("base", pooling="cosine"))
    assert jax.eval_shape(lambda: base.init_with_output(jax.random.PRNGKey(0), batch)[0]).shape == (B,)


@pytest.mark.parametrize("attention", ["din", "din_softmax", "dot", "mean", "sum"])
def test_every_registered_attention_in_din(attention):
    model = build_model("din", NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, _config("din", attention=attention))
    assert jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), _batch())[0]).shape == (B,)


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "prelu", "dice"])
def test_every_registered_activation_in_the_competitors(activation):
    for name in ("base", "wide_deep", "pnn", "deepfm"):
        model = build_model(name, NUM_USERS, NUM_ITEMS, NUM_CATEGORIES, _config(name, activation=activation))
        out = jax.eval_shape(lambda m=model: m.init_with_output(jax.random.PRNGKey(0), _batch(), train=True)[0])
        assert out.shape == (B,)
