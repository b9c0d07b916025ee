"""Predictor: scores equal the trained model's, ranking gives each candidate its own attention."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import write_dataset_directory

from din_jax import checkpoint as ckpt
from din_jax.config import TrainConfig
from din_jax.data.synthetic import make_synthetic_dataset
from din_jax.inference import Predictor
from din_jax.rank_requests import read_rank_requests
from din_jax.train import loop as training
from din_jax.train.setup import load_variables_for_inference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = dict(
    use_synthetic_data=True,
    synthetic_samples=(640, 64, 64),
    max_seq_len=10,
    epochs=2,
    micro_batch_size=32,
    eval_micro_batch_size=32,
    device_iterations=5,
    replicas=1,
    optimizer="adam",
    learning_rate=0.02,
    checkpoint_every=0,
    model_config={
        "item_dim": 6,
        "category_dim": 6,
        "attention_hidden": (8,),
        "mlp_hidden": (8,),
        "activation": "dice",
        "attention_activation": "dice",
    },
)


def _write_metadata(directory, meta):
    """Rewrites a checkpoint's JSON as a valid one (with its checksum), as another writer would have."""
    meta[ckpt.META_CHECKSUM] = ckpt.metadata_checksum(meta)
    json.dump(meta, open(os.path.join(directory, ckpt.META_FILE), "w"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("predictor") / "run")
    config = TrainConfig(model_path=path, **CONFIG)
    training.train_and_evaluate(config)
    source = make_synthetic_dataset(*CONFIG["synthetic_samples"], max_seq_len=CONFIG["max_seq_len"], seed=config.seed)
    return path, config, source


def test_predict_equals_the_model_on_dataset_batches(run):
    path, config, source = run
    predictor = Predictor.from_checkpoint(path)
    np.testing.assert_array_equal(predictor.item_category, source.item_category)
    batch = source.gather("test", np.arange(37), config.max_seq_len)  # not a bucket size: padded inside
    model, variables = load_variables_for_inference(
        os.path.join(path, "best"),
        config,
        {"users": source.num_users, "items": source.num_items, "categories": source.num_categories},
    )
    expected = np.asarray(jax.jit(model.apply)(variables, batch))
    np.testing.assert_allclose(predictor.logits(batch), expected, rtol=1e-5, atol=1e-5)
    probabilities = predictor.predict({k: batch[k] for k in ("item", "hist_item", "hist_len", "user")})
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-expected.astype(np.float64))), rtol=1e-5, atol=1e-6)
    # Row by row gives the same: inference never mixes rows (Dice uses its moving averages).
    single = np.concatenate([predictor.logits({k: v[i : i + 1] for k, v in batch.items()}) for i in range(5)])
    np.testing.assert_allclose(single, expected[:5], rtol=1e-5, atol=1e-5)


def test_rank_scores_every_candidate_with_its_own_attention(run):
    path, config, source = run
    predictor = Predictor.from_checkpoint(path)
    batch = source.gather("test", np.array([3]), config.max_seq_len)
    history = list(batch["hist_item"][0, : batch["hist_len"][0]])
    candidates = list(range(0, 500, 7))
    ranking = predictor.rank(history, candidates, k=5)
    assert len(ranking) == 5
    scores = [score for _, score in ranking]
    assert scores == sorted(scores, reverse=True)
    everything = predictor.rank(history, candidates, k=None)
    assert sorted(item for item, _ in everything) == sorted(candidates) and everything[:5] == ranking
    # Each candidate scored alone, as its own sample, gives the same score.
    for item, score in ranking:
        alone = predictor.predict({"item": [item], "hist_item": [history], "hist_len": [len(history)]})[0]
        assert alone == pytest.approx(score, rel=1e-5, abs=1e-7)
    # Candidates of different categories attend differently to the same history.
    logits, weights = predictor.score(history, candidates[:6])
    assert weights.shape == (6, len(history))
    assert np.ptp(weights, axis=0).max() > 1e-3
    # Longer histories keep their last max_seq_len items; an empty one is allowed.
    long_history = list(range(100, 130)) + history
    np.testing.assert_allclose(
        predictor.score(long_history, candidates)[0],
        predictor.score(long_history[-config.max_seq_len :], candidates)[0],
        rtol=1e-6,
    )
    assert np.all(np.isfinite(predictor.score([], candidates[:3])[0]))
    with pytest.raises(ValueError, match="candidate item id 500 is out of range"):
        predictor.rank(history, [1, 500])
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        predictor.rank(history, [1], k=0)


