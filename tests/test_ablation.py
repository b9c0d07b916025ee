"""The ablation harness: grid expansion, tuning, skip/resume, failures, aggregation, tables, the entry point."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from din_jax import ablation
from din_jax.config import TrainConfig
from din_jax.metrics import compute_relaimpr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Fake test GAUC of each model; the learning rate and seed shift it a little.
QUALITY = {"lr": 0.60, "base": 0.70, "din": 0.75}


def make_config(overrides, **base):
    """Flags -> TrainConfig on ``base`` fields, as experiments/ablate.py does with absl (here: --name=value only)."""
    values = dict({"model": "base", "learning_rate": 0.001, "seed": 0}, **base)
    for word in overrides:
        name, _, value = word[2:].partition("=")
        if name == "activation":
            values.setdefault("model_config", {})["activation"] = value
        elif name in ("learning_rate", "mba_lambda", "l2"):
            values[name] = float(value)
        elif name == "seed":
            values[name] = int(value)
        elif name == "epochs" and not value.isdigit():
            raise ValueError("--epochs must be an integer")
        else:
            values[name] = value
    return TrainConfig(use_synthetic_data=True, **values).validate()


class FakeTrainer:
    """Stands in for train_and_evaluate: deterministic metrics, a call log, failures on request."""

    def __init__(self, fail_models=()):
        self.calls = []
        self.fail_models = set(fail_models)

    def __call__(self, config, hooks=()):
        self.calls.append((config.model, config.learning_rate, config.seed))
        if config.model in self.fail_models:
            raise RuntimeError("boom in %s" % config.model)
        # The middle learning rate is best on validation; seeds move test by 0.01.
        value = QUALITY[config.model] - abs(config.learning_rate - 0.002) * 10
        test = value + 0.01 * (config.seed - 2)
        metrics = lambda gauc: {"gauc": gauc, "auc": gauc - 0.02, "logloss": 1.0 - gauc}  # noqa: E731
        return {
            "validation": metrics(value),
            "test": metrics(test),
            "best_step": 100 * config.seed,
            "steps": 600,
            "samples_per_s": 1000.0,
            "num_parameters": 10,
            "platform": "cpu",
            "replicas": 1,
        }


CLEAN = {"package": "0.1.0", "commit": "a" * 40, "dirty": False}


@pytest.fixture(autouse=True)
def clean_code(monkeypatch):
    """The grid's code version, fixed: reuse must not depend on the state of the checkout running the tests."""
    version = dict(CLEAN)
    monkeypatch.setattr(ablation.grid, "code_version", lambda: version)
    return version


CANDIDATES = [
    ablation.parse_labelled_overrides("lr=%s: --learning_rate=%s" % (v, v)) for v in ("0.001", "0.002", "0.004")
]


def _cells():
    return ablation.expand_grid([], models=["lr", "base", "din"])


def test_parse_labelled_overrides_and_regularizers():
    cell = ablation.parse_labelled_overrides("din+dice: --model=din --activation=dice")
    assert cell == ablation.Cell("din+dice", ("--model=din", "--activation=dice"))
    assert ablation.parse_labelled_overrides("--model=lr").label == "model=lr"
    with pytest.raises(ValueError, match="expected flags"):
        ablation.parse_labelled_overrides("x: model=din")
    assert ablation.parse_regularizer("none").overrides == ()
    assert ablation.parse_regularizer("mba").overrides == ("--mba_lambda=0.01",)
    assert ablation.parse_regularizer("l2=1e-4") == ablation.Cell("l2=1e-4", ("--l2=0.0001",))
    with pytest.raises(ValueError, match="unknown regulariser 'weird'"):
        ablation.parse_regularizer("weird")


def test_expand_grid_is_the_product_of_the_axes():
    variants = [ablation.Cell("v", ("--epochs=3",))]
    cells = ablation.expand_grid(
        variants, models=["din"], attentions=["din", "dot"], activations=["prelu", "dice"], regularizers=["none", "mba"]
    )
    assert len(cells) == 8
    assert cells[0] == ablation.Cell(
        "v / din / din / prelu / none", ("--epochs=3", "--model=din", "--attention=din", "--activation=prelu")
    )
    assert cells[-1].label == "v / din / dot / dice / mba"
    assert cells[-1].overrides[-1] == "--mba_lambda=0.01"
    assert ablation.expand_grid() == [ablation.Cell("default", ())]
    with pytest.raises(ValueError, match="unique"):
        ablation.expand_grid([ablation.Cell("a", ()), ablation.Cell("a", ("--seed=1",))])


