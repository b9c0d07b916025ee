"""The absl entry points as a user runs them: one-line errors, exit codes, the step chain."""

import json
import os
import re
import subprocess
import sys

import pytest
from dataprep_testlib import REPO_ROOT, fixture

from din_jax.data.dataset import load_dataset

REVIEWS = fixture("amazon", "reviews_Tiny_5.json.gz")
META = fixture("amazon", "meta_Tiny.json")


def _run(script, *args):
    return subprocess.run(
        [sys.executable, os.path.join("data_prep", script)] + list(args),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_one_line_error(result, program, pattern):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(program + ": error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert pattern in errors[0], errors[0]


def test_build_errors_are_one_line(tmp_path):
    _assert_one_line_error(
        _run("build.py", "--input", REVIEWS, "--output", str(tmp_path / "x")), "build.py", "--format is required"
    )
    _assert_one_line_error(
        _run(
            "build.py",
            "--format",
            "amazon",
            "--input",
            str(tmp_path / "missing.json.gz"),
            "--meta",
            META,
            "--output",
            str(tmp_path / "x"),
        ),
        "build.py",
        "no such file",
    )
    _assert_one_line_error(
        _run(
            "build.py",
            "--format",
            "amazon",
            "--input",
            REVIEWS,
            "--meta",
            META,
            "--output",
            str(tmp_path / "x"),
            "--strict",
            "--workers",
            "1",
        ),
        "build.py",
        "reviews_Tiny_5.json.gz:4",
    )
    assert not os.path.exists(str(tmp_path / "x"))


@pytest.mark.parametrize("script", ["build.py", "convert.py", "remap.py", "download.py"])
def test_command_line_errors_are_one_line(script):
    for args, expected in (
        (["--bogus"], "Unknown command line flag 'bogus'"),
        (["stray"], "unexpected arguments: stray"),
    ):
        result = _run(script, *args)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        _assert_one_line_error(result, script, expected)


def test_build_then_refuse_then_overwrite(tmp_path):
    output = str(tmp_path / "tiny")
    args = ["--format", "amazon", "--input", REVIEWS, "--meta", META, "--output", output]
    first = _run("build.py", *args)
    assert first.returncode == 0, first.stderr
    assert "users 2  items 5  categories 4" in first.stdout
    assert re.search(r"^  malformed_lines +3$", first.stdout, re.M), first.stdout
    # Long counter names do not run into their numbers.
    assert re.search(r"^  metadata_items_without_reviews +\d+$", first.stdout, re.M), first.stdout
    _assert_one_line_error(_run("build.py", *args), "build.py", "already exists; pass --overwrite")
    again = _run("build.py", *(args + ["--overwrite", "--seed", "99"]))
    assert again.returncode == 0, again.stderr
    assert load_dataset(output).meta["build"]["seed"] == 99
    assert sorted(os.listdir(str(tmp_path))) == ["tiny"]


def test_step_by_step_chain(tmp_path):
    converted, remapped = str(tmp_path / "converted"), str(tmp_path / "remapped")
    result = _run("convert.py", "--input", REVIEWS, "--meta", META, "--output_dir", converted, "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert json.load(open(os.path.join(converted, "convert.json")))["dropped"]["malformed_lines"] == 3
    result = _run("remap.py", "--input", converted, "--output_dir", remapped)
    assert result.returncode == 0, result.stderr
    assert "remapped: 2 users, 5 items, 4 categories, 7 interactions" in result.stdout
    result = _run("build.py", "--format", "remapped", "--input", remapped, "--output", str(tmp_path / "ds"))
    assert result.returncode == 0, result.stderr
    meta = load_dataset(str(tmp_path / "ds")).meta
    assert meta["splits"] == {"train": 2, "validation": 4, "test": 4}
    assert meta["dropped"]["malformed_lines"] == 3 and meta["dropped"]["duplicate_reviews"] == 1
    _assert_one_line_error(
        _run("remap.py", "--input", str(tmp_path / "nothing"), "--output_dir", remapped),
        "remap.py",
        "run convert.py first",
    )


def test_synthetic_amazon_builds_to_the_requested_counts(tmp_path):
    raw = str(tmp_path / "raw")
    result = _run(
        "make_synthetic_amazon.py",
        "--output_dir",
        raw,
        "--users",
        "300",
        "--items",
        "120",
        "--reviews",
        "2700",
        "--categories",
        "25",
        "--meta_items",
        "400",
        "--compresslevel",
        "1",
    )
    assert result.returncode == 0, result.stderr
    with open(os.path.join(raw, "meta_Electronics.json.gz"), "rb") as handle:
        assert handle.read(2) == b"\x1f\x8b"
    result = _run(
        "build.py",
        "--format",
        "amazon",
        "--input",
        os.path.join(raw, "reviews_Electronics_5.json.gz"),
        "--meta",
        os.path.join(raw, "meta_Electronics.json.gz"),
        "--output",
        str(tmp_path / "ds"),
    )
    assert result.returncode == 0, result.stderr
    meta = load_dataset(str(tmp_path / "ds")).meta
    assert (meta["users"], meta["items"], meta["categories"], meta["events"]) == (300, 120, 25, 2700)
    assert meta["splits"] == {"train": 2 * (2700 - 3 * 300), "validation": 600, "test": 600}
    assert meta["dropped"]["malformed_lines"] == 0 and meta["dropped"]["duplicate_reviews"] == 0


def test_download_offline_is_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.argv = ['download.py', '--output_dir', sys.argv[1], '--timeout', '2'];"
            "import data_prep.download as d, data_prep.download;"
            "d.URL_TEMPLATES['2014'] = {k: 'http://127.0.0.1:9/' + k + '_{category}.json.gz' for k in ('reviews', 'meta')};"
            "from absl import app, flags;"
            "flags.DEFINE_string('output_dir', None, '');flags.DEFINE_string('category', 'Electronics', '');"
            "flags.DEFINE_string('release', '2014', '');flags.DEFINE_float('timeout', 2.0, '');app.run(d.main)",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    _assert_one_line_error(result, "download.py", "by hand")


@pytest.mark.parametrize("script", ["download.py"])  # the other scripts run in the tests above
def test_help_lists_the_flags(script):
    # Imports resolve when the file is run as a script from the repo root.
    result = _run(script, "--helpshort")
    assert "Traceback" not in result.stderr
    assert "--output" in result.stdout
