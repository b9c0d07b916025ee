"""The commands end to end: train.py and infer.py on the embedded real sample, and their errors."""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "amazon_electronics_din_sample")


def _run(script, args, timeout=600):
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["PYTHONPATH"] = ROOT
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script)] + args, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def sample_dataset(tmp_path_factory):
    output = str(tmp_path_factory.mktemp("data") / "electronics_sample")
    result = _run("data_prep/build.py", ["--format", "din", "--input", SAMPLE, "--output", output])
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def _metrics(text, split):
    match = re.search(r"^%s\s+gauc ([0-9.]+)\s+auc ([0-9.]+)\s+logloss ([0-9.]+)" % split, text, re.M)
    assert match, text[-3000:]
    return tuple(float(x) for x in match.groups())


def test_train_and_infer_on_the_real_sample_agree(sample_dataset, tmp_path):
    run = str(tmp_path / "run")
    train = _run(
        "experiments/train.py",
        [
            "--preset",
            "din_amazon",
            "--dataset",
            sample_dataset,
            "--model_path",
            run,
            "--epochs",
            "2",
            "--attention_size",
            "32",
            "--device_iterations",
            "100",
            "--eval_every",
            "200",
        ],
    )
    assert train.returncode == 0, train.stderr[-3000:]
    summary = json.load(open(os.path.join(run, "summary.json")))
    for split in ("validation", "test"):
        for key in ("gauc", "auc", "logloss"):
            assert 0.0 <= summary[split][key] < 10.0
    assert summary["best_step"] > 0 and summary["flags"]["dataset"] == sample_dataset
    # The preset's values apply, and an explicit flag overrides them.
    assert summary["flags"]["model_config"]["item_dim"] == 16
    assert summary["flags"]["model_config"]["attention_normalization"] == "softmax"
    trained_test = _metrics(train.stdout, "test")

    predictions = str(tmp_path / "predictions.csv")
    infer = _run(
        "experiments/infer.py", ["--model_path", run, "--device_iterations", "20", "--predictions_file", predictions]
    )
    assert infer.returncode == 0, infer.stderr[-3000:]
    assert _metrics(infer.stdout, "test") == trained_test
    assert re.search(r"throughput \d+ samples/s; latency [0-9.]+ ms per micro-batch of 128", infer.stdout)
    with open(predictions) as handle:
        rows = handle.read().splitlines()
    assert rows[0] == "index,user,label,logit,probability"
    assert len(rows) - 1 == summary["test"]["samples"]


def test_command_errors_are_one_line(sample_dataset, tmp_path):
    missing = _run("experiments/train.py", ["--dataset", str(tmp_path / "nope"), "--epochs", "1"])
    assert missing.returncode == 2
    assert missing.stderr.strip().startswith("train.py: error:") and "nope" in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1

    bad_size = _run("experiments/train.py", ["--use_synthetic_data", "--attention_size", "7"])
    assert bad_size.returncode == 2 and "--attention_size" in bad_size.stderr

    no_checkpoint = _run("experiments/infer.py", ["--model_path", str(tmp_path)])
    assert no_checkpoint.returncode == 2 and "no checkpoint" in no_checkpoint.stderr
    assert "Traceback" not in no_checkpoint.stderr


@pytest.mark.parametrize("script", ["experiments/train.py", "experiments/infer.py"])
@pytest.mark.parametrize(
    "args,expected",
    [
        (["--foo"], "Unknown command line flag 'foo'"),
        (["--epochs=abc"], "--epochs=abc"),
        (["--optimizer=rmsprop"], "--optimizer=rmsprop"),
        (["--flagfile=/no/such.flags"], "/no/such.flags"),
        (["stray_argument"], "unexpected arguments: stray_argument"),
    ],
)
def test_command_line_errors_are_one_line(script, args, expected):
    result = _run(script, args)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(os.path.basename(script) + ": error:") and expected in lines[0]


