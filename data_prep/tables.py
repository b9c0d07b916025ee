"""Columnar tables on disk: npz (always available), Parquet (with pyarrow), CSV/TSV (read only).

The npz layout is numpy only, so it loads with ``allow_pickle=False``: a
numeric column ``c`` is the array ``c``; a string column is stored
dictionary-encoded as ``c.keys`` (unicode array of the distinct values) and
``c.codes`` (int32 indices, -1 for missing). ``__columns__`` keeps the order.
"""

import codecs
import contextlib
import csv
import io
import os
import re
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
        if _is_text(series):
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
                    columns[name] = pd.Series(
                        np.where(codes >= 0, keys[np.maximum(codes, 0)] if len(keys) else None, None), dtype=object
                    )
                else:
                    columns[name] = pd.Series(archive[name])
    except (OSError, ValueError, KeyError) as error:
        raise DataPrepError(f"{path}: not a table written by data_prep ({error})") from None
    return pd.DataFrame(columns)


def detect_separator(path: str) -> str:
    """Guesses the field separator of a text table from its first lines: tab, comma, semicolon or pipe, else a space
    (a ``user item`` file)."""
    try:
        with open(path, encoding="utf-8", errors="replace", newline="") as handle:
            sample = handle.read(65536)
    except OSError as error:
        raise DataPrepError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        return csv.Sniffer().sniff(sample, delimiters="\t,;|").delimiter
    except csv.Error:
        first = sample.splitlines()[0] if sample else ""
        counts = {sep: first.count(sep) for sep in "\t,;| "}
        best = max("\t,;|", key=counts.get)
        if counts[best] == 0:
            if counts[" "]:
                return " "
            raise DataPrepError(
                f"{path}: cannot detect the column separator (tab, comma, semicolon, pipe or space); pass --sep"
            ) from None
        return best


