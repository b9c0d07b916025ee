"""dien, bst and multi-head target attention: the cells, the masks and the auxiliary loss against direct
computations, and each model through training (resume included), inference, ranking, the harness and the benchmark."""

import json
import math
import os
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from din_jax import checkpoint as ckpt
from din_jax.benchmark import BenchmarkConfig, run_benchmark
from din_jax.config import ConfigError, TrainConfig, resolve_config
from din_jax.data.batching import history_negatives_rng
from din_jax.data.negatives import add_history_negatives, contains_keys
from din_jax.data.synthetic import make_synthetic_dataset
from din_jax.inference import Predictor
from din_jax.layers import HISTORY_NEGATIVES, ITEM_TABLE, LOSSES
from din_jax.models import build_model, reads_packed_history, wants_history_negatives
from din_jax.models.bst import TransformerBlock, attention_mask
from din_jax.models.dien import auxiliary_loss
from din_jax.models.gru import GRU
from din_jax.train import loop as training
from din_jax.train.step import compute_loss, create_train_state, extra_losses, make_train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(item_dim=4, category_dim=4, mlp_hidden=(6,))
SEQUENCE_MODELS = {
    "dien": ("dien", dict(SMALL, attention_hidden=(5,), aux_hidden=(5,))),
    "dien_aigru": ("dien", dict(SMALL, attention_hidden=(5,), aux_hidden=(5,), evolution="aigru")),
    "bst": ("bst", dict(SMALL, attention_heads=2)),
    "bst_causal_mean": ("bst", dict(SMALL, attention_heads=2, causal_attention=True, bst_output="mean")),
    "mha": ("din", dict(SMALL, attention="mha", attention_heads=2)),
}
SOURCE = make_synthetic_dataset(400, 100, 100, max_seq_len=10, num_users=30, num_items=60, seed=5)


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _batch(rows=4, length=8, seed=0):
    batch = SOURCE.gather("train", np.arange(rows) + seed, length)
    batch["hist_len"] = np.array([length, 3, 1, 0][:rows], np.int32)
    valid = np.arange(length)[None] < batch["hist_len"][:, None]
    batch["hist_item"] = np.where(valid, batch["hist_item"], 0).astype(np.int32)
    batch["hist_category"] = np.where(valid, batch["hist_category"], 0).astype(np.int32)
    return batch


# -- GRU cells --------------------------------------------------------------------------------------------------


def _one_unit_gru(kind):
    """A GRU of one unit on one input whose only non-zero weight is the candidate's input weight 1."""
    params = {"input_kernel": jnp.array([[0.0, 0.0, 1.0]]), "recurrent_kernel": jnp.zeros((1, 3)), "bias": jnp.zeros(3)}
    return GRU(1, kind), {"params": params}


@pytest.mark.parametrize(
    "kind, first",
    [
        # u = r = sigmoid(0) = 0.5, n = tanh(1): h1 = u * n.
        ("gru", 0.5 * math.tanh(1.0)),
        ("augru", 0.5 * 0.5 * math.tanh(1.0)),  # u' = a u
        ("aigru", 0.5 * math.tanh(0.5)),  # i' = a i
        ("agru", 0.5 * math.tanh(1.0)),  # u = a
    ],
)
def test_the_cells_match_hand_computed_values(kind, first):
    gru, variables = _one_unit_gru(kind)
    inputs = jnp.ones((1, 2, 1))
    outputs, final = gru.apply(variables, inputs, jnp.ones((1, 2), bool), jnp.full((1, 2), 0.5))
    assert float(outputs[0, 0, 0]) == pytest.approx(first, rel=1e-6)
    # Second step: the recurrent weights are 0, so the gates and the candidate are those of step 1 again.
    candidate = math.tanh(0.5) if kind == "aigru" else math.tanh(1.0)
    update = {"gru": 0.5, "augru": 0.25, "aigru": 0.5, "agru": 0.5}[kind]
    second = first + update * (candidate - first)
    assert float(final[0, 0]) == pytest.approx(second, rel=1e-6)