def test_run_key_ignores_volatile_fields_and_defaults():
    config = ablation.default_config_dict()
    defaults = dict(config)
    key = ablation.compute_run_key(dict(config, epochs=3), defaults)
    assert ablation.compute_run_key(dict(config, epochs=3, model_path="/tmp/x", log_every=50), defaults) == key
    assert ablation.compute_run_key(dict(config, epochs=4), defaults) != key
    # A record written before a field existed matches a config that has the field at its default.
    older = {name: value for name, value in dict(config, epochs=3).items() if name != "clip_norm"}
    assert ablation.compute_run_key(older, defaults) == key
    assert ablation.compute_run_key(dict(config, epochs=3, clip_norm=1.0), defaults) != key


def test_stored_keys_are_recomputed_from_the_flags(tmp_path):
    results = str(tmp_path / "results.jsonl")
    ablation.run_grid([ablation.Cell("din", ("--model=din",))], [1], results, make_config, FakeTrainer())
    (record,) = [r for r in ablation.load_records(results) if r["status"] == "ok"]
    del record["flags"]["clip_norm"]  # as if written by a version without that field
    record["key"] = "old-scheme"
    with open(results, "w") as handle:
        handle.write(json.dumps(record) + "\n")
    again = FakeTrainer()
    cells = [ablation.Cell("din", ("--model=din",))]
    outcome = ablation.run_grid(cells, [1], results, make_config, again, reuse_other_versions=True)
    assert again.calls == [] and len(outcome.skipped) == 1


def test_records_name_the_code_and_are_reused_only_by_the_same_code(tmp_path, clean_code, caplog):
    results = str(tmp_path / "results.jsonl")
    cells = [ablation.Cell("din", ("--model=din",))]
    ablation.run_grid(cells, [1], results, make_config, FakeTrainer())
    (record,) = [r for r in ablation.load_records(results) if r["status"] == "ok"]
    assert record["code"] == CLEAN and record["config_hash"] == ablation.config_hash(record["flags"])
    # The same code and configuration: reused.
    same = FakeTrainer()
    ablation.run_grid(cells, [1], results, make_config, same)
    assert same.calls == []
    # Another commit: run again, unless asked to reuse (with a warning naming both versions).
    clean_code["commit"] = "b" * 40
    reused = FakeTrainer()
    ablation.run_grid(cells, [1], results, make_config, reused, reuse_other_versions=True)
    assert reused.calls == [] and "reusing a record of code aaaaaaa (this is bbbbbbb)" in caplog.text
    rerun = FakeTrainer()
    outcome = ablation.run_grid(cells, [1], results, make_config, rerun)
    assert rerun.calls == [("din", 0.001, 1)] and outcome.records[outcome.final_keys["din"][0]]["code"]["commit"]
    # A dirty tree's records are never reused, even by the same dirty tree.
    clean_code["dirty"] = True
    for expected in ([("din", 0.001, 1)], [("din", 0.001, 1)]):
        dirty = FakeTrainer()
        ablation.run_grid(cells, [1], results, make_config, dirty)
        assert dirty.calls == expected
    # A changed field outside the run key (e.g. log_every) changes the configuration hash: run again.
    clean_code["dirty"] = False
    ablation.run_grid(cells, [1], results, make_config, FakeTrainer())
    changed = FakeTrainer()
    ablation.run_grid(cells, [1], results, lambda words: make_config(words, log_every=7), changed)
    assert changed.calls == [("din", 0.001, 1)]
    report = ablation.format_versions(ablation.load_records(results))
    assert report.startswith("Code versions: ") and "aaaaaaa" in report and "bbbbbbb+dirty" in report


def test_tuning_picks_the_best_validation_candidate_then_runs_every_seed(tmp_path):
    results = str(tmp_path / "results.jsonl")
    trainer = FakeTrainer()
    outcome = ablation.run_grid(_cells(), [1, 2, 3], results, make_config, trainer, candidates=CANDIDATES)
    assert outcome.tuned == {"lr": "lr=0.002", "base": "lr=0.002", "din": "lr=0.002"}
    assert len(trainer.calls) == 3 * (3 + 3)
    assert [c for c in trainer.calls if c[0] == "din"][3:] == [("din", 0.002, 1), ("din", 0.002, 2), ("din", 0.002, 3)]
    assert all(seed == 0 for _, _, seed in trainer.calls[:3])
    records = ablation.load_records(results)
    assert [r["status"] for r in records[:2]] == ["started", "ok"]
    final = [r for r in records if r["status"] == "ok" and r["phase"] == "final"]
    assert len(final) == 9 and all("flags" in r and r["flags"]["model"] == r["cell"] for r in final)
    assert all(r["test"]["gauc"] is not None and r["wall_s"] >= 0 for r in final)