def test_from_checkpoint_reads_run_best_last_and_training_checkpoints(run, tmp_path):
    path, config, source = run
    batch = source.gather("validation", np.arange(8), config.max_seq_len)
    best = Predictor.from_checkpoint(path).logits(batch)
    np.testing.assert_array_equal(Predictor.from_checkpoint(os.path.join(path, "best")).logits(batch), best)
    last = Predictor.from_checkpoint(path, which="last").logits(batch)
    newest = ckpt.list_step_checkpoints(os.path.join(path, "checkpoints"))[-1][1]
    np.testing.assert_array_equal(Predictor.from_checkpoint(newest).logits(batch), last)

    # A checkpoint without its own item -> category map falls back to its data.
    copy = str(tmp_path / "copy")
    shutil.copytree(os.path.join(path, "best"), copy)
    meta = json.load(open(os.path.join(copy, ckpt.META_FILE)))
    del meta["arrays"]
    _write_metadata(copy, meta)
    os.remove(os.path.join(copy, "item_category.npy"))
    np.testing.assert_array_equal(Predictor.from_checkpoint(copy).item_category, source.item_category)

    # Corrupt, truncated or mismatched checkpoints: one line naming the checkpoint.
    shutil.copytree(os.path.join(path, "best"), str(tmp_path / "bad"))
    bad = str(tmp_path / "bad")
    categories = os.path.join(bad, "item_category.npy")
    open(categories, "ab").write(b"x")
    with pytest.raises(ckpt.CheckpointError, match="corrupt: item_category.npy checksum"):
        Predictor.from_checkpoint(bad)
    meta = json.load(open(os.path.join(bad, ckpt.META_FILE)))
    meta["model_config"]["mlp_hidden"] = [16]
    _write_metadata(bad, meta)
    with pytest.raises(ckpt.CheckpointError, match="has shape .* but the model expects"):
        Predictor.from_checkpoint(bad)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint at"):
        Predictor.from_checkpoint(str(tmp_path / "nowhere"))


def test_rank_requests_are_checked_with_file_and_line(run, tmp_path):
    path, _, _ = run
    predictor = Predictor.from_checkpoint(path)
    good = tmp_path / "good.jsonl"
    good.write_text(
        '{"user": 3, "history": [1, 2], "candidates": [5, 6], "id": "a"}\n\n{"history": [], "candidates": [7]}\n'
    )
    requests = read_rank_requests(str(good), predictor)
    assert [(r.line, r.user, r.history, r.candidates, r.id) for r in requests] == [
        (1, 3, [1, 2], [5, 6], "a"),
        (3, None, [], [7], None),
    ]
    cases = {
        '{"history": [1], "candidates": [2]\n': "bad.jsonl:1: not valid JSON",
        "[1, 2]\n": "bad.jsonl:1: expected a JSON object",
        '{"history": [1]}\n': "bad.jsonl:1: missing 'candidates'",
        '{"history": [1], "candidates": []}\n': "bad.jsonl:1: 'candidates' is empty",
        '{"history": [1], "candidates": [1.5]}\n': "bad.jsonl:1: 'candidates' holds 1.5",
        '{"history": [true], "candidates": [1]}\n': "bad.jsonl:1: 'history' holds True",
        '{"history": [1], "candidate": [1]}\n': "bad.jsonl:1: unknown key\\(s\\) \\['candidate'\\]",
        '\n{"history": [1], "candidates": [1, 999]}\n': "bad.jsonl:2: 'candidates' id 999 is out of range",
        '{"history": [1], "candidates": [1], "user": 1.5}\n': "bad.jsonl:1: 'user' must be an integer id",
        "": "no requests",
        '{"history": ' + "[" * 50000 + "]" * 50000 + "}\n": "bad.jsonl:1: nested too deeply",
    }
    bad = tmp_path / "bad.jsonl"
    for text, message in cases.items():
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_rank_requests(str(bad), predictor)
    # This model has no user embedding: any user id is accepted and ignored.
    assert not predictor.uses_user
    bad.write_text('{"history": [1], "candidates": [1], "user": 5000}\n')
    assert read_rank_requests(str(bad), predictor)[0].user == 5000