def test_a_cell_with_recurrent_weights_matches_the_papers_equations():
    rng = np.random.default_rng(0)
    gru = GRU(3, "augru")
    x = rng.normal(size=(1, 2, 2)).astype(np.float32)
    a = np.array([[0.3, 0.8]], np.float32)
    variables = gru.init(jax.random.PRNGKey(0), x, np.ones((1, 2), bool), a)
    p = jax.tree_util.tree_map(np.asarray, flax.core.unfreeze(variables)["params"])
    w, u, b = p["input_kernel"], p["recurrent_kernel"], p["bias"]
    h = np.zeros(3)
    for t in range(2):  # the paper's eq. 1-4 and 6, written out
        gx, gh = x[0, t] @ w + b, h @ u
        update = 1 / (1 + np.exp(-(gx[:3] + gh[:3])))
        reset = 1 / (1 + np.exp(-(gx[3:6] + gh[3:6])))
        candidate = np.tanh(gx[6:] + reset * gh[6:])
        update = a[0, t] * update
        h = (1 - update) * h + update * candidate
    _, final = gru.apply(variables, x, np.ones((1, 2), bool), a)
    np.testing.assert_allclose(np.asarray(final[0]), h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["gru", "augru", "aigru", "agru"])
def test_a_padded_history_gives_the_unpadded_result_and_padding_gets_no_gradient(kind):
    rng = np.random.default_rng(1)
    lengths = np.array([6, 2, 0])
    x = rng.normal(size=(3, 6, 4)).astype(np.float32)
    valid = np.arange(6)[None] < lengths[:, None]
    scores = rng.uniform(size=(3, 6)).astype(np.float32)
    gru = GRU(5, kind)
    variables = gru.init(jax.random.PRNGKey(0), x, valid, scores)
    outputs, final = gru.apply(variables, x, valid, scores)
    for row, length in enumerate(lengths):
        if length == 0:
            assert not np.any(np.asarray(final[row])) and not np.any(np.asarray(outputs[row]))
            continue
        alone = gru.apply(
            variables, x[row : row + 1, :length], valid[row : row + 1, :length], scores[row : row + 1, :length]
        )
        np.testing.assert_allclose(np.asarray(alone[1][0]), np.asarray(final[row]), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.asarray(alone[0][0]), np.asarray(outputs[row, :length]), rtol=1e-6, atol=1e-7)
    assert not np.any(np.asarray(outputs)[~valid])

    def total(x, scores):
        outputs, final = gru.apply(variables, x, valid, scores)
        return jnp.sum(outputs**2) + jnp.sum(final)

    grad_x, grad_scores = jax.grad(total, argnums=(0, 1))(x, scores)
    assert np.all(np.asarray(grad_x)[~valid] == 0.0) and np.any(np.asarray(grad_x)[valid] != 0.0)
    assert np.all(np.asarray(grad_scores)[~valid] == 0.0)


# -- the auxiliary loss and its negatives --------------------------------------------------------------------------


def test_the_auxiliary_loss_equals_a_direct_computation():
    rng = np.random.default_rng(2)
    states, clicked, negatives = (rng.normal(size=(2, 4, 3)).astype(np.float32) for _ in range(3))
    valid = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    weights = rng.normal(size=6).astype(np.float32)

    def net(features):
        return features @ weights

    expected, count = 0.0, 0
    for b in range(2):
        for t in range(3):
            if valid[b, t + 1]:
                click = float(np.concatenate([states[b, t], clicked[b, t + 1]]) @ weights)
                other = float(np.concatenate([states[b, t], negatives[b, t + 1]]) @ weights)
                expected -= math.log(_sigmoid(click)) + math.log(1.0 - _sigmoid(other))
                count += 1
    got = auxiliary_loss(net, states, clicked, negatives, valid)
    assert float(got) == pytest.approx(expected / count, rel=1e-5)