def test_rerunning_skips_finished_runs(tmp_path):
    results = str(tmp_path / "results.jsonl")
    ablation.run_grid(_cells(), [1, 2], results, make_config, FakeTrainer(), candidates=CANDIDATES)
    lines = open(results).read().count("\n")
    again = FakeTrainer()
    outcome = ablation.run_grid(_cells(), [1, 2], results, make_config, again, candidates=CANDIDATES)
    assert again.calls == [] and outcome.ran == [] and len(outcome.skipped) == 3 * 5
    assert open(results).read().count("\n") == lines
    # A new seed runs only the new runs; the tuning is reused.
    third = FakeTrainer()
    ablation.run_grid(_cells(), [1, 2, 3], results, make_config, third, candidates=CANDIDATES)
    assert sorted(third.calls) == [("base", 0.002, 3), ("din", 0.002, 3), ("lr", 0.002, 3)]


def test_failed_runs_are_recorded_reported_and_retried(tmp_path):
    results = str(tmp_path / "results.jsonl")
    outcome = ablation.run_grid(
        _cells(), [1], results, make_config, FakeTrainer(fail_models={"din"}), candidates=CANDIDATES
    )
    failed = [r for r in ablation.load_records(results) if r["status"] == "failed"]
    assert len(failed) == 3 and all("boom in din" in r["error"] and "Traceback" in r["traceback"] for r in failed)
    assert outcome.tuned["din"] is None and outcome.final_keys["din"] == []
    assert len(outcome.failed) == 3
    assert "boom in din" in ablation.format_failures(outcome)
    # Without retry the failures stay (and are still reported); with retry they run again.
    kept = ablation.run_grid(
        _cells(), [1], results, make_config, FakeTrainer(), candidates=CANDIDATES, retry_failed=False
    )
    assert kept.ran == [] and len(kept.failed) == 3
    retried = FakeTrainer()
    outcome = ablation.run_grid(_cells(), [1], results, make_config, retried, candidates=CANDIDATES)
    assert sorted(retried.calls) == [("din", 0.001, 0), ("din", 0.002, 0), ("din", 0.002, 1), ("din", 0.004, 0)]
    assert outcome.failed == []


def test_a_bad_configuration_fails_its_run_only(tmp_path):
    results = str(tmp_path / "results.jsonl")
    cells = [ablation.Cell("bad", ("--model=din", "--epochs=many")), ablation.Cell("base", ("--model=base",))]
    trainer = FakeTrainer()
    outcome = ablation.run_grid(cells, [1], results, make_config, trainer)
    assert trainer.calls == [("base", 0.001, 1)]
    (bad_key,) = outcome.failed
    assert outcome.records[bad_key]["error"].startswith("ValueError: --epochs must be an integer")


def test_a_run_whose_process_died_is_reported_and_run_again(tmp_path):
    results = str(tmp_path / "results.jsonl")
    cells = [ablation.Cell("din", ("--model=din",))]

    def dies(config, hooks=()):
        raise KeyboardInterrupt  # stands for the process being killed mid-run

    with pytest.raises(KeyboardInterrupt):
        ablation.run_grid(cells, [1], results, make_config, dies)
    # The started line is there, then a torn half line as a crash mid-write could leave.
    with open(results, "a") as handle:
        handle.write('{"key": "abc", "status": "ok", "te')
    assert [r["status"] for r in ablation.load_records(results)] == ["started"]
    trainer = FakeTrainer()
    outcome = ablation.run_grid(cells, [1], results, make_config, trainer)
    assert trainer.calls == [("din", 0.001, 1)]
    assert outcome.interrupted == outcome.ran and len(outcome.ran) == 1
    assert "interrupted in an earlier invocation" in ablation.format_failures(outcome)


def test_stop_exceptions_stop_the_grid(tmp_path):
    class Stop(Exception):
        pass

    def stops(config, hooks=()):
        raise Stop()

    with pytest.raises(Stop):
        ablation.run_grid(_cells(), [1], str(tmp_path / "r.jsonl"), make_config, stops, stop_exceptions=(Stop,))


