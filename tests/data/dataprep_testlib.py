"""Shared paths and small builders for the data tests."""

import os

import numpy as np

from data_prep.builder import build_dataset
from data_prep.importers.common import BuildOptions
from din_jax.data.dataset import load_dataset
from din_jax.data.writer import write_dataset

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures")
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))


def fixture(*parts: str) -> str:
    return os.path.join(FIXTURES, *parts)


def build(tmp_path, name: str = "ds", **options):
    """Builds a dataset into ``tmp_path/name`` and returns ``(Dataset, meta)``."""
    output = os.path.join(str(tmp_path), name)
    options.setdefault("workers", 1)
    overwrite = options.pop("overwrite", False)
    strict = options.pop("strict", False)
    meta = build_dataset(BuildOptions(**options), output, overwrite=overwrite, strict=strict)
    return load_dataset(output), meta


def write_random_dataset(
    path: str,
    seed: int = 0,
    users: int = 7,
    items: int = 30,
    categories: int = 4,
    resampleable: bool = True,
    max_len: int = 12,
):
    """A valid random dataset: one sequence per user, random sample rows over every split."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len + 1, size=users)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # Distinct items per user, so a user never has every item.
    sequences = np.concatenate([rng.choice(items - 2, size=n, replace=False) for n in lengths]).astype(np.int32)
    item_category = rng.integers(0, categories, size=items).astype(np.int32)
    item_category[:categories] = np.arange(categories)
    splits = {}
    for name, rows in (("train", 40), ("validation", 9), ("test", 11)):
        user = rng.integers(0, users, size=rows)
        position = rng.integers(1, lengths[user] + 1)
        samples = np.stack(
            [user, user, position, rng.integers(0, items, size=rows), rng.integers(0, 2, size=rows)], axis=1
        )
        splits[name] = samples.astype(np.int32)
    meta = {
        "name": "random",
        "source_format": "interactions",
        "max_seq_len": 5,
        "negatives": {"resampleable": resampleable, "seed": seed},
    }
    id_maps = {
        "user": ["u%d" % i for i in range(users)],
        "item": ["i%d" % i for i in range(items)],
        "category": ["c%d" % i for i in range(categories)],
    }
    write_dataset(
        path,
        sequences=sequences,
        offsets=offsets,
        item_category=item_category,
        splits=splits,
        meta=meta,
        id_maps=id_maps,
    )
    return sequences, offsets, item_category, splits