def test_infer_rank_candidates_command(run, tmp_path):
    path, config, source = run
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        '{"user": 1, "history": [10, 20, 30], "candidates": [1, 2, 3, 4, 5], "id": 7}\n'
        '{"history": [40], "candidates": [6, 7]}\n'
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    command = [
        sys.executable,
        os.path.join(ROOT, "experiments", "infer.py"),
        "--model_path",
        path,
        "--rank_candidates",
        str(requests),
        "--top_k",
        "3",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    predictor = Predictor.from_checkpoint(path)
    assert rows[0]["line"] == 1 and rows[0]["id"] == 7 and rows[0]["user"] == 1
    assert [(r["item"], r["score"]) for r in rows[0]["ranking"]] == [
        (item, pytest.approx(score, rel=1e-6)) for item, score in predictor.rank([10, 20, 30], [1, 2, 3, 4, 5], k=3)
    ]
    assert rows[1]["line"] == 2 and len(rows[1]["ranking"]) == 2 and "id" not in rows[1]

    requests.write_text('{"history": [10], "candidates": [1]}\n{"history": [10], "candidates": "1"}\n')
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "infer.py: error: %s:2: 'candidates' must be a list of item ids, got str" % requests
    )


def test_rank_rejects_ids_that_are_not_integers_and_ranks_a_repeated_id_once(run):
    path, config, source = run
    predictor = Predictor.from_checkpoint(path)
    history = [10, 20, 30]
    bad = {
        "history must hold integer ids, got float 3.7": lambda: predictor.rank([3.7], [12]),
        "candidate_items must hold integer ids, got float 12.9": lambda: predictor.rank([3], [12, 12.9]),
        "candidate_items must hold integer ids, got str '12'": lambda: predictor.rank([3], ["12"]),
        "candidate_items must hold integer ids, got bool True": lambda: predictor.rank([3], [True]),
        "candidate_items must be a sequence of integer item ids .* got int 12": lambda: predictor.rank([3], 12),
        "history must be a sequence of integer item ids .* got str '3 4'": lambda: predictor.rank("3 4", [1]),
        "candidate_items must be one-dimensional, got shape \\(1, 2\\)": lambda: predictor.score([3], [[1, 2]]),
        "no candidate_items to score": lambda: predictor.rank([3], []),
        "user must be an integer id, got float 2.0": lambda: predictor.rank([3], [1], user=2.0),
        "batch\\['item'\\] must hold integer ids, got float 1.5": lambda: predictor.predict(
            {"item": [1.5], "hist_item": [[1]], "hist_len": [1]}
        ),
        "batch\\['hist_item'\\] has shape \\(3,\\), which does not fit the 2 rows": lambda: predictor.predict(
            {"item": [1, 2], "hist_item": [1, 2, 3], "hist_len": [1, 1]}
        ),
    }
    for message, call in bad.items():
        with pytest.raises(ValueError, match="^(Predictor.(rank|score): )?" + message) as error:
            call()
        assert "\n" not in str(error.value)
    # Integer arrays of any width, tuples, ranges and iterators are fine.
    expected = predictor.rank(history, [5, 7, 9], k=None)
    assert predictor.rank(np.array(history, np.uint16), (5, 7, 9), k=None) == expected
    assert predictor.rank(iter(history), range(5, 10, 2), k=None) == expected

    # A repeated candidate takes one place (its first), unless asked otherwise.
    ranking = predictor.rank(history, [5, 7, 5, 9, 7], k=None)
    assert ranking == expected
    assert predictor.rank(history, [5, 7, 5, 9, 7], k=2) == expected[:2]
    repeated = predictor.rank(history, [5, 7, 5, 9, 7], k=None, keep_duplicates=True)
    assert sorted(item for item, _ in repeated) == [5, 5, 7, 7, 9]
    # Without a user embedding the user id is ignored, whatever its value.
    assert predictor.rank(history, [5, 7, 9], k=None, user=10**9) == expected


