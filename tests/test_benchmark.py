"""The benchmark: a tiny run writes both CSVs with the required columns; its statistics and FLOP count."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from din_jax import benchmark, machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = {
    "item_dim": 4,
    "category_dim": 4,
    "user_dim": 2,
    "attention_hidden": (8, 4),
    "mlp_hidden": (8, 4),
    "activation": "prelu",
    "attention_activation": "sigmoid",
}
TINY_VOCABULARY = {"users": 30, "items": 40, "categories": 5}


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(
    "mode,updates,batching",
    [
        ("train", "sparse", "padded"),
        ("infer", "sparse", "padded"),
        ("train", "dense", "packed"),
        ("infer", "", "packed"),
    ],
)
def test_a_tiny_run_writes_the_results_file(tmp_path, mode, updates, batching):
    config = benchmark.BenchmarkConfig(
        mode=mode,
        micro_batch_sizes=(8, 16),
        device_iterations=2,
        replicas=1,
        model_config=dict(TINY_MODEL),
        vocabulary=dict(TINY_VOCABULARY),
        lengths="electronics",
        samples=400,
        max_seq_len=20,
        length_buckets=(4, 8) if batching == "padded" else (),
        batching=batching,
        windows=2,
        embedding_updates=updates or "sparse",
        positions_per_pass=16,
    )
    rows = benchmark.run_benchmark(config)
    path = benchmark.write_results(rows, str(tmp_path), mode)
    assert os.path.basename(path) == benchmark.RESULT_FILES[mode]
    written = _read(path)
    assert [int(r["micro_batch_size"]) for r in written] == [8, 16]
    for row in written:
        assert set(benchmark.CSV_COLUMNS) <= set(row)
        assert float(row["samples_per_s"]) > 0 and float(row["compile_s"]) >= 0
        assert float(row["samples_per_s_min"]) <= float(row["samples_per_s"]) <= float(row["samples_per_s_max"])
        assert float(row["peak_rss_mb"]) > 0 and row["platform"] and row["jax"]
        assert 1 <= float(row["mean_history_length"]) <= float(row["mean_padded_length"]) <= 20
        assert row["length_buckets"] == ("4,8,20" if batching == "padded" else "")
        assert row["batching"] == batching and (int(row["packed_positions"]) > 0) == (batching == "packed")
    assert "samples/s" in benchmark.format_table(rows)


def test_the_command_writes_train_and_infer_csvs(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1", PYTHONPATH=ROOT)
    common = [
        "--micro_batch_sizes",
        "8",
        "--device_iterations",
        "2",
        "--samples",
        "200",
        "--windows",
        "2",
        "--vocabulary",
        "30,40,5",
        "--attention_size",
        "8",
        "--user_dim",
        "2",
        "--attention_hidden",
        "8,4",
        "--mlp_hidden",
        "8,4",
        "--max_seq_len",
        "12",
        "--batching",
        "padded",
        "--length_buckets",
        "4,12",
        "--lengths",
        "uniform:1:12",
        "--output_dir",
        str(tmp_path),
    ]
    for mode in ("train", "infer"):
        result = subprocess.run(
            [sys.executable, os.path.join(ROOT, "experiments", "benchmark.py"), "--mode", mode] + common,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "samples/s" in result.stdout
        rows = _read(os.path.join(str(tmp_path), "results_%s.csv" % mode))
        assert len(rows) == 1 and rows[0]["mode"] == mode and float(rows[0]["samples_per_s"]) > 0
    bad = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "experiments", "benchmark.py"),
            "--length_buckets",
            "50,20",
            "--output_dir",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2 and "--length_buckets" in bad.stderr


def test_summary_statistics():
    stats = benchmark.summarize([100.0, 120.0, 80.0])
    assert stats["median"] == 100.0 and stats["min"] == 80.0 and stats["max"] == 120.0
    assert stats["spread_pct"] == pytest.approx(40.0)


def test_flop_count_of_the_split_attention():
    config = {"item_dim": 32, "category_dim": 32, "user_dim": 32, "attention_hidden": (80, 40), "mlp_hidden": (200, 80)}
    split = benchmark.din_flops_per_sample(config, 100)
    unsplit = benchmark.din_flops_per_sample(config, 100, form="concat")
    folded = benchmark.din_flops_per_sample(config, 100, form="fold")
    # The split form removes about 40 % of the FLOPs at 100 positions; folding the query removes more.
    assert 0.35 < 1 - split / unsplit < 0.45
    assert folded < split
    assert benchmark.din_flops_per_sample(config, 100, train=True) == pytest.approx(3 * split)
    # The prediction MLP alone: 2 * (224 * 200 + 200 * 80 + 80).
    assert benchmark.din_flops_per_sample(config, 0, form="concat") == 2 * (224 * 200 + 200 * 80 + 80)
    assert benchmark.attention_form(config, 64) == "fold" and benchmark.attention_form(config, 8) == "split"
    assert benchmark.attention_form(dict(config, split_attention=False), 64) == "concat"


def test_environment_and_memory():
    info = machine.environment_info()
    assert info["platform"] == "cpu" and info["cpu_count"] >= 1
    assert machine.peak_rss_mb() > 10
    assert benchmark.measure_matmul_gflops(256, 64, 32, repeats=2) > 0
    assert np.isfinite(machine.peak_rss_mb())


def test_the_suite_script_prints_its_usage_for_help(tmp_path):
    for flag in ("--help", "-h"):
        result = subprocess.run(
            ["bash", os.path.join(ROOT, "experiments", "benchmark_suite.sh"), flag],
            cwd=str(tmp_path),
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0 and "SUITE_ONLY" in result.stdout
        assert "experiments/benchmark_suite.sh [OUTPUT_DIR] [PYTHON]" in result.stdout and not result.stderr
    assert not os.path.exists(os.path.join(ROOT, "--help")) and not os.path.exists(os.path.join(ROOT, "-h"))
