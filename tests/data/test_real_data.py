"""Counts on the real data in data/: the DIN sample, and the Grocery and Beauty 5-core categories.

The expected numbers were verified by hand against the publishers' counts in each PROVENANCE.md
(users, items, interactions) and the DIN protocol (train rows = 2 * (events -
3 * users), validation = test = 2 * users).
"""

import os
import subprocess
import sys

import numpy as np
from dataprep_testlib import REPO_ROOT, build

from din_jax.data.dataset import load_dataset

EMBEDDED = os.path.join(REPO_ROOT, "data", "amazon_electronics_din_sample")
GROCERY = os.path.join(REPO_ROOT, "data", "amazon_grocery_5core")
BEAUTY = os.path.join(REPO_ROOT, "data", "amazon_beauty_5core")


def test_embedded_din_sample(tmp_path):
    dataset, meta = build(tmp_path, format="din", input=EMBEDDED)
    assert (meta["users"], meta["items"], meta["categories"]) == (192403, 63001, 801)
    # 9,472 training users + 5,000 test users, 232 in both; every user's rows are consistent.
    assert meta["sequences"] == 14240
    assert meta["splits"] == {"train": 9005, "validation": 995, "test": 10000}
    assert meta["dropped"]["malformed_lines"] == 0
    assert meta["negatives"]["resampleable"] is False
    # The CSV rows come back from the stored sequences: the first test row.
    first = dataset.gather("test", np.array([0]), 100)
    assert first["hist_item"][0, :16].tolist() == [
        16942,
        42346,
        38112,
        36550,
        45547,
        31289,
        48828,
        38115,
        51873,
        25727,
        32576,
        34688,
        49156,
        40120,
        56219,
        54422,
    ]
    assert first["item"].tolist() == [57905] and first["hist_len"].tolist() == [16]


def _run_as_written(arguments, output):
    # The commands of the issue, run from the repository root with its relative paths.
    result = subprocess.run(
        [sys.executable, "data_prep/build.py"] + arguments + ["--output", output],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return load_dataset(output)


def test_grocery_interactions_command(tmp_path):
    dataset = _run_as_written(
        [
            "--format",
            "interactions",
            "--input",
            "data/amazon_grocery_5core/train.csv",
            "--meta",
            "data/amazon_grocery_5core/item_meta.csv",
            "--category_col",
            "i_category",
        ],
        str(tmp_path / "grocery"),
    )
    meta = dataset.meta
    assert (meta["users"], meta["items"], meta["events"]) == (14681, 8687, 121892)
    # 57 categories in item_meta.csv, 56 of them on reviewed items; every reviewed item has one.
    assert meta["categories"] == 56
    assert meta["splits"] == {"train": 155698, "validation": 29362, "test": 29362}
    dropped = meta["dropped"]
    assert (
        dropped["malformed_lines"],
        dropped["duplicate_reviews"],
        dropped["short_users"],
        dropped["unknown_category_reviews"],
    ) == (0, 0, 0, 0)
    assert dropped["metadata_items_without_reviews"] == 26


def test_beauty_sequences_command(tmp_path):
    dataset = _run_as_written(
        [
            "--format",
            "sequences",
            "--input",
            "data/amazon_beauty_5core/Beauty.txt",
            "--meta",
            "data/amazon_beauty_5core/Beauty_item2attributes.json",
        ],
        str(tmp_path / "beauty"),
    )
    meta = dataset.meta
    assert (meta["users"], meta["items"], meta["events"]) == (22363, 12101, 198502)
    assert meta["categories"] == 195  # distinct last attributes (deepest category) of the 12,101 items
    assert meta["splits"] == {"train": 262826, "validation": 44726, "test": 44726}
    assert meta["dropped"]["unknown_category_items"] == 0