def test_history_negatives_never_hit_the_users_items_and_are_reproducible():
    source = make_synthetic_dataset(300, 0, 0, max_seq_len=10, num_users=30, num_items=120, seed=1)
    indices = np.arange(64).reshape(2, 32)
    batch = source.gather("train", indices.reshape(-1), 10)
    batch = {key: value.reshape(indices.shape + value.shape[1:]) for key, value in batch.items()}
    add_history_negatives(source, batch, np.random.default_rng(7))
    negatives = batch[HISTORY_NEGATIVES[0]]
    valid = np.arange(10) < batch["hist_len"][..., None]
    users = np.broadcast_to(batch["user"][..., None], negatives.shape)
    keys = users[valid].astype(np.int64) * source.num_items + negatives[valid]
    assert not contains_keys(source.user_item_keys(), keys).any()
    assert len(np.unique(negatives[valid])) > 5  # drawn, not constant
    assert not negatives[~valid].any() and not batch[HISTORY_NEGATIVES[1]][~valid].any()
    np.testing.assert_array_equal(batch[HISTORY_NEGATIVES[1]][valid], source.item_category[negatives[valid]])
    again = dict(batch)
    add_history_negatives(source, again, np.random.default_rng(7))
    np.testing.assert_array_equal(again[HISTORY_NEGATIVES[0]], negatives)
    config = TrainConfig(model="dien", use_synthetic_data=True, batching="padded")
    first = history_negatives_rng(config, 2, 5).integers(0, 10**9, 4)
    np.testing.assert_array_equal(first, history_negatives_rng(config, 2, 5).integers(0, 10**9, 4))
    assert not np.array_equal(first, history_negatives_rng(config, 2, 6).integers(0, 10**9, 4))


def test_dien_adds_its_weighted_auxiliary_loss_to_the_training_loss_only():
    batch = _batch()
    add_history_negatives(SOURCE, batch, np.random.default_rng(0))
    values = {}
    for weight in (1.0, 2.5):
        model = build_model("dien", *_vocab(), dict(SEQUENCE_MODELS["dien"][1], aux_loss_weight=weight))
        variables = flax.core.unfreeze(model.init(jax.random.PRNGKey(0), batch))
        params = {"params": variables["params"]}
        _, updates = model.apply(params, batch, train=True, mutable=[LOSSES])
        values[weight] = float(extra_losses(updates))
        _, updates = model.apply(params, batch, train=False, mutable=[LOSSES])
        assert float(extra_losses(updates)) == 0.0  # evaluation: no auxiliary loss
    assert values[1.0] > 0 and values[2.5] == pytest.approx(2.5 * values[1.0], rel=1e-5)

    # The train step's loss is the data loss plus the auxiliary loss.
    import optax

    model = build_model("dien", *_vocab(), SEQUENCE_MODELS["dien"][1])
    state = create_train_state(model, optax.sgd(0.0), 0, batch["hist_item"].shape[1])
    _, metrics = jax.jit(make_train_step(model, axis_name=None))(state, batch)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits, updates = model.apply(variables, batch, train=True, mutable=["batch_stats", LOSSES])
    expected = float(compute_loss(logits, batch["label"]) + extra_losses(updates))
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="auxiliary loss needs training batches"):
        model.apply(variables, _batch(), train=True, mutable=["batch_stats", LOSSES])


def _vocab():
    return SOURCE.num_users, SOURCE.num_items, SOURCE.num_categories


# -- what padding and masks may change --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SEQUENCE_MODELS))
def test_padded_positions_change_nothing_and_valid_ones_do(name):
    model_name, config = SEQUENCE_MODELS[name]
    model = build_model(model_name, *_vocab(), config)
    batch = _batch()
    variables = model.init(jax.random.PRNGKey(0), batch)
    logits = np.asarray(model.apply(variables, batch))
    assert np.all(np.isfinite(logits))  # the empty history (row 3) too
    valid = np.arange(8)[None] < batch["hist_len"][:, None]
    garbage = dict(
        batch,
        hist_item=np.where(valid, batch["hist_item"], 59),
        hist_category=np.where(valid, batch["hist_category"], 3),
    )
    np.testing.assert_array_equal(np.asarray(model.apply(variables, garbage)), logits)
    changed = dict(batch, hist_item=np.where(valid, (batch["hist_item"] + 1) % 60, 0))
    assert not np.allclose(np.asarray(model.apply(variables, changed))[:3], logits[:3])

    def loss(params):
        return jnp.sum(model.apply(dict(variables, params=params), garbage))

    table = np.asarray(
        flax.traverse_util.flatten_dict(flax.core.unfreeze(jax.grad(loss)(variables["params"])))[
            ("embedding", ITEM_TABLE)
        ]
    )
    if 59 not in garbage["item"] and 59 not in batch["hist_item"][valid]:
        assert not np.any(table[59])  # the id only at padded positions gets exactly zero gradient


