"""Every preset trains on real data (a slice of the embedded Amazon Grocery) without a non-finite loss.

The authors' presets run SGD at 1.0; without their gradient clipping (global norm 5) DIN diverges within a few
steps. A few hundred steps of each preset here keep a preset from ever shipping broken again.
"""

import os
import sys

import numpy as np
import pytest

from data_prep.builder import build_dataset
from data_prep.importers.common import BuildOptions
from din_jax.config import PRESETS, resolve_config
from din_jax.train.loop import train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROCERY = os.path.join(ROOT, "data", "amazon_grocery_5core")
# Minutes of real-data training: run by the current-stack lane. The IPU-proxy lane checks the IPU stack's API, which
# the other tests cover on these same code paths.
pytestmark = pytest.mark.skipif(sys.version_info < (3, 9), reason="real-data training runs in the current-stack lane")
USERS = 1600  # about 9,500 training samples: 290 steps of 32 per epoch


@pytest.fixture(scope="module")
def grocery_slice(tmp_path_factory):
    """The first USERS users of the embedded Grocery log (with the item table), built as the README builds it."""
    root = tmp_path_factory.mktemp("grocery")
    log = os.path.join(str(root), "train.csv")
    with open(os.path.join(GROCERY, "train.csv"), encoding="utf-8") as source, open(log, "w") as sliced:
        sliced.write(next(source))
        for line in source:
            if int(line.split("\t", 1)[0]) <= USERS:
                sliced.write(line)
    options = BuildOptions(
        format="interactions", input=log, meta=os.path.join(GROCERY, "item_meta.csv"), category_col="i_category"
    )
    output = os.path.join(str(root), "dataset")
    build_dataset(options, output)
    return output


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_trains_without_a_non_finite_loss(preset, grocery_slice):
    config = resolve_config(
        preset,
        {"dataset": grocery_slice, "max_seq_len": 30, "epochs": 1, "device_iterations": 50, "replicas": 1},
    )
    summary = train_and_evaluate(config, handle_signals=False)
    assert summary["stopped"] is None, summary["stopped"]
    assert summary["steps"] >= 250
    assert np.isfinite(summary["validation"]["logloss"]) and np.isfinite(summary["test"]["logloss"])


def test_the_authors_learning_rate_diverges_without_their_clipping(grocery_slice):
    # What the presets' clipping prevents (the test above could not fail without it).
    config = resolve_config(
        "din_paper",
        {"dataset": grocery_slice, "max_seq_len": 30, "epochs": 1, "device_iterations": 50, "replicas": 1},
    )
    config.clip_norm = 0.0
    config.model_config["activation"] = "dice"
    summary = train_and_evaluate(config, handle_signals=False)
    assert summary["stopped"] is not None and summary["stopped"]["reason"] == "non-finite"
