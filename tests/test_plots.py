"""Figures: training curves, attention, ablation bars are written (and look at them: docs/figures)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="matplotlib is not installed (the IPU lane has none)")

from din_jax import ablation, plots  # noqa: E402
from din_jax.config import TrainConfig  # noqa: E402
from din_jax.train import loop as training  # noqa: E402
from din_jax.train.observers import TrainLogHook  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = dict(
    use_synthetic_data=True,
    synthetic_samples=(640, 64, 64),
    max_seq_len=12,
    epochs=2,
    micro_batch_size=32,
    eval_micro_batch_size=32,
    device_iterations=5,
    replicas=1,
    optimizer="adam",
    learning_rate=0.02,
    eval_every=5,
    checkpoint_every=0,
    batching="padded",  # 20 steps per epoch exactly (packed epochs may take a step more)
    model_config={"item_dim": 6, "category_dim": 6, "attention_hidden": (8,), "mlp_hidden": (8,)},
)
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


def test_choose_attention_example_refuses_a_sample_outside_the_split():
    from din_jax.data.synthetic import make_synthetic_dataset

    source = make_synthetic_dataset(10, 10, 50, max_seq_len=12, seed=3)
    for sample in (50, 99999, -1):
        with pytest.raises(
            plots.SampleOutOfRangeError, match="sample %d is not in the test split, whose samples are 0 to 49" % sample
        ) as caught:
            plots.choose_attention_example(source, source.item_category, "test", 12, sample=sample)
        assert (caught.value.sample, caught.value.split, caught.value.size) == (sample, "test", 50)
    assert plots.choose_attention_example(source, source.item_category, "test", 12, sample=49)["sample"] == 49


def _norm_of(colours):
    from matplotlib import colors as mcolors

    if colours["vcenter"] is not None:
        return mcolors.TwoSlopeNorm(vmin=colours["vmin"], vcenter=colours["vcenter"], vmax=colours["vmax"])
    return mcolors.Normalize(vmin=colours["vmin"], vmax=colours["vmax"])


def test_attention_colours_span_the_weights_real_range():
    rng = np.random.default_rng(0)
    # Weights of one sign (a short run: all cells between -2.18 and -2.13):
    # the scale is their own range, not one stretched to 0 that paints every
    # cell the same pale shade.
    negative = -2.18 + 0.05 * rng.random((4, 10))
    colours = plots.attention_colour_scale(negative, "global")
    assert colours["scale"] == "global" and colours["vcenter"] is None and colours["cmap"] == "Blues_r"
    assert (colours["vmin"], colours["vmax"]) == (negative.min(), negative.max())
    shades = _norm_of(colours)(negative)
    assert shades.min() == pytest.approx(0.0) and shades.max() == pytest.approx(1.0)
    positive = plots.attention_colour_scale(-negative, "global")
    assert positive["cmap"] == "Reds" and (positive["vmin"], positive["vmax"]) == (-negative.max(), -negative.min())
    # Both signs: diverging around 0.
    mixed = plots.attention_colour_scale(np.array([[-1.0, 0.5], [2.0, 0.0]]), "global")
    assert (mixed["vmin"], mixed["vcenter"], mixed["vmax"], mixed["cmap"]) == (-1.0, 0.0, 2.0, "RdBu_r")
    # One value: still a valid (non-empty) range.
    flat = plots.attention_colour_scale(np.full((2, 3), -2.15), "global")
    assert flat["vmin"] < -2.15 < flat["vmax"]
    with pytest.raises(ValueError, match="attention scale 'columns'"):
        plots.attention_colour_scale(negative, "columns")


def test_attention_colours_per_row_when_the_rows_differ_more_than_their_cells():
    rng = np.random.default_rng(1)
    # Each candidate's weights spread by 0.01 around its own level, 1 apart.
    offset = np.array([[0.0], [1.0], [2.0]]) + 0.01 * rng.random((3, 8))
    offset[2] = 2.0  # and one candidate weighs every item the same
    colours = plots.attention_colour_scale(offset)
    assert colours["scale"] == "rows" and (colours["vmin"], colours["vmax"]) == (0.0, 1.0)
    values = colours["values"]
    assert values[:2].min(axis=1) == pytest.approx([0.0, 0.0]) and values[:2].max(axis=1) == pytest.approx([1.0, 1.0])
    assert np.all(values[2] == 0.5)
    assert np.argmax(values[0]) == np.argmax(offset[0])
    # Within a row the colour follows the magnitude, as on the global scales.
    magnitudes = plots.attention_colour_scale(np.array([[-1.0, -3.0, -2.0], [0.5, -1.5, 1.0]]), "rows")["values"]
    assert magnitudes.tolist() == [[0.0, 1.0, 0.5], [0.0, 1.0, 0.5]]
    # Rows that use the range themselves keep one scale, whatever their sign.
    spread = rng.normal(size=(3, 8))
    assert plots.attention_colour_scale(spread)["scale"] == "global"
    assert plots.attention_colour_scale(spread, "rows")["scale"] == "rows"


def test_annotation_decimals_tell_a_rows_weights_apart():
    assert plots.annotation_decimals(np.array([[0.0, 2.5], [1.0, -1.0]])) == 2
    assert plots.annotation_decimals(np.array([[-2.18, -2.13], [-2.17, -2.14]])) == 3
    assert plots.annotation_decimals(np.array([[0.5, 0.502], [9.0, 9.003]])) == 4
    assert plots.annotation_decimals(np.array([[1e-7, 0.0]])) == 4
    assert plots.annotation_decimals(np.full((2, 2), 3.0)) == 2


def test_attention_figure_of_one_signed_weights(tmp_path):
    weights = -2.18 + 0.05 * np.random.default_rng(2).random((3, 7))
    for scale in plots.ATTENTION_SCALES:
        path = plots.plot_attention(
            list(range(7)),
            [0, 1, 1, 2, 0, 1, 2],
            [10, 11, 12],
            [0, 1, 3],
            weights,
            [0.9, 0.5, 0.1],
            str(tmp_path / ("%s.png" % scale)),
            scale=scale,
        )
        assert _is_png(path)


def _ablation_rows():
    rng = np.random.default_rng(0)
    rows = []
    for dataset in ("electronics", "books"):
        for model, attention, activation, regularizer, mean in (
            ("base", "mean", "prelu", None, 0.862),
            ("din", "din", "prelu", None, 0.870),
            ("din", "din", "dice", None, 0.871),
            ("din", "din", "dice", "mba", 0.874),
        ):
            for seed in range(3):
                value = mean + rng.normal(0, 0.001)
                rows.append(
                    {
                        "model": model,
                        "attention": attention,
                        "activation": activation,
                        "regularizer": regularizer,
                        "seed": seed,
                        "dataset": dataset,
                        "validation": {"gauc": value},
                        "test": {"gauc": value, "auc": value, "logloss": 0.4},
                    }
                )
    return rows


def _summary_by_dataset(rows):
    summary = {}
    for row in ablation.summarize(rows):
        summary.setdefault(row["dataset"], []).append(row)
    return summary


def test_ablation_chart_means_and_stds_over_seeds(tmp_path):
    rows = _ablation_rows()
    summary = _summary_by_dataset(rows)
    assert list(summary) == ["electronics", "books"]
    entry = summary["electronics"][3]
    assert entry["config"] == {"model": "din", "attention": "din", "activation": "dice", "regularizer": "mba"}
    values = [r["test"]["gauc"] for r in rows if r["dataset"] == "electronics" and r["regularizer"] == "mba"]
    assert entry["n"] == 3 and entry["mean"] == pytest.approx(np.mean(values))
    assert entry["std"] == pytest.approx(np.std(values, ddof=1))
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _is_png(
        plots.plot_ablation(ablation.load_records(str(results), strict=True), str(tmp_path / "ablation.png"))
    )
    results.write_text(json.dumps(rows[0]) + "\n{oops\n")
    with pytest.raises(ValueError, match="results.jsonl:2: not valid JSON"):
        ablation.load_records(str(results), strict=True)
    with pytest.raises(ValueError, match="no row has test.gauc"):
        plots.plot_ablation([{"model": "din"}], str(tmp_path / "none.png"))


def test_ablation_chart_reads_the_ablate_py_records():
    def record(key, status, phase, cell, seed, gauc=None):
        row = {
            "key": key,
            "status": status,
            "phase": phase,
            "cell": cell,
            "seed": seed,
            "flags": {"dataset": "build/grocery", "model": cell},
        }
        if gauc is not None:
            row["test"] = {"gauc": gauc}
        return row

    rows = [
        record("a", "started", "tune", "din", 0),
        record("a", "ok", "tune", "din", 0, 0.5),
        record("b", "started", "final", "din", 0),
        record("b", "ok", "final", "din", 0, 0.70),
        record("c", "ok", "final", "din", 1, 0.72),
        record("c", "ok", "final", "din", 1, 0.74),  # rerun: last
        record("d", "failed", "final", "base", 0),
        record("e", "ok", "final", "base", 0, 0.68),
    ]
    summary = _summary_by_dataset(rows)
    assert list(summary) == ["grocery"]
    din, base = summary["grocery"]
    assert din["config"] == {"configuration": "din"} and din["values"] == [0.70, 0.74]
    assert base["values"] == [0.68] and base["std"] == 0.0


def test_plot_command_writes_every_figure(runs, tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in _ablation_rows()))
    out = str(tmp_path / "figures")
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "experiments", "plot.py"),
            "--runs",
            ",".join(runs),
            "--labels",
            "fast,slow",
            "--ablation_results",
            str(results),
            "--out_dir",
            out,
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = ["training_curves.png", "attention.png", "ablation.png"]
    assert result.stdout.split() == [os.path.join(out, name) for name in names]
    assert all(_is_png(os.path.join(out, name)) for name in names)

    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "experiments", "plot.py"),
            "--attention_run",
            runs[0],
            "--attention_sample",
            "99999",
            "--attention_scale",
            "rows",
            "--out_dir",
            str(tmp_path / "none"),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "plot.py: error: --attention_sample 99999 is out of range: the test split of %s has samples 0 to 63" % runs[0]
    )


def test_make_figures_script_is_valid_bash():
    """experiments/make_figures.sh trains for minutes, so only its syntax is checked here (docs/WATCHING.md)."""
    script = os.path.join(ROOT, "experiments", "make_figures.sh")
    assert os.access(script, os.X_OK)
    result = subprocess.run(["bash", "-n", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
