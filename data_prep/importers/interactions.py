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
are not dates are malformed lines. A timestamp column of a Parquet table is
read as dates.

Parquet can hold a list in a cell. A category cell that holds a list (a
category path, or a list of paths) gives its last element, the Amazon rule;
an empty list is a missing category. A list in the user, item or time column
is an error naming the column and the row: there is no rule to pick one.
"""

import warnings
from typing import Callable, List, Optional, Tuple

import numpy as np
import pandas as pd

from data_prep.importers.common import BuildOptions, Imported, finish_protocol, require_file
from data_prep.remap import clean_and_remap
from data_prep.report import BuildReport, DataPrepError, reading
from data_prep.tables import read_table

# Formats other than ISO 8601 are parsed value by value (dateutil): try them on
# this many values first, so that a column of garbage fails fast.
_DATE_SAMPLE = 1000


# Cell values that are containers (Parquet list and struct columns).
_NESTED = (list, tuple, np.ndarray, dict, set)


def _where(path: str, lines: Optional[np.ndarray], row: int):
    return (path, int(lines[row])) if lines is not None else (path + " row", row + 1)


# What pandas' (compiled) type inference calls a column whose cells cannot be containers.
_SCALAR_KINDS = frozenset(
    (
        "string",
        "bytes",
        "integer",
        "floating",
        "mixed-integer-float",
        "decimal",
        "complex",
        "boolean",
        "datetime64",
        "datetime",
        "date",
        "timedelta64",
        "timedelta",
        "time",
        "period",
        "interval",
        "categorical",
        "empty",
    )
)


def _nested_rows(values: pd.Series) -> np.ndarray:
    """Positions of the cells that hold a container (none in a text table's strings)."""
    if values.dtype != object or pd.api.types.infer_dtype(values, skipna=True) in _SCALAR_KINDS:
        # The common case, checked without a Python call per cell (0.5 s per column of 1.7 M strings, pandas 2.0).
        return np.zeros(0, dtype=np.int64)
    nested = values.map(lambda value: isinstance(value, _NESTED), na_action="ignore")
    return np.flatnonzero(nested.fillna(False).to_numpy(dtype=bool))


def _refuse_nested(frame: pd.DataFrame, path: str, lines: Optional[np.ndarray], columns) -> None:
    for column in columns:
        rows = _nested_rows(frame[column])
        if len(rows):
            file, line = _where(path, lines, int(rows[0]))
            value = repr(_plain(frame[column].iat[int(rows[0])]))[:60]
            raise DataPrepError(
                f"{file}:{line}: column {column!r} holds a list ({value}; {len(rows)} such rows); "
                "it needs one value per row"
            )


def _plain(value):
    return value.tolist() if isinstance(value, np.ndarray) else value


def _leaf(value, rule: str = "last"):
    """The last (or first) element of a (nested) list; None for an empty one."""
    while isinstance(value, (list, tuple, np.ndarray)):
        if len(value) == 0:
            return None
        value = value[0 if rule == "first" else -1]
    return value


def category_values(
    values: pd.Series,
    path: str,
    where: Callable[[int], Tuple[str, int]],
    column: str,
    report: BuildReport,
    separator: str = "",
    rule: str = "last",
) -> np.ndarray:
    """A category column as objects; list cells give their last element (the Amazon rule). ``separator`` splits text
    cells holding several values ('Action Comedy'), of which ``rule`` (first or last) is the category."""
    out = values.to_numpy(dtype=object)
    if separator:
        split = [[p for p in c.split(separator) if p.strip()] if isinstance(c, str) else None for c in out]
        several = sum(1 for parts in split if parts is not None and len(parts) > 1)
        index = 0 if rule == "first" else -1
        out = np.array(
            [c if parts is None else (parts[index] if parts else None) for c, parts in zip(out, split)], object
        )
        report.note(f"{path}: {several} cells of {column!r} hold several values; the {rule} is the category")
    rows = _nested_rows(values)
    if not len(rows):
        return out
    out = out.copy()
    for row in rows:
        value = out[row]
        if isinstance(value, (dict, set)):
            file, line = where(int(row))
            raise DataPrepError(
                f"{file}:{line}: column {column!r} holds a {type(value).__name__} "
                f"({repr(_plain(value))[:60]}); a category cell is a value or a list of them"
            )
        out[row] = _leaf(value, rule)
    report.note(f"{path}: {len(rows)} cells of {column!r} hold lists; their {rule} element is the category")
    return out


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
    if pd.api.types.is_datetime64_any_dtype(values):
        # A timestamp column (Parquet): pd.to_numeric would give nanoseconds, and NaT a huge negative number.
        stamps = values.dt.tz_localize("UTC") if values.dt.tz is None else values
        seconds = (stamps - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
        return seconds.astype("float64").to_numpy(), "date"
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
        raise DataPrepError(
            "{}: no column {} (columns: {}); name them with --user_col / --item_col / "
            "--category_col / --time_col".format(
                path, ", ".join(repr(c) for c in missing), ", ".join(repr(str(c))[:40] for c in frame.columns[:20])
            )
        )


def _report_invalid_rows(
    frame: pd.DataFrame,
    lines: Optional[np.ndarray],
    path: str,
    options: BuildOptions,
    times: np.ndarray,
    kind: Optional[str],
    report: BuildReport,
) -> np.ndarray:
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


def _column_names(text: str) -> Optional[List[str]]:
    """``--columns a,b,c`` as names (None when not given); DataPrepError for empty or repeated names."""
    if not text:
        return None
    names = [name.strip() for name in text.split(",")]
    if not all(names) or len(set(names)) != len(names):
        raise DataPrepError(f"--columns must be distinct non-empty names separated by commas, got {text!r}")
    return names


def _keep_rows(frame: pd.DataFrame, lines: Optional[np.ndarray], path: str, rule: str, report: BuildReport):
    """``--keep_rows COLUMN=V1,V2``: the rows whose COLUMN is one of the values (e.g. the event types wanted)."""
    if not rule:
        return frame, lines
    column, sep, values = rule.partition("=")
    wanted = {value.strip() for value in values.split(",") if value.strip()}
    if not sep or not column.strip() or not wanted:
        raise DataPrepError(f"--keep_rows must be COLUMN=VALUE[,VALUE...], got {rule!r}")
    _require_columns(frame, path, [column.strip()])
    keep = frame[column.strip()].astype(str).str.strip().isin(wanted).to_numpy()
    report.count("rows_not_kept", int((~keep).sum()))
    if not keep.any():
        raise DataPrepError(f"--keep_rows {rule}: no row of {path} has one of these values")
    return frame[keep], (lines[keep] if lines is not None else None)


def _first_interactions(users: pd.Series, items: pd.Series, times: np.ndarray) -> np.ndarray:
    """Bool per row: the earliest interaction of its (user, item) pair (ties: the first in the file)."""
    order = np.argsort(times, kind="stable")
    pairs = pd.DataFrame({"user": users.to_numpy(dtype=object)[order], "item": items.to_numpy(dtype=object)[order]})
    first = np.zeros(len(times), dtype=bool)
    first[order[~pairs.duplicated().to_numpy()]] = True
    return first


def import_interactions(options: BuildOptions, report: BuildReport) -> Imported:
    """Interaction table (+ optional item table) -> DIN protocol dataset."""
    path = require_file(options.input, "--input (the interaction table)")
    if options.repeats not in ("keep", "first"):
        raise DataPrepError(f"--repeats must be keep or first, got {options.repeats!r}")
    names = _column_names(options.columns)
    with report.timed("read"):
        frame, lines = read_table(path, report, sep=options.sep or None, names=names)
        needed = [options.user_col, options.item_col] + ([options.time_col] if options.time_col else [])
        _require_columns(frame, path, needed)
        _refuse_nested(frame, path, lines, needed)
        frame, lines = _keep_rows(frame, lines, path, options.keep_rows, report)
        if options.category_col and options.category_col in frame.columns and options.meta:
            raise DataPrepError(
                f"{path} has its own category column {options.category_col!r}, so --meta "
                f"{options.meta} would be ignored; drop --meta, or pass --category_col naming a "
                "column that only the item table has"
            )
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
                raise DataPrepError(
                    f"--time_col {options.time_col!r}: most values in {path} are neither numbers "
                    f"nor dates{example}; name the time column, or pass --time_col '' to use the "
                    "file order"
                )
        else:
            times, kind = np.arange(len(frame), dtype=np.float64), None
        valid = _report_invalid_rows(frame, lines, path, options, times, kind, report)
        frame = frame[valid]
        times = np.rint(times[valid]).astype(np.int64)
        if options.repeats == "first":
            first = _first_interactions(frame[options.user_col], frame[options.item_col], times)
            report.count("repeat_interactions", int((~first).sum()))
            valid[np.flatnonzero(valid)[~first]] = False
            frame, times = frame[first], times[first]
        sources = [path]
        row_categories = None
        meta_items = meta_categories = None
        if options.category_col and options.category_col in frame.columns:
            kept = np.flatnonzero(valid)  # rows of the file, for messages
            row_categories = category_values(
                frame[options.category_col],
                path,
                lambda row: _where(path, lines, int(kept[row])),
                options.category_col,
                report,
                options.category_sep,
                options.category_rule,
            )
        elif options.meta:
            meta_path = require_file(options.meta, "--meta (the item table)")
            items, meta_lines = read_table(meta_path, report, sep=options.sep or None)
            _require_columns(items, meta_path, [options.item_col, options.category_col])
            _refuse_nested(items, meta_path, meta_lines, [options.item_col])
            meta_items = items[options.item_col].to_numpy(dtype=object)
            meta_categories = category_values(
                items[options.category_col],
                meta_path,
                lambda row: _where(meta_path, meta_lines, row),
                options.category_col,
                report,
                options.category_sep,
                options.category_rule,
            )
            sources.append(meta_path)
        elif options.category_col:
            raise DataPrepError(
                f"{path}: no category column {options.category_col!r} and no --meta item table; "
                "pass --category_col '' to build without categories"
            )
        else:
            report.note("no categories: every item is <unknown>")
    with report.timed("clean + remap"):
        log = clean_and_remap(
            frame[options.user_col].to_numpy(dtype=object),
            frame[options.item_col].to_numpy(dtype=object),
            times,
            meta_items,
            meta_categories,
            report,
            item_categories=row_categories,
        )
    return finish_protocol(log, options, report, sources)