def test_the_attention_masks_are_as_specified():
    valid = np.array([[True, True, False, True]])
    padding = np.asarray(attention_mask(valid, causal=False))[0]
    assert (padding == np.array([[1, 1, 0, 1]] * 4, bool)).all()
    causal = np.asarray(attention_mask(valid, causal=True))[0]
    expected = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 1]], bool)
    assert (causal == expected).all()


def test_a_causal_block_does_not_look_ahead():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 5, 4)).astype(np.float32)
    block = TransformerBlock(heads=2)
    mask = attention_mask(np.ones((1, 5), bool), causal=True)
    variables = block.init(jax.random.PRNGKey(0), x, mask)
    later = x.copy()
    later[0, 3:] += 1.0
    before, after = np.asarray(block.apply(variables, x, mask)), np.asarray(block.apply(variables, later, mask))
    np.testing.assert_allclose(before[0, :3], after[0, :3], rtol=1e-6, atol=1e-6)
    assert not np.allclose(before[0, 3:], after[0, 3:])
    full = attention_mask(np.ones((1, 5), bool), causal=False)
    assert not np.allclose(np.asarray(block.apply(variables, later, full))[0, :3], before[0, :3])


def test_sizes_that_do_not_fit_are_one_line_errors():
    batch = _batch()
    for model_name, config in (
        ("bst", dict(SMALL, attention_heads=3)),
        ("din", dict(SMALL, attention="mha", attention_heads=3)),
    ):
        with pytest.raises(ValueError, match="--attention_heads 3 must divide the item vector's width 8"):
            build_model(model_name, *_vocab(), config).init(jax.random.PRNGKey(0), batch)
    with pytest.raises(ValueError, match="--evolution must be one of"):
        build_model("dien", *_vocab(), dict(SMALL, evolution="lstm")).init(jax.random.PRNGKey(0), batch)


# -- configuration and training ----------------------------------------------------------------------------------


def test_dien_and_bst_train_padded_by_default_and_refuse_packed():
    assert not reads_packed_history("dien") and not reads_packed_history("bst") and reads_packed_history("din")
    assert wants_history_negatives("dien") and not wants_history_negatives("dien", {"aux_loss_weight": 0.0})
    assert not wants_history_negatives("bst")
    assert resolve_config(overrides={"model": "dien", "use_synthetic_data": True}).batching == "padded"
    assert resolve_config(overrides={"model": "din", "use_synthetic_data": True}).batching == "packed"
    with pytest.raises(ConfigError, match="--batching packed: model bst reads each history as a row"):
        resolve_config(overrides={"model": "bst", "use_synthetic_data": True, "batching": "packed"})


RESUME = dict(
    use_synthetic_data=True,
    synthetic_samples=(192, 32, 32),
    max_seq_len=8,
    epochs=2,
    micro_batch_size=16,
    eval_micro_batch_size=64,
    device_iterations=4,
    replicas=1,
    optimizer="adam",
    learning_rate=0.01,
    checkpoint_every=4,
    batching="padded",
)


