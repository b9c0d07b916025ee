"""Reading and writing datasets, batching, and synthetic data."""

from din_jax.data.dataset import FORMAT_VERSION, SAMPLE_COLUMNS, Dataset, DatasetError, gather_rows, load_dataset
from din_jax.data.negatives import make_user_item_keys, sample_negatives
from din_jax.data.writer import write_dataset

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
