"""Figures: training curves, attention, ablation bars are written (and look at them: docs/figures)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="matplotlib is not installed (the IPU lane has none)")

from din_jax import plots, training  # noqa: E402
from din_jax.config import TrainConfig  # noqa: E402
from din_jax.hooks import TrainLogHook  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = dict(
    use_synthetic_data=True, synthetic_samples=(640, 64, 64), max_seq_len=12, epochs=2, micro_batch_size=32,
    eval_micro_batch_size=32, device_iterations=5, replicas=1, optimizer="adam", learning_rate=0.02,
    eval_every=5, checkpoint_every=0,
    model_config={"item_dim": 6, "category_dim": 6, "attention_hidden": (8,), "mlp_hidden": (8,)})
PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    with open(path, "rb") as handle:
        head = handle.read(8)
    return head == PNG and os.path.getsize(path) > 5000


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    paths = []
    for index, rate in enumerate((0.02, 0.005)):
        path = str(tmp_path_factory.mktemp("plots") / ("run%d" % index))
        config = TrainConfig(model_path=path, **dict(CONFIG, learning_rate=rate))
        training.train_and_evaluate(config, hooks=[TrainLogHook(os.path.join(path, "train_log.jsonl"))])
        paths.append(path)
    return paths


def test_training_curves_of_one_and_several_runs(runs, tmp_path):
    run = plots.load_run(runs[0])
    assert [s for s, _ in run["train"]] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert [s for s, _ in run["evaluations"]] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert _is_png(plots.plot_training_curves(runs[:1], str(tmp_path / "one.png")))
    assert _is_png(plots.plot_training_curves(runs, str(tmp_path / "two.png"), labels=["lr 0.02", "lr 0.005"]))
    with pytest.raises(ValueError, match="not a run directory"):
        plots.load_run(str(tmp_path))


def test_attention_figure_of_a_run(runs, tmp_path):
    written = plots.write_run_figures(runs[0], str(tmp_path / "figures"))
    assert [os.path.basename(p) for p in written] == ["training_curves.png", "attention.png"]
    assert all(_is_png(p) for p in written)


def test_choose_attention_example_picks_candidates_in_and_out_of_the_history():
    from din_jax.data.synthetic import make_synthetic_dataset

    source = make_synthetic_dataset(10, 10, 50, max_seq_len=12, seed=3)
    example = plots.choose_attention_example(source, source.item_category, "test", 12)
    history_categories = {int(source.item_category[i]) for i in example["history"]}
    candidate_categories = [int(source.item_category[i]) for i in example["candidates"]]
    assert 6 <= len(example["history"]) <= 16
    assert sum(c in history_categories for c in candidate_categories[1:]) == 3
    assert sum(c not in history_categories for c in candidate_categories[1:]) == 2
    assert not set(example["candidates"][1:]) & set(example["history"])


def _ablation_rows():
    rng = np.random.default_rng(0)
    rows = []
    for dataset in ("electronics", "books"):
        for model, attention, activation, regularizer, mean in (
                ("base", "mean", "prelu", None, 0.862), ("din", "din", "prelu", None, 0.870),
                ("din", "din", "dice", None, 0.871), ("din", "din", "dice", "mba", 0.874)):
            for seed in range(3):
                value = mean + rng.normal(0, 0.001)
                rows.append({"model": model, "attention": attention, "activation": activation,
                             "regularizer": regularizer, "seed": seed, "dataset": dataset,
                             "validation": {"gauc": value}, "test": {"gauc": value, "auc": value, "logloss": 0.4}})
    return rows


def test_ablation_chart_means_and_stds_over_seeds(tmp_path):
    rows = _ablation_rows()
    summary = plots.summarize_ablation(rows)
    assert list(summary) == ["electronics", "books"]
    entry = summary["electronics"][3]
    assert entry["config"] == {"model": "din", "attention": "din", "activation": "dice", "regularizer": "mba"}
    values = [r["test"]["gauc"] for r in rows if r["dataset"] == "electronics" and r["regularizer"] == "mba"]
    assert entry["n"] == 3 and entry["mean"] == pytest.approx(np.mean(values))
    assert entry["std"] == pytest.approx(np.std(values, ddof=1))
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _is_png(plots.plot_ablation(plots.load_ablation_results(str(results)), str(tmp_path / "ablation.png")))
    results.write_text(json.dumps(rows[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match="results.jsonl:2: not valid JSON"):
        plots.load_ablation_results(str(results))
    with pytest.raises(ValueError, match="no row has test.gauc"):
        plots.plot_ablation([{"model": "din"}], str(tmp_path / "none.png"))


def test_ablation_chart_reads_the_ablate_py_records():
    def record(key, status, phase, cell, seed, gauc=None):
        row = {"key": key, "status": status, "phase": phase, "cell": cell, "seed": seed,
               "flags": {"dataset": "build/grocery", "model": cell}}
        if gauc is not None:
            row["test"] = {"gauc": gauc}
        return row

    rows = [record("a", "started", "tune", "din", 0), record("a", "ok", "tune", "din", 0, 0.5),
            record("b", "started", "final", "din", 0), record("b", "ok", "final", "din", 0, 0.70),
            record("c", "ok", "final", "din", 1, 0.72), record("c", "ok", "final", "din", 1, 0.74),  # rerun: last
            record("d", "failed", "final", "base", 0), record("e", "ok", "final", "base", 0, 0.68)]
    summary = plots.summarize_ablation(rows)
    assert list(summary) == ["grocery"]
    din, base = summary["grocery"]
    assert din["config"] == {"configuration": "din"} and din["values"] == [0.70, 0.74]
    assert base["values"] == [0.68] and base["std"] == 0.0


def test_plot_command_writes_every_figure(runs, tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in _ablation_rows()))
    out = str(tmp_path / "figures")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "plot.py"), "--runs", ",".join(runs),
         "--labels", "fast,slow", "--ablation_results", str(results), "--out_dir", out],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    names = ["training_curves.png", "attention.png", "ablation.png"]
    assert result.stdout.split() == [os.path.join(out, name) for name in names]
    assert all(_is_png(os.path.join(out, name)) for name in names)
