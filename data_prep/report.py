"""Errors of the data pipeline and the record of what a build dropped."""

import collections
import contextlib
import logging
import time
from typing import Dict, List, Union


class DataPrepError(Exception):
    """An error the entry points print as one line (``build.py: error: ...``) and exit with code 2."""


MAX_EXAMPLES = 20


class BuildReport:
    """Counts what a build drops and where the malformed input is.

    In strict mode the first malformed line raises ``DataPrepError`` naming
    the file and line; otherwise it is counted and the first ``MAX_EXAMPLES``
    locations are kept for meta.json and the summary.
    """

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.dropped: Dict[str, int] = collections.OrderedDict(
            [("malformed_lines", 0), ("duplicate_reviews", 0), ("short_users", 0), ("short_user_reviews", 0),
             ("unknown_category_reviews", 0), ("unknown_category_items", 0)])
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
        self.malformed_examples.extend(other.malformed_examples[:max(room, 0)])
        self.notes.extend(other.notes)

    def as_meta(self) -> dict:
        """Returns the ``dropped`` block of meta.json."""
        block = dict(self.dropped)
        block["malformed_examples"] = list(self.malformed_examples)
        if self.notes:
            block["notes"] = list(self.notes)
        return block

    def summary_lines(self) -> List[str]:
        """Returns the human-readable summary printed at the end of a build."""
        lines = ["dropped / flagged:"]
        lines.extend(f"  {key:<28s}{value:>12,d}" for key, value in self.dropped.items())
        if self.malformed_examples:
            lines.append("  first malformed lines:")
            lines.extend("    " + where for where in self.malformed_examples)
        lines.extend("  note: " + text for text in self.notes)
        return lines