def read_table(
    path: str,
    report: BuildReport,
    sep: Optional[str] = None,
    usecols: Optional[List[str]] = None,
    names: Optional[List[str]] = None,
) -> Tuple[pd.DataFrame, Optional[np.ndarray]]:
    """Reads a CSV/TSV (separator detected), Parquet or npz table into a DataFrame.

    Text tables are UTF-8 and need a header line, unless ``names`` names the columns of a headerless one. Lines with the wrong number
    of fields, and lines that are not UTF-8 (their rows are dropped), are
    reported to ``report`` with their line numbers (``--strict`` makes the
    first one fatal). ``usecols`` restricts the columns read.

    Returns:
      ``(frame, line numbers)``: for text tables the 1-based file line where
      each row starts (for messages about bad values; blank lines, skipped
      lines and quoted line breaks accounted for), or None when that cannot be
      known for sure; None for Parquet and npz.
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
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise DataPrepError(f"cannot read {path}: {error.strerror or error}") from None
    layout = _LineLayout(data, separator)
    not_utf8 = _undecodable_lines(data, layout)
    header = 0 if names else layout.first_nonblank()
    if header in not_utf8:
        raise DataPrepError(f"{path}:{header}: the header line is {not_utf8[header]}; the table must be UTF-8 text")
    first_bad = min(not_utf8) if not_utf8 else None
    # pandas reports skipped lines as a ParserWarning (>= 2.1) or on sys.stderr (older): catch both.
    printed = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(printed):
        warnings.simplefilter("always")
        try:
            # Bad bytes become U+FFFD here; the rows on those lines are dropped below, by line number.
            frame = pd.read_csv(
                io.BytesIO(data),
                sep=separator,
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                on_bad_lines="error" if report.strict else "warn",
                engine="c",
                encoding="utf-8",
                encoding_errors="replace",
                usecols=(lambda column: column in usecols) if usecols else None,
                header=None if names else "infer",
                names=names or None,
            )
        except pd.errors.ParserError as error:
            message = str(error).strip().splitlines()[0]
            found = re.search(r"line (\d+)", message)
            if first_bad is not None and (found is None or first_bad < int(found.group(1))):
                report.malformed(path, first_bad, not_utf8[first_bad])
            raise DataPrepError(f"{path}: {message}") from None
        except pd.errors.EmptyDataError as error:
            raise DataPrepError(f"{path}: cannot read as a text table ({error})") from None
    if report.strict and first_bad is not None:
        report.malformed(path, first_bad, not_utf8[first_bad])
    problems: Dict[int, str] = {}
    messages = [str(warning.message) for warning in caught] + [printed.getvalue()]
    for line in "\n".join(messages).splitlines():
        # pandas: "Skipping line 7: expected 3 fields, saw 4"
        if line.startswith("Skipping line "):
            number, _, reason = line[len("Skipping line ") :].partition(":")
            problems[int(number)] = reason.strip() or "wrong number of fields"
        elif line.strip() and line in printed.getvalue():
            sys.stderr.write(line + "\n")
    lines, spans = _row_lines(layout, header, sorted(problems), frame, complete=usecols is None)
    if not_utf8:
        frame, lines = _drop_undecodable_rows(path, frame, lines, spans, not_utf8, problems, report)
    for number in sorted(problems):
        report.malformed(path, number, problems[number])
    return frame, lines


def _is_text(values: pd.Series) -> bool:
    """Whether a column holds strings (object in pandas < 3, a string dtype after)."""
    return values.dtype == object or pd.api.types.is_string_dtype(values.dtype)


# A line break as pandas' C tokenizer counts one.
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class _LineLayout:
    """Where the lines of a text table start and end, and which are blank in pandas' sense.

    Line terminators are \\n, \\r\\n and a lone \\r, as pandas' C tokenizer has them.
    A line is blank (pandas skips it) when it holds nothing but spaces and tabs
    other than the separator.
    """

    def __init__(self, data: bytes, separator: str):
        codes = np.frombuffer(data, dtype=np.uint8)
        ends = np.flatnonzero(codes == 10)
        if b"\r" in data:
            returns = np.flatnonzero(codes == 13)
            following = codes[np.minimum(returns + 1, len(codes) - 1)]
            lone = returns[(returns + 1 >= len(codes)) | (following != 10)]
            ends = np.union1d(ends, lone)
        self.starts = np.concatenate([[0], ends + 1]).astype(np.int64)
        self.ends = np.concatenate([ends, [len(data)]]).astype(np.int64)
        if self.starts[-1] >= len(data):  # the file ends with a terminator: no line after it
            self.starts, self.ends = self.starts[:-1], self.ends[:-1]
        blank_bytes = (b" \t".replace(separator.encode("utf-8"), b"") if len(separator) == 1 else b" \t") + b"\r"
        self.blank = np.zeros(len(self.starts), dtype=bool)
        first = codes[np.minimum(self.starts, max(len(codes) - 1, 0))] if len(codes) else np.zeros(0, np.uint8)
        empty = self.ends == self.starts
        maybe = empty | np.isin(first, np.frombuffer(blank_bytes, dtype=np.uint8))
        for index in np.flatnonzero(maybe):
            start, end = int(self.starts[index]), int(self.ends[index])
            self.blank[index] = not data[start:end].strip(blank_bytes)

    def __len__(self) -> int:
        return len(self.starts)

    def line_of(self, offset: int) -> int:
        """1-based line number of a byte offset."""
        return int(np.searchsorted(self.starts, offset, side="right"))

    def first_nonblank(self) -> int:
        """1-based number of the first non-blank line (pandas' header line), 0 if none."""
        found = np.flatnonzero(~self.blank)
        return int(found[0]) + 1 if len(found) else 0


def _undecodable_lines(data: bytes, layout: _LineLayout) -> Dict[int, str]:
    """1-based line number -> why it is not UTF-8, for every such line."""
    if data.isascii():
        return {}
    try:
        data.decode("utf-8")
        return {}
    except UnicodeDecodeError:
        pass
    bad: Dict[int, str] = {}
    view = memoryview(data)
    position = 0
    while position < len(data):
        try:
            codecs.utf_8_decode(view[position:], "strict", True)
            break
        except UnicodeDecodeError as error:
            offset = position + error.start
        line = layout.line_of(offset)
        column = offset - int(layout.starts[line - 1]) + 1
        bad[line] = f"not UTF-8 (byte 0x{data[offset]:02x} at column {column})"
        # Go on at the end of that line: one reason per line is enough.
        position = max(int(layout.ends[line - 1]), offset + 1)
    return bad


def _row_lines(
    layout: _LineLayout, header: int, skipped: List[int], frame: pd.DataFrame, complete: bool
) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """``(line, span)`` of each row pandas returned: its first 1-based file line and how many lines it covers.

    Rows come from the lines after the header that are neither blank nor
    skipped as malformed. A quoted field with line breaks makes a row span
    several lines; then the span of each row is counted from its values.
    ``(None, None)`` when the lines cannot be known for sure.
    """
    header_end = header + sum(_breaks_in(str(column)) for column in frame.columns)
    usable = ~layout.blank
    usable[:header_end] = False
    if skipped:
        usable[np.asarray(skipped, dtype=np.int64) - 1] = False
    candidates = np.flatnonzero(usable) + 1
    if len(candidates) == len(frame):
        return candidates.astype(np.int64), np.ones(len(frame), dtype=np.int64)
    if not complete:
        return None, None
    spans = np.ones(len(frame), dtype=np.int64)
    for column in frame.columns:
        values = frame[column]
        if _is_text(values):
            spans += values.str.count(_LINE_BREAK.pattern).fillna(0).to_numpy(dtype=np.int64)
    blocked = (~usable).tolist()
    lines = np.empty(len(frame), dtype=np.int64)
    cursor = header_end + 1
    for row, span in enumerate(spans.tolist()):
        while cursor <= len(blocked) and blocked[cursor - 1]:
            cursor += 1
        lines[row] = cursor
        cursor += span
    if cursor - 1 > len(layout):
        return None, None
    return lines, spans


def _breaks_in(text: str) -> int:
    return len(_LINE_BREAK.findall(text))


def _drop_undecodable_rows(
    path: str,
    frame: pd.DataFrame,
    lines: Optional[np.ndarray],
    spans: Optional[np.ndarray],
    not_utf8: Dict[int, str],
    problems: Dict[int, str],
    report: BuildReport,
):
    """Removes the rows read from lines that are not UTF-8; ``problems`` gets those lines' reasons."""
    if lines is None or spans is None:
        # Without a line map, the replacement character pandas put in is the only trace.
        mask = np.zeros(len(frame), dtype=bool)
        for column in frame.columns:
            values = frame[column]
            if _is_text(values):
                mask |= values.str.contains("\ufffd", regex=False).fillna(False).to_numpy(dtype=bool)
        for row in np.flatnonzero(mask):
            report.malformed(path + " row", int(row) + 1, "not UTF-8")
        return frame.loc[~mask].reset_index(drop=True), None
    problems.update(not_utf8)
    bad = np.array(sorted(not_utf8), dtype=np.int64)
    hit = np.searchsorted(bad, lines + spans, side="left") > np.searchsorted(bad, lines, side="left")
    if not hit.any():
        return frame, lines
    keep = ~hit
    return frame.loc[keep].reset_index(drop=True), lines[keep]
