"""Test configuration: two CPU devices, so that data-parallel code is exercised."""

import os
import sys

# Must happen before jax is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def write_dataset_directory(source, path, max_seq_len, prefixes=("", "", "")):
    """Writes an in-memory Dataset (e.g. a synthetic one) as a dataset directory whose raw ids are ``prefix + i``."""
    import numpy as np

    from din_jax.data.writer import write_dataset

    sizes = (source.num_users, source.num_items, source.num_categories)
    id_maps = {
        kind: ["%s%d" % (p, i) for i in range(n)] for kind, p, n in zip(("user", "item", "category"), prefixes, sizes)
    }
    write_dataset(
        path,
        sequences=source.sequences,
        offsets=source.offsets,
        item_category=source.item_category,
        splits={name: np.asarray(source.samples(name)) for name in source.split_names()},
        meta={"name": "synthetic", "source_format": "synthetic", "max_seq_len": max_seq_len},
        id_maps=id_maps,
    )