def test_summary_mean_std_relaimpr_and_tables(tmp_path):
    results = str(tmp_path / "results.jsonl")
    outcome = ablation.run_grid(_cells(), [1, 2, 3], results, make_config, FakeTrainer(), candidates=CANDIDATES)
    rows = {row["label"]: row for row in ablation.summarize(outcome, baseline="base")}
    mean, std = rows["din"]["test_gauc"]
    assert mean == pytest.approx(0.75) and std == pytest.approx(0.01)  # 0.74, 0.75, 0.76: sample std
    assert rows["din"]["relaimpr"] == pytest.approx(compute_relaimpr(0.75, 0.70))
    assert rows["base"]["relaimpr"] is None and rows["din"]["runs_ok"] == 3 and rows["din"]["seeds"] == [1, 2, 3]
    markdown = ablation.format_markdown(list(rows.values()), baseline="base")
    assert "| din | 3 | lr=0.002 | 0.7500 ± 0.0100 |" in markdown
    assert "+25.00%" in markdown
    table = list(csv.DictReader(io.StringIO(ablation.format_csv(list(rows.values())))))
    assert [r["label"] for r in table] == ["lr", "base", "din"]
    assert float(table[2]["test_gauc_std"]) == pytest.approx(0.01)
    comparison = {c["against"]: c for c in ablation.compare_against(list(rows.values()), "din")}
    assert comparison["base"]["clear"] and comparison["base"]["difference"] == pytest.approx(0.05)

    paths = ablation.write_reports(outcome, str(tmp_path / "out" / "grid"), baseline="base", highlight="din")
    assert "better by more than the spread" in open(paths["markdown"]).read()
    assert os.path.exists(paths["csv"])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "chart" not in paths
    else:
        with open(paths["chart"], "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_chart_needs_matplotlib(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib is not installed in this environment (the IPU lane)")
    from din_jax import plots

    records = [
        {"cell": "a", "seed": 1, "test": {"gauc": 0.69}},
        {"cell": "a", "seed": 2, "test": {"gauc": 0.71}},
        {"cell": "b", "seed": 1, "test": {"gauc": 0.75}},
        {"cell": "c", "seed": 1, "test": {}},
    ]
    assert plots.plot_ablation(records, str(tmp_path / "c.png"), title="title")
    assert os.path.getsize(str(tmp_path / "c.png")) > 1000


def test_a_grid_applies_the_regularizers(tmp_path):
    """--mba_lambda and --l2 reach the train step: each regulariser trains to other metrics than none."""
    from din_jax.train.loop import train_and_evaluate

    small = dict(
        synthetic_samples=(320, 64, 64),
        max_seq_len=8,
        epochs=1,
        micro_batch_size=32,
        eval_micro_batch_size=32,
        device_iterations=5,
        replicas=1,
        checkpoint_every=0,
        model="din",
        learning_rate=0.05,
        select_metric="logloss",
        model_config={"item_dim": 4, "category_dim": 4, "attention_hidden": (4,), "mlp_hidden": (4,)},
    )
    cells = ablation.expand_grid(regularizers=["none", "mba=0.5", "l2=0.01"])
    outcome = ablation.run_grid(
        cells, [1], str(tmp_path / "r.jsonl"), lambda words: make_config(words, **small), train_and_evaluate
    )
    loglosses = []
    for cell in cells:
        (record,) = [outcome.records[key] for key in outcome.final_keys[cell.label]]
        assert record["status"] == "ok", record.get("error")
        loglosses.append(record["validation"]["logloss"])
    assert len(set(loglosses)) == 3, loglosses


def test_ablate_entry_point_dry_run(tmp_path):
    """Flags to runs: per-model field selection, variants x axes, keys shared with an identical configuration."""
    flagfile = tmp_path / "grid.flags"
    flagfile.write_text(
        "\n".join(
            [
                "--use_synthetic_data",
                "--synthetic_samples=200,50,50",
                "--max_seq_len=5",
                "--attention_size=4",
                "--epochs=1",
                "--results=%s" % (tmp_path / "r.jsonl"),
                "--variant=lr: --model=lr",
                "--variant=din: --model=din",
                "--variant=din/none: --model=din --attention=din",
                "--seeds=1,2",
                "--dry_run",
                "",
            ]
        )
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "experiments", "ablate.py"), "--flagfile=%s" % flagfile],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        timeout=120,
    )
    stdout, stderr = out.stdout.decode(), out.stderr.decode()
    assert out.returncode == 0, stderr
    # 3 cells x 2 seeds, but din and din/none are the same configuration: 4 distinct runs.
    assert "4 run(s) to do, 0 done" in stdout, stdout
    assert "model lr has no field(s) ['category_dim', 'item_dim']: ignoring --attention_size" in stderr
    assert not os.path.exists(str(tmp_path / "r.jsonl"))


def test_records_are_single_json_lines(tmp_path):
    path = str(tmp_path / "deep" / "r.jsonl")
    ablation.append_record(path, {"key": "k", "status": "ok", "value": float("0.5"), "text": "a\nb"})
    with open(path) as handle:
        lines = handle.read().split("\n")
    assert len(lines) == 2 and lines[1] == "" and json.loads(lines[0])["text"] == "a\nb"
