"""Errors of the data pipeline and the record of what a build dropped."""

import collections
import contextlib
import logging
import time
from typing import Dict, Iterator, List, Optional, Union


class DataPrepError(Exception):
    """An error the entry points print as one line (``build.py: error: ...``) and exit with code 2."""


class InputReadError(DataPrepError):
    """A decode or value error that escaped a reader, re-raised naming the file (see ``reading``)."""


MAX_EXAMPLES = 20
# meta.json and the summary list these counters first and in this order; the
# rest follow in the order the build first counted them.
_COUNTER_ORDER = (
    "malformed_lines",
    "duplicate_reviews",
    "short_users",
    "short_user_reviews",
    "unknown_category_reviews",
    "unknown_category_items",
)
_MIN_NAME_WIDTH = 28


def describe_decode_error(error: UnicodeDecodeError) -> str:
    """A stable, short reason for a line that is not UTF-8 (the offending byte and its 1-based column)."""
    data = error.object
    byte = data[error.start] if isinstance(data, (bytes, bytearray)) and error.start < len(data) else None
    if byte is None:
        return "not UTF-8"
    return f"not UTF-8 (byte 0x{byte:02x} at column {error.start + 1})"


def undecodable(text: str) -> Optional[str]:
    """For text decoded with ``errors="surrogateescape"``: why it is not UTF-8, or None if it is."""
    # isascii() is O(1) on CPython: the common case costs nothing.
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        if 0xDC80 <= code <= 0xDCFF:
            return f"not UTF-8 (byte 0x{code - 0xDC00:02x} at character {error.start + 1})"
        return "not UTF-8"
    return None


@contextlib.contextmanager
def reading(path: str) -> Iterator[None]:
    """Turns a decode or value error raised while parsing ``path`` into a one-line error naming it.

    Only for code that interprets input content: a ValueError or TypeError
    there means the file is not what it should be. The original exception
    stays attached as ``__cause__`` (``DATA_PREP_DEBUG=1`` prints it).
    """
    try:
        yield
    except DataPrepError:
        raise
    except UnicodeDecodeError as error:
        raise InputReadError(f"{path}: {describe_decode_error(error)}") from error
    except (UnicodeError, ValueError, TypeError) as error:
        text = str(error).splitlines()[0][:200] if str(error) else ""
        raise InputReadError(f"{path}: unexpected content ({type(error).__name__}: {text})") from error


class BuildReport:
    """Counts what a build drops and where the malformed input is.

    In strict mode the first malformed line raises ``DataPrepError`` naming
    the file and line; otherwise it is counted and the first ``MAX_EXAMPLES``
    locations are kept for meta.json and the summary. A counter exists only
    once a step that checks it has run, so a 0 always means "checked, none".
    """

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.dropped: Dict[str, int] = collections.OrderedDict([("malformed_lines", 0)])
        self.malformed_examples: List[str] = []
        self.notes: List[str] = []
        self.timings: Dict[str, float] = collections.OrderedDict()

    @contextlib.contextmanager
    def timed(self, step: str):
        """Adds the wall time of the ``with`` body to ``timings[step]`` (seconds)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = round(self.timings.get(step, 0.0) + time.perf_counter() - start, 3)

    def malformed(self, file: str, line: Union[int, str], reason: str) -> None:
        """Records (or, in strict mode, raises on) a malformed input line; ``line`` is 1-based (or an entry name)."""
        where = f"{file}:{line}: {reason}"
        if self.strict:
            raise DataPrepError("malformed line: " + where)
        self.dropped["malformed_lines"] += 1
        if len(self.malformed_examples) < MAX_EXAMPLES:
            self.malformed_examples.append(where)
            logging.warning("skipping malformed line %s", where)

    def count(self, key: str, amount: int) -> None:
        """Adds ``amount`` to the counter ``key`` (created at 0)."""
        self.dropped[key] = self.dropped.get(key, 0) + int(amount)

    def note(self, text: str) -> None:
        """Adds a free-text remark to the summary (e.g. a flag that changed the protocol)."""
        self.notes.append(text)

    def merge(self, other: "BuildReport") -> None:
        """Adds another report's counts, examples and notes (e.g. from a worker process)."""
        for key, value in other.dropped.items():
            self.count(key, value)
        room = MAX_EXAMPLES - len(self.malformed_examples)
        self.malformed_examples.extend(other.malformed_examples[: max(room, 0)])
        self.notes.extend(other.notes)

    def counters(self) -> Dict[str, int]:
        """The counters in display order (see ``_COUNTER_ORDER``)."""
        ordered = collections.OrderedDict((key, self.dropped[key]) for key in _COUNTER_ORDER if key in self.dropped)
        ordered.update((key, value) for key, value in self.dropped.items() if key not in ordered)
        return ordered

    def as_meta(self) -> dict:
        """Returns the ``dropped`` block of meta.json."""
        block = dict(self.counters())
        block["malformed_examples"] = list(self.malformed_examples)
        if self.notes:
            block["notes"] = list(self.notes)
        return block

    def summary_lines(self) -> List[str]:
        """Returns the human-readable summary printed at the end of a build."""
        counters = self.counters()
        width = max([_MIN_NAME_WIDTH] + [len(key) + 2 for key in counters])
        lines = ["dropped / flagged:"]
        lines.extend(f"  {key:<{width}s}{value:>12,d}" for key, value in counters.items())
        if self.malformed_examples:
            lines.append("  first malformed lines:")
            lines.extend("    " + where for where in self.malformed_examples)
        lines.extend("  note: " + text for text in self.notes)
        return lines
