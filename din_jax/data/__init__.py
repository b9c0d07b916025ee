"""Reading built datasets, batching, and synthetic data."""

from din_jax.data.dataset import (
                                  FORMAT_VERSION,
                                  SAMPLE_COLUMNS,
                                  Dataset,
                                  DatasetError,
                                  gather_rows,
                                  load_dataset,
                                  write_dataset,
)
from din_jax.data.negatives import make_user_item_keys, sample_negatives

__all__ = [
    "FORMAT_VERSION",
    "SAMPLE_COLUMNS",
    "Dataset",
    "DatasetError",
    "gather_rows",
    "load_dataset",
    "make_user_item_keys",
    "sample_negatives",
    "write_dataset",
]