def test_a_model_with_a_user_embedding_needs_a_user_id(tmp_path):
    from din_jax.train.setup import build_model_for
    from din_jax.train.step import init_variables

    vocab = {"users": 40, "items": 60, "categories": 5}
    config = TrainConfig(use_synthetic_data=True, max_seq_len=6, model_config=dict(CONFIG["model_config"], user_dim=4))
    model = build_model_for(config, vocab, axis_name=None)
    variables = jax.device_get(init_variables(model, 0, config.max_seq_len))
    item_category = np.arange(vocab["items"]) % vocab["categories"]
    predictor = Predictor(model, variables, item_category, config.max_seq_len, vocab["users"], uses_user=True)
    with pytest.raises(ValueError, match=r"^Predictor.rank: the model has a user embedding .* pass user="):
        predictor.rank([1, 2], [3, 4])
    with pytest.raises(ValueError, match=r"^Predictor.score: the model has a user embedding"):
        predictor.score([1, 2], [3, 4])
    with pytest.raises(ValueError, match=r"^Predictor.rank: user id 40 is out of range \[0, 40\)"):
        predictor.rank([1, 2], [3, 4], user=40)
    with pytest.raises(ValueError, match=r"^batch\['user'\]: the model has a user embedding"):
        predictor.predict({"item": [3], "hist_item": [[1, 2]], "hist_len": [2]})
    # The user id matters here, and rank equals predict row by row.
    first = predictor.rank([1, 2], [3, 4, 5], k=None, user=np.int64(7))
    alone = predictor.predict({"item": [first[0][0]], "hist_item": [[1, 2]], "hist_len": [2], "user": [7]})[0]
    assert alone == pytest.approx(first[0][1], rel=1e-5)
    requests = tmp_path / "requests.jsonl"
    requests.write_text('{"history": [1], "candidates": [2]}\n')
    with pytest.raises(ValueError, match="requests.jsonl:1: the model has a user embedding: give 'user'"):
        read_rank_requests(str(requests), predictor)
    requests.write_text('{"history": [1], "candidates": [2], "user": 40}\n')
    with pytest.raises(ValueError, match="requests.jsonl:1: 'user' id 40 is out of range"):
        read_rank_requests(str(requests), predictor)


def test_infer_scores_a_training_checkpoint_like_the_run_directory(run):
    path, config, source = run
    newest = ckpt.list_step_checkpoints(os.path.join(path, "checkpoints"))[-1][1]
    vocab = {"users": source.num_users, "items": source.num_items, "categories": source.num_categories}
    # step_N holds the TrainState under state/; last/ holds the same variables at the top.
    _, from_step = load_variables_for_inference(newest, config, vocab)
    _, from_last = load_variables_for_inference(os.path.join(path, "last"), config, vocab)
    jax.tree_util.tree_map(np.testing.assert_array_equal, from_step, from_last)

    env = dict(os.environ, PYTHONPATH=ROOT)
    lines = []
    for args in (["--model_path", newest], ["--model_path", path, "--checkpoint", "last"]):
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, "experiments", "infer.py")] + args,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        lines.append([line for line in result.stdout.splitlines() if line.startswith("test gauc")])
    assert lines[0] and lines[0] == lines[1]


def test_rank_and_rank_requests_take_the_datasets_raw_ids(run, tmp_path):
    path, config, source = run
    write_dataset_directory(source, str(tmp_path / "data"), 10, prefixes=("u", "B00", "c"))
    predictor = Predictor.from_checkpoint(path)
    with pytest.raises(ValueError, match="raw ids need the id maps of a dataset directory"):
        predictor.rank(["B0010"], ["B001"], raw_ids=True)
    predictor.dataset = str(tmp_path / "data")
    internal = predictor.rank([10, 20, 30], [1, 2, 3, 4, 5], k=3)
    raw = predictor.rank(["B0010", "B0020", "B0030"], ["B001", "B002", "B003", "B004", "B005"], k=3, raw_ids=True)
    assert raw == [("B00%d" % item, score) for item, score in internal]
    with pytest.raises(ValueError, match=r"unknown raw item id 'B99' \(not in the id map of "):
        predictor.rank(["B0010"], ["B99"], raw_ids=True)
    with pytest.raises(ValueError, match="expected a list of raw item ids, got str"):
        predictor.rank("B0010", ["B001"], raw_ids=True)
    # infer.py --rank_ids raw: requests and rankings in raw ids; --dataset points at the id maps.
    requests = tmp_path / "requests.jsonl"
    requests.write_text('{"user": "u1", "history": ["B0010", "B0020", "B0030"], "candidates": ["B001", "B002"]}\n')
    command = [sys.executable, os.path.join(ROOT, "experiments", "infer.py"), "--model_path", path]
    command += ["--rank_candidates", str(requests), "--rank_ids", "raw", "--dataset", str(tmp_path / "data")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["user"] == "u1"
    expected = predictor.rank(["B0010", "B0020", "B0030"], ["B001", "B002"], raw_ids=True)
    assert [(r["item"], r["score"]) for r in row["ranking"]] == [(i, pytest.approx(s, rel=1e-6)) for i, s in expected]
    requests.write_text('{"history": ["B0010"], "candidates": ["nope"]}\n')
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("infer.py: error: %s:1: 'candidates': unknown raw item id 'nope'" % requests)
    )
