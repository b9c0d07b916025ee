"""Line readers for text inputs: a line that is not UTF-8 is a malformed line, not a crash."""

import os
from typing import Callable, Iterable, Iterator, Optional, TextIO, Tuple, TypeVar

from data_prep.progress import progress
from data_prep.report import BuildReport, DataPrepError, undecodable

T = TypeVar("T")

# Progress is updated once per this many lines: per-line bar updates would cost
# more than the parsing of short lines.
_LINES_PER_UPDATE = 1 << 14


def open_text(path: str, newline: Optional[str] = None) -> TextIO:
    """Opens a UTF-8 text file so that a bad byte decodes to a lone surrogate instead of raising.

    The reader then finds such lines with ``report.undecodable`` and reports
    them with their line number; a strict decode would abort the whole file
    at an unknown line.
    """
    try:
        return open(path, encoding="utf-8", errors="surrogateescape", newline=newline)
    except OSError as error:
        raise DataPrepError(f"cannot open {path}: {error.strerror or error}") from None


def counting(items: Iterable[T], bar, total: Optional[int] = None, size: Callable[[T], int] = len) -> Iterator[T]:
    """Passes ``items`` through, adding their sizes to ``bar`` (every ``_LINES_PER_UPDATE`` items).

    Lines are sized by their length (about the bytes read). Characters are
    not bytes (multi-byte UTF-8, \\r\\n read as \\n): once the items run
    out, the bar is topped up to ``total``, the file's size. Entries of a list
    count one each (``size=lambda entry: 1``).
    """
    pending = count = seen = 0
    for item in items:
        pending += size(item)
        count += 1
        if count == _LINES_PER_UPDATE:
            bar.update(pending)
            seen += pending
            pending = count = 0
        yield item
    seen += pending
    bar.update(pending + (max(total - seen, 0) if total is not None else 0))


def text_lines(
    path: str, report: BuildReport, desc: str, newline: Optional[str] = None, position: int = 0
) -> Iterator[Tuple[int, str]]:
    """Yields ``(1-based line number, line)`` of a UTF-8 text file, with a progress bar over its bytes.

    A line that is not valid UTF-8 is reported to ``report`` as malformed
    (``--strict`` makes it fatal, naming file and line) and not yielded.
    ``newline`` is passed to ``open`` (None: universal newlines).
    """
    with open_text(path, newline) as handle:
        size = os.fstat(handle.fileno()).st_size
        with progress(total=size, desc=desc, unit="B", unit_scale=True, position=position) as bar:
            for number, line in enumerate(counting(handle, bar, size), 1):
                problem = undecodable(line)
                if problem is not None:
                    report.malformed(path, number, problem)
                    continue
                yield number, line
