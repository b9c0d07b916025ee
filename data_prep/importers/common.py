"""What every importer takes and returns, and the shared finish of the protocol formats."""

import os
from typing import Dict, List, NamedTuple, Optional

import numpy as np

from data_prep.protocol import build_protocol_samples, describe_protocol
from data_prep.remap import RemappedLog
from data_prep.report import BuildReport, DataPrepError


class BuildOptions(NamedTuple):
    """Every build parameter (the flags of build.py); recorded in meta.json."""

    format: str
    input: str
    meta: Optional[str] = None
    seed: int = 1234
    max_seq_len: int = 100
    protocol: str = "validation"
    validation_users: float = 0.1
    din_validation: str = "users"
    users: int = 0
    user_col: str = "user_id"
    item_col: str = "item_id"
    category_col: str = "category"
    time_col: str = "time"
    sep: str = ""
    category_rule: str = "last"
    workers: int = 2
    columns: str = ""  # interactions: comma-separated column names of a headerless input table
    category_sep: str = ""  # interactions: splits a category cell holding several values ('Action Comedy')
    keep_rows: str = ""  # interactions: COLUMN=V1,V2: keep only the rows whose COLUMN is one of the values
    repeats: str = "keep"  # interactions: keep, or first (only a user's first interaction with an item)


class Imported(NamedTuple):
    """The arrays and descriptive meta fields of a dataset, ready for ``write_dataset``."""

    sequences: np.ndarray
    offsets: np.ndarray
    item_category: np.ndarray
    splits: Dict[str, np.ndarray]
    id_maps: Dict[str, List[str]]
    meta: dict
    sources: List[str]


def check_options(options: BuildOptions) -> None:
    """Raises DataPrepError naming the flag of the first out-of-range build parameter."""
    if options.max_seq_len < 1:
        # 0 or less would make the training frequency counts negative.
        raise DataPrepError(
            f"--max_seq_len must be >= 1 (the number of history items a batch keeps), got {options.max_seq_len}"
        )
    if options.seed < 0:
        raise DataPrepError(f"--seed must be >= 0, got {options.seed}")
    if not 0.0 <= options.validation_users < 1.0:
        raise DataPrepError(f"--validation_users must be in [0, 1), got {options.validation_users}")
    if options.users < 0:
        raise DataPrepError(f"--users must be >= 0 (0 = the largest user id + 1), got {options.users}")
    if options.workers < 1:
        raise DataPrepError(f"--workers must be >= 1, got {options.workers}")


def require_file(path: Optional[str], what: str) -> str:
    """Returns ``path`` if it is an existing file, else raises a DataPrepError naming ``what``."""
    if not path:
        raise DataPrepError(f"{what} is required")
    if not os.path.isfile(path):
        raise DataPrepError(f"{path}: no such file ({what})")
    return path


def finish_protocol(log: RemappedLog, options: BuildOptions, report: BuildReport, sources: List[str]) -> Imported:
    """Runs the DIN protocol on a remapped log and packs the result."""
    num_users, num_items = len(log.id_maps["user"]), len(log.id_maps["item"])
    if num_users == 0:
        raise DataPrepError(f"{options.input}: no user has {3} or more interactions after cleaning; nothing to build")
    with report.timed("protocol + negatives"):
        try:
            samples = build_protocol_samples(
                log.user, log.item, log.time, num_users, num_items, options.seed, options.protocol
            )
        except ValueError as error:
            raise DataPrepError(f"{options.input}: {error}") from None
    if options.protocol == "authors":
        report.note("authors' split: no validation split (train b2..b(n-1), test bn)")
    meta = {
        "protocol": describe_protocol(options.protocol),
        "negatives": {
            "resampleable": True,
            "seed": options.seed,
            "sampler": "uniform over the items the user never interacted with",
        },
    }
    return Imported(samples.sequences, samples.offsets, log.item_category, samples.splits, log.id_maps, meta, sources)