# mha is DIN with another pooler: DIN's resume tests cover it.
@pytest.mark.parametrize("name", ["dien", "bst"])
def test_an_interrupted_run_resumes_bit_for_bit(name, tmp_path):
    model, config = SEQUENCE_MODELS[name]
    settings = dict(RESUME, model=model, model_config=dict(config, dropout_rate=0.1))
    straight = training.train_and_evaluate(TrainConfig(model_path=str(tmp_path / "straight"), **settings))
    assert np.isfinite(straight["test"]["logloss"])
    path = str(tmp_path / "run")
    trainer = training.Trainer(TrainConfig(model_path=path, **settings))

    class Stop:
        def on_train_call(self, record):
            if record["step"] >= 8:
                trainer.request_stop("a test")

    trainer.hooks.append(Stop())
    with pytest.raises(training.TrainingInterrupted):
        trainer.train()
    resumed = training.train_and_evaluate(TrainConfig(model_path=path, resume=True, **settings))
    assert resumed["resumed_from"] and resumed["test"] == straight["test"]
    a, b = (
        ckpt.load_checkpoint(os.path.join(path, "last"))[0],
        ckpt.load_checkpoint(str(tmp_path / "straight" / "last"))[0],
    )
    assert sorted(a) == sorted(b) and all(np.array_equal(a[key], b[key]) for key in a)
    # "last": validation here is too small for a GAUC, so no step is "best".
    ranked = Predictor.from_checkpoint(path, which="last").rank(history=[3, 1, 4], candidate_items=[2, 7, 9], k=2)
    assert len(ranked) == 2 and ranked[0][1] >= ranked[1][1]


def _run(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable] + args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_dien_trains_infers_and_ranks_through_the_commands(tmp_path):
    run = str(tmp_path / "dien")
    common = ["--use_synthetic_data", "--synthetic_samples=512,128,128", "--max_seq_len=8", "--attention_size=8"]
    _run(
        [
            "experiments/train.py",
            "--model=dien",
            "--evolution=agru",
            "--epochs=1",
            "--micro_batch_size=32",
            "--device_iterations=4",
            "--optimizer=adam",
            "--learning_rate=0.01",
            "--model_path",
            run,
        ]
        + common
    )
    meta = json.load(open(os.path.join(run, "best", ckpt.META_FILE)))
    assert meta["model"] == "dien" and meta["model_config"]["evolution"] == "agru" and meta["batching"] == "padded"
    out = _run(["experiments/infer.py", "--model_path", run, "--split=test"]).stdout
    assert "gauc" in out
    predictor = Predictor.from_checkpoint(run)
    ranked = predictor.rank(history=[3, 1, 4, 1, 5], candidate_items=[2, 7, 9], k=3)
    assert sorted(item for item, _ in ranked) == [2, 7, 9]
    assert predictor.returns_attention  # dien's attention over its GRU states


def test_the_harness_and_the_benchmark_run_the_new_models(tmp_path):
    results = str(tmp_path / "grid.jsonl")
    _run(
        [
            "experiments/ablate.py",
            "--use_synthetic_data",
            "--synthetic_samples=384,96,96",
            "--max_seq_len=8",
            "--attention_size=8",
            "--epochs=1",
            "--micro_batch_size=32",
            "--device_iterations=4",
            "--seeds=0",
            "--variant=dien: --model=dien",
            "--variant=bst: --model=bst",
            "--variant=mha: --model=din --attention=mha",
            "--results",
            results,
            "--report",
            str(tmp_path / "report"),
        ]
    )
    records = [json.loads(line) for line in open(results)]
    finished = [r for r in records if r["status"] != "started"]
    assert {r["cell"] for r in finished} == {"dien", "bst", "mha"} and all(r["status"] == "ok" for r in finished)
    # Training draws dien's negatives; inference needs none.
    for model, config, mode in (("dien", {}, "train"), ("bst", {}, "infer"), ("din", {"attention": "mha"}, "train")):
        bench = BenchmarkConfig(
            mode=mode,
            micro_batch_sizes=(16,),
            device_iterations=2,
            model=model,
            model_config=dict(SMALL, **config),
            samples=256,
            max_seq_len=10,
            windows=1,
            batching="packed" if model == "din" else "padded",
            lengths="uniform:1:10",
        )
        row = run_benchmark(bench)[0]
        assert row["samples_per_s"] > 0 and row["model"] == model
