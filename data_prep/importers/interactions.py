"""``--format interactions``: a generic interaction table (CSV/TSV/Parquet/npz).

Columns are named by flags (defaults ``user_id``, ``item_id``, ``category``,
``time``). The category comes from the table itself if it has the category
column, else from an item table given as ``--meta`` (same ``--item_col``),
else (``--category_col ''``) every item gets the ``<unknown>`` category.
Giving ``--meta`` for a table that has the category column is an error (one
of the two would be ignored). With ``--time_col ''`` the file order is the
time order.

The time column holds numbers or dates. It is numeric when most of its values
are numbers, and the others are then malformed lines; otherwise its values are
parsed as dates (ISO 8601, else any format pandas recognises), and those that
are not dates are malformed lines.
"""

import warnings
from typing import Optional, Tuple

import numpy as np
import pandas as pd

from data_prep.importers.common import BuildOptions, Imported, finish_protocol, require_file
from data_prep.remap import clean_and_remap
from data_prep.report import BuildReport, DataPrepError, reading
from data_prep.tables import read_table

# Formats other than ISO 8601 are parsed value by value (dateutil): try them on
# this many values first, so that a column of garbage fails fast.
_DATE_SAMPLE = 1000


def _where(path: str, lines: Optional[np.ndarray], row: int):
    return (path, int(lines[row])) if lines is not None else (path + " row", row + 1)


def _to_dates(values: pd.Series, date_format: Optional[str]) -> pd.Series:
    with warnings.catch_warnings():
        # "Could not infer format ..." and friends: the caller judges the result itself.
        warnings.simplefilter("ignore")
        if date_format is not None:
            try:
                return pd.to_datetime(values, errors="coerce", utc=True, format=date_format)
            except (TypeError, ValueError):  # a pandas without format="ISO8601" / "mixed" (< 2.0)
                pass
        return pd.to_datetime(values, errors="coerce", utc=True)


def parse_times(values: pd.Series) -> Tuple[np.ndarray, Optional[str]]:
    """Parses a time column.

    Returns:
      ``(times, kind)``: float64 times (unix seconds for dates), NaN where a
      value is missing or not of the column's kind; ``kind`` is ``"number"``
      or ``"date"``, or None when most present values are neither (then every
      time is NaN).
    """
    present = int(values.notna().sum())
    numbers = pd.to_numeric(values, errors="coerce")
    if 2 * int(numbers.notna().sum()) >= present:
        return numbers.astype("float64").to_numpy(), "number"
    dates = _to_dates(values, "ISO8601")
    if 2 * int(dates.notna().sum()) < present:
        sample = values[values.notna()].iloc[:_DATE_SAMPLE]
        if 2 * int(_to_dates(sample, "mixed").notna().sum()) >= len(sample):
            dates = _to_dates(values, "mixed")
    if 2 * int(dates.notna().sum()) < present:
        return np.full(len(values), np.nan), None
    seconds = (dates - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
    return seconds.astype("float64").to_numpy(), "date"


def _require_columns(frame: pd.DataFrame, path: str, columns) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise DataPrepError("{}: no column {} (columns: {}); name them with --user_col / --item_col / "
                            "--category_col / --time_col".format(path, ", ".join(repr(c) for c in missing),
                                                                ", ".join(map(str, frame.columns))))


def _report_invalid_rows(frame: pd.DataFrame, lines: Optional[np.ndarray], path: str, options: BuildOptions,
                         times: np.ndarray, kind: Optional[str], report: BuildReport) -> np.ndarray:
    """Reports each row without a usable user, item or time (with its line); returns the valid-row mask."""
    columns = [options.user_col, options.item_col] + ([options.time_col] if options.time_col else [])
    missing = np.stack([frame[column].isna().to_numpy() for column in columns], axis=1)
    if options.time_col:
        bad_time = ~np.isfinite(times) & ~missing[:, -1]
    else:
        bad_time = np.zeros(len(frame), dtype=bool)
    invalid = missing.any(axis=1) | bad_time
    for row in np.flatnonzero(invalid):
        file, line = _where(path, lines, int(row))
        absent = [column for column, gone in zip(columns, missing[row]) if gone]
        if absent:
            reason = "missing value in column{} {}".format("s" if len(absent) > 1 else "", ", ".join(absent))
        else:
            value = str(frame[options.time_col].iat[int(row)])[:40]
            expected = "finite number" if kind == "number" else "date"
            reason = f"{options.time_col} {value!r} is not a {expected} (the column holds {kind}s)"
        report.malformed(file, line, reason)
    return ~invalid


def import_interactions(options: BuildOptions, report: BuildReport) -> Imported:
    """Interaction table (+ optional item table) -> DIN protocol dataset."""
    path = require_file(options.input, "--input (the interaction table)")
    with report.timed("read"):
        frame, lines = read_table(path, report, sep=options.sep or None)
        needed = [options.user_col, options.item_col] + ([options.time_col] if options.time_col else [])
        _require_columns(frame, path, needed)
        if options.category_col and options.category_col in frame.columns and options.meta:
            raise DataPrepError(f"{path} has its own category column {options.category_col!r}, so --meta "
                                f"{options.meta} would be ignored; drop --meta, or pass --category_col naming a "
                                "column that only the item table has")
        if options.time_col:
            with reading(path):
                times, kind = parse_times(frame[options.time_col])
            if kind is None:
                present = np.flatnonzero(frame[options.time_col].notna().to_numpy())
                example = ""
                if len(present):
                    file, line = _where(path, lines, int(present[0]))
                    value = str(frame[options.time_col].iat[int(present[0])])[:40]
                    example = f" (e.g. {value!r} at {file}:{line})"
                raise DataPrepError(f"--time_col {options.time_col!r}: most values in {path} are neither numbers "
                                    f"nor dates{example}; name the time column, or pass --time_col '' to use the "
                                    "file order")
        else:
            times, kind = np.arange(len(frame), dtype=np.float64), None
        valid = _report_invalid_rows(frame, lines, path, options, times, kind, report)
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
            raise DataPrepError(f"{path}: no category column {options.category_col!r} and no --meta item table; "
                                "pass --category_col '' to build without categories")
        else:
            report.note("no categories: every item is <unknown>")
    with report.timed("clean + remap"):
        log = clean_and_remap(frame[options.user_col].to_numpy(dtype=object),
                              frame[options.item_col].to_numpy(dtype=object), times, meta_items, meta_categories,
                              report, item_categories=row_categories)
    return finish_protocol(log, options, report, sources)
