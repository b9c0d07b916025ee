"""Columnar tables on disk: npz (always available), Parquet (with pyarrow), CSV/TSV (read only).

The npz layout is numpy only, so it loads with ``allow_pickle=False``: a
numeric column ``c`` is the array ``c``; a string column is stored
dictionary-encoded as ``c.keys`` (unicode array of the distinct values) and
``c.codes`` (int32 indices, -1 for missing). ``__columns__`` keeps the order.
"""

import contextlib
import csv
import io
import os
import sys
import warnings
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import pandas as pd

from data_prep.report import BuildReport, DataPrepError

TABLE_FORMATS = ("npz", "parquet")


def parquet_available() -> bool:
    """Returns True if pyarrow can be imported (Parquet support)."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


def table_path(directory: str, stem: str, table_format: str) -> str:
    """Returns ``directory/stem.npz`` or ``directory/stem.parquet``."""
    if table_format not in TABLE_FORMATS:
        raise DataPrepError(f"unknown table format {table_format!r}; choose from {list(TABLE_FORMATS)}")
    return os.path.join(directory, stem + "." + table_format)


def write_table(path: str, columns: Mapping[str, object]) -> None:
    """Writes columns (equal-length arrays or lists; strings may contain None) as .npz or .parquet."""
    if path.endswith(".parquet"):
        if not parquet_available():
            raise DataPrepError(f"writing {path} needs pyarrow, which is not installed; use --table_format npz")
        pd.DataFrame({name: _as_series(values) for name, values in columns.items()}).to_parquet(path, index=False)
        return
    if not path.endswith(".npz"):
        raise DataPrepError(f"{path}: tables are written as .npz or .parquet")
    arrays: Dict[str, np.ndarray] = {"__columns__": np.array(list(columns), dtype=str)}
    for name, values in columns.items():
        series = _as_series(values)
        if series.dtype == object or pd.api.types.is_string_dtype(series.dtype):
            codes, uniques = pd.factorize(series, sort=False)
            arrays[name + ".keys"] = np.array([str(key) for key in uniques], dtype=str)
            arrays[name + ".codes"] = codes.astype(np.int32)
        else:
            arrays[name] = series.to_numpy()
    temporary = path + ".tmp.npz"
    np.savez(temporary, **arrays)
    os.replace(temporary, path)


def _as_series(values) -> pd.Series:
    if isinstance(values, pd.Series):
        return values.reset_index(drop=True)
    if isinstance(values, np.ndarray):
        return pd.Series(values)
    return pd.Series(list(values), dtype=object if values and isinstance(_first(values), str) else None)


def _first(values):
    for value in values:
        if value is not None:
            return value
    return None


def _read_npz(path: str) -> pd.DataFrame:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = [str(name) for name in archive["__columns__"]]
            columns = {}
            for name in names:
                if name + ".codes" in archive.files:
                    codes = archive[name + ".codes"]
                    keys = archive[name + ".keys"].astype(object)
                    # -1 codes are missing values.
                    columns[name] = pd.Series(np.where(codes >= 0, keys[np.maximum(codes, 0)] if len(keys) else None,
                                                       None), dtype=object)
                else:
                    columns[name] = pd.Series(archive[name])
    except (OSError, ValueError, KeyError) as error:
        raise DataPrepError(f"{path}: not a table written by data_prep ({error})") from None
    return pd.DataFrame(columns)


def detect_separator(path: str) -> str:
    """Guesses the field separator of a text table from its first lines (tab, comma, semicolon or pipe)."""
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as handle:
            sample = handle.read(65536)
    except OSError as error:
        raise DataPrepError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        return csv.Sniffer().sniff(sample, delimiters="\t,;|").delimiter
    except csv.Error:
        first = sample.splitlines()[0] if sample else ""
        counts = {sep: first.count(sep) for sep in "\t,;|"}
        best = max(counts, key=counts.get)
        if counts[best] == 0:
            raise DataPrepError(f"{path}: cannot detect the column separator (tab, comma, semicolon or pipe); "
                                "pass --sep") from None
        return best


def read_table(path: str, report: BuildReport, sep: Optional[str] = None,
               usecols: Optional[List[str]] = None) -> Tuple[pd.DataFrame, Optional[np.ndarray]]:
    """Reads a CSV/TSV (separator detected), Parquet or npz table into a DataFrame.

    Text tables need a header line. Lines with the wrong number of fields are
    reported to ``report`` with their line numbers (``--strict`` makes the
    first one fatal). ``usecols`` restricts the columns read.

    Returns:
      ``(frame, line numbers)``: for text tables the 1-based file line of each
      row (for messages about bad values), else None.
    """
    if not os.path.isfile(path):
        raise DataPrepError(f"{path}: no such file")
    lower = path.lower()
    if lower.endswith(".parquet") or lower.endswith(".pq"):
        if not parquet_available():
            raise DataPrepError(f"reading {path} needs pyarrow, which is not installed; convert it to CSV")
        try:
            frame = pd.read_parquet(path)
        except Exception as error:  # pyarrow raises many types; all mean the same to the user
            raise DataPrepError(f"{path}: cannot read Parquet ({error})") from None
        return (frame if usecols is None else frame[[c for c in usecols if c in frame.columns]]), None
    if lower.endswith(".npz"):
        frame = _read_npz(path)
        return (frame if usecols is None else frame[[c for c in usecols if c in frame.columns]]), None
    separator = sep or detect_separator(path)
    # pandas reports skipped lines as a ParserWarning (>= 2.1) or on sys.stderr (older): catch both.
    printed = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(printed):
        warnings.simplefilter("always")
        try:
            frame = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, na_values=[""],
                                on_bad_lines="error" if report.strict else "warn", engine="c",
                                usecols=(lambda column: column in usecols) if usecols else None)
        except pd.errors.ParserError as error:
            raise DataPrepError(f"{path}: {str(error).strip().splitlines()[0]}") from None
        except (UnicodeDecodeError, pd.errors.EmptyDataError) as error:
            raise DataPrepError(f"{path}: cannot read as a text table ({error})") from None
    skipped = []
    messages = [str(warning.message) for warning in caught] + [printed.getvalue()]
    for line in "\n".join(messages).splitlines():
        # pandas: "Skipping line 7: expected 3 fields, saw 4"
        if line.startswith("Skipping line "):
            number, _, reason = line[len("Skipping line "):].partition(":")
            skipped.append(int(number))
            report.malformed(path, int(number), reason.strip() or "wrong number of fields")
        elif line.strip() and line in printed.getvalue():
            sys.stderr.write(line + "\n")
    # Row i is on line i + 2 (after the header), shifted past every skipped line before it.
    lines = np.arange(len(frame), dtype=np.int64) + 2
    for number in sorted(skipped):
        lines[lines >= number] += 1
    return frame, lines
