"""``--format interactions``: a generic interaction table (CSV/TSV/Parquet/npz).

Columns are named by flags (defaults ``user_id``, ``item_id``, ``category``,
``time``). The category comes from the table itself if it has the category
column, else from an item table given as ``--meta`` (same ``--item_col``),
else (``--category_col ''``) every item gets the ``<unknown>`` category. With
``--time_col ''`` the file order is the time order.
"""

from typing import Optional

import numpy as np
import pandas as pd

from data_prep.importers.common import BuildOptions, Imported, finish_protocol, require_file
from data_prep.remap import clean_and_remap
from data_prep.report import BuildReport, DataPrepError
from data_prep.tables import read_table


def _where(path: str, lines: Optional[np.ndarray], row: int):
    return (path, int(lines[row])) if lines is not None else (path + " row", row + 1)


def parse_times(values: pd.Series) -> np.ndarray:
    """Returns float64 times (unix seconds for dates), NaN where a value is neither a number nor a date."""
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.isna().sum() > values.isna().sum():
        # Not all numeric: maybe dates ("2014-07-01", ...).
        dates = pd.to_datetime(values, errors="coerce", utc=True)
        if dates.notna().sum() > numbers.notna().sum():
            seconds = (dates - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
            return seconds.astype("float64").to_numpy()
    return numbers.astype("float64").to_numpy()


def _require_columns(frame: pd.DataFrame, path: str, columns) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise DataPrepError("{}: no column {} (columns: {}); name them with --user_col / --item_col / "
                            "--category_col / --time_col".format(path, ", ".join(repr(c) for c in missing),
                                                                ", ".join(map(str, frame.columns))))


def import_interactions(options: BuildOptions, report: BuildReport) -> Imported:
    """Interaction table (+ optional item table) -> DIN protocol dataset."""
    path = require_file(options.input, "--input (the interaction table)")
    with report.timed("read"):
        frame, lines = read_table(path, report, sep=options.sep or None)
    needed = [options.user_col, options.item_col] + ([options.time_col] if options.time_col else [])
    _require_columns(frame, path, needed)
    valid = frame[options.user_col].notna().to_numpy() & frame[options.item_col].notna().to_numpy()
    if options.time_col:
        times = parse_times(frame[options.time_col])
        valid &= ~np.isnan(times)
    else:
        times = np.arange(len(frame), dtype=np.float64)
    for row in np.flatnonzero(~valid):
        file, line = _where(path, lines, int(row))
        report.malformed(file, line, "missing user, item or time value (or a time that is neither a number "
                         "nor a date)")
    frame = frame[valid]
    times = np.rint(times[valid]).astype(np.int64)
    sources = [path]
    row_categories = None
    meta_items = meta_categories = None
    if options.category_col and options.category_col in frame.columns:
        row_categories = frame[options.category_col].to_numpy(dtype=object)
    elif options.meta:
        meta_path = require_file(options.meta, "--meta (the item table)")
        items, _ = read_table(meta_path, report, sep=options.sep or None)
        _require_columns(items, meta_path, [options.item_col, options.category_col])
        meta_items = items[options.item_col].to_numpy(dtype=object)
        meta_categories = items[options.category_col].to_numpy(dtype=object)
        sources.append(meta_path)
    elif options.category_col:
        raise DataPrepError(f"{path}: no category column {options.category_col!r} and no --meta item table; pass --category_col '' to "
                            "build without categories")
    else:
        report.note("no categories: every item is <unknown>")
    with report.timed("clean + remap"):
        log = clean_and_remap(frame[options.user_col].to_numpy(dtype=object),
                              frame[options.item_col].to_numpy(dtype=object), times, meta_items, meta_categories,
                              report, item_categories=row_categories)
    return finish_protocol(log, options, report, sources)