def test_unusable_output_paths_are_one_line_errors(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    train = _run(
        "experiments/train.py",
        [
            "--use_synthetic_data",
            "--synthetic_samples=256,64,64",
            "--epochs=1",
            "--model_path",
            str(not_a_folder / "run"),
        ],
    )
    assert train.returncode == 2 and str(not_a_folder) in train.stderr, train.stderr[-3000:]
    assert "Traceback" not in train.stderr and len(train.stderr.strip().splitlines()) == 1
    infer = _run(
        "experiments/infer.py",
        ["--model_path", str(tmp_path), "--predictions_file", str(tmp_path / "no_folder" / "p.csv")],
    )
    assert infer.returncode == 2 and "--predictions_file" in infer.stderr and "does not exist" in infer.stderr


def test_infer_rejects_a_checkpoint_that_does_not_fit_the_flags(tmp_path):
    run = str(tmp_path / "synthetic")
    train = _run(
        "experiments/train.py",
        [
            "--use_synthetic_data",
            "--synthetic_samples=256,64,64",
            "--max_seq_len=8",
            "--attention_size=8",
            "--mlp_hidden=8",
            "--epochs=1",
            "--device_iterations=4",
            "--model_path",
            run,
        ],
    )
    assert train.returncode == 0, train.stderr[-3000:]
    mismatch = _run("experiments/infer.py", ["--model_path", run, "--attention_size", "12"])
    assert mismatch.returncode == 2
    assert "shape" in mismatch.stderr and "do the model flags match the checkpoint" in mismatch.stderr
    assert "Traceback" not in mismatch.stderr
    preset = _run("experiments/infer.py", ["--model_path", run, "--preset", "din_amazon"])
    assert preset.returncode == 2 and "--preset is for train.py" in preset.stderr
    other_data = _run("experiments/infer.py", ["--model_path", run, "--max_seq_len", "12"])
    assert other_data.returncode == 2 and "another test set" in other_data.stderr


def test_hyphenated_graphcore_flags(tmp_path):
    result = _run(
        "experiments/train.py",
        [
            "--use-synthetic-data",
            "--synthetic_samples=256,64,64",
            "--max-seq-len=8",
            "--attention-size=8",
            "--mlp_hidden=8",
            "--epochs=1",
            "--device-iterations=4",
            "--micro-batch-size=16",
            "--model-path",
            str(tmp_path / "run"),
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    flags = json.load(open(tmp_path / "run" / "summary.json"))["flags"]
    assert flags["max_seq_len"] == 8 and flags["micro_batch_size"] == 16 and flags["device_iterations"] == 4
    # Graphcore's --hidden-size is the item-vector width, our --attention_size.
    assert flags["model_config"]["item_dim"] == 4
    hidden = _run(
        "experiments/train.py",
        [
            "--use-synthetic-data",
            "--synthetic_samples=256,64,64",
            "--max-seq-len=8",
            "--hidden-size=12",
            "--mlp_hidden=8",
            "--epochs=1",
            "--device-iterations=100",
            "--model-path",
            str(tmp_path / "hidden"),
        ],
    )
    assert hidden.returncode == 0, hidden.stderr[-3000:]
    summary = json.load(open(tmp_path / "hidden" / "summary.json"))
    assert summary["flags"]["model_config"]["item_dim"] == 6
    # One call per epoch: every call compiles, and the throughput says it includes compilation.
    assert summary["samples_per_s"] > 0 and summary["samples_per_s_includes_compilation"] is True


def test_a_custom_attention_from_the_readme_trains_infers_and_runs_in_the_harness(tmp_path):
    """examples/custom_attention.py: registered from Python, used by name in train.py, infer.py and ablate.py."""
    example = os.path.join(ROOT, "examples", "custom_attention.py")
    tiny = [
        "--use_synthetic_data",
        "--synthetic_samples=256,64,64",
        "--max_seq_len=8",
        "--attention_size=8",
        "--mlp_hidden=8",
        "--epochs=1",
        "--device_iterations=4",
    ]
    run = str(tmp_path / "run")
    unknown = _run("experiments/train.py", tiny + ["--attention", "bilinear"])
    assert unknown.returncode == 2 and "bilinear" in unknown.stderr and "'din'" in unknown.stderr

    train = _run(
        "experiments/train.py", tiny + ["--import_module", example, "--attention", "bilinear", "--model_path", run]
    )
    assert train.returncode == 0, train.stderr[-3000:]
    summary = json.load(open(os.path.join(run, "summary.json")))
    assert summary["flags"]["model_config"]["attention"] == "bilinear"
    infer = _run("experiments/infer.py", ["--model_path", run, "--import_module", example])
    assert infer.returncode == 0, infer.stderr[-3000:]
    # The same synthetic test split (its size comes from the checkpoint) and the same scores.
    gauc, auc, logloss = _metrics(infer.stdout, "test")
    assert (gauc, auc, logloss) == pytest.approx(
        (summary["test"]["gauc"], summary["test"]["auc"], summary["test"]["logloss"]), abs=1e-5
    )

    results = str(tmp_path / "custom.jsonl")
    flagfile = tmp_path / "grid.flags"
    flagfile.write_text(
        "\n".join(
            tiny
            + [
                "--import_module=%s" % example,
                "--variant=din: --model=din",
                "--variant=bilinear: --model=din --attention=bilinear",
                "--seeds=1",
                "--results=%s" % results,
                "",
            ]
        )
    )
    grid = _run("experiments/ablate.py", ["--flagfile=%s" % flagfile])
    assert grid.returncode == 0, grid.stderr[-3000:]
    records = [json.loads(line) for line in open(results)]
    finished = {record["cell"]: record for record in records if record["status"] == "ok"}
    assert set(finished) == {"din", "bilinear"}
    assert finished["bilinear"]["flags"]["model_config"]["attention"] == "bilinear"


def test_import_module_errors_name_the_module(tmp_path):
    missing = _run("experiments/train.py", ["--use_synthetic_data", "--import_module", str(tmp_path / "nope.py")])
    assert missing.returncode == 2 and "--import_module" in missing.stderr and "nope.py" in missing.stderr
    broken = tmp_path / "broken.py"
    broken.write_text("import flax\n\nraise RuntimeError('bad attention')\n")
    failed = _run("experiments/train.py", ["--use_synthetic_data", "--import_module", str(broken)])
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "broken.py:3" in failed.stderr and "bad attention" in failed.stderr
    no_module = _run("experiments/infer.py", ["--model_path", str(tmp_path), "--import_module", "no_such_module_x"])
    assert no_module.returncode == 2 and "no_such_module_x" in no_module.stderr


def test_the_readme_shows_the_example_file_as_it_is():
    """The README's custom-attention code is examples/custom_attention.py verbatim (the file the test above runs)."""
    readme = open(os.path.join(ROOT, "README.md")).read()
    blocks = [block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "BilinearAttention" in block]
    assert len(blocks) == 1
    example = open(os.path.join(ROOT, "examples", "custom_attention.py")).read()
    assert blocks[0].strip() in example


def test_float16_gradients_prints_every_parameter(sample_dataset):
    result = _run(
        "experiments/float16_gradients.py",
        [
            "--dataset",
            sample_dataset,
            "--preset",
            "din_amazon",
            "--activation",
            "dice",
            "--micro_batch_size",
            "32",
            "--max_seq_len",
            "20",
        ],
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "32 samples, max_seq_len 20; relative error (zeroed share of nonzero entries)"
    assert lines[1].split() == ["parameter", "float16", "unscaled", "float16", "x", "1024"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert "attention_unit/first_kernel" in rows and "embedding/item" in rows
    assert all(row.count("%") == 4 for row in rows.values())


def test_no_committed_command_writes_into_tracked_files():
    """Results, reports, runs and figures go to runs/ (git-ignored); only `make results` / `make docs-figures`
    write into docs/, explicitly."""
    import glob
    import re

    configs = glob.glob(os.path.join(ROOT, "experiments", "configs", "*.flags"))
    assert configs
    for path in configs:
        for line in open(path, encoding="utf-8"):
            found = re.match(r"--(results|report|model_path|output_dir)=(\S+)", line.strip())
            if found:
                assert found.group(2).startswith("runs/"), "%s writes %s" % (os.path.basename(path), line.strip())
    script = open(os.path.join(ROOT, "experiments", "make_figures.sh"), encoding="utf-8").read()
    assert "OUT=${OUT:-runs/figures}" in script
    makefile = open(os.path.join(ROOT, "Makefile"), encoding="utf-8").read()
    assert "OUT=docs/figures" in makefile.split("docs-figures:")[1].split("\n\n")[0]
