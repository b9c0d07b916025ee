"""``--format sequences``: one line per user, ``user item item ...`` in time order, + item attributes JSON.

The ``--meta`` JSON maps item -> attributes. A list gives the category by
``--category_rule``: ``last`` (default) takes the last attribute, ``first``
the first. In the S3Rec-style Amazon files (e.g. Beauty_item2attributes.json)
an item's list is its brand followed by its category path without the top
level, so ``last`` is the deepest category, as DIN takes it. A string value
is the category itself; a dict is read with the Amazon metadata rules.
"""

import json
import os
from typing import Dict, List, Optional

import numpy as np

from data_prep.amazon import category_of
from data_prep.importers.common import BuildOptions, Imported, finish_protocol, require_file
from data_prep.remap import clean_and_remap
from data_prep.report import BuildReport, DataPrepError
from data_prep.textio import text_lines

CATEGORY_RULES = ("last", "first")


def category_from_attributes(value, rule: str) -> Optional[str]:
    """Applies ``--category_rule`` to one item's attributes; None if it has none."""
    if isinstance(value, list):
        if not value:
            return None
        chosen = value[-1] if rule == "last" else value[0]
        return None if chosen is None or isinstance(chosen, (list, dict)) else str(chosen)
    if isinstance(value, dict):
        return category_of(value)
    if value is None or value == "":
        return None
    return str(value)


def import_sequences(options: BuildOptions, report: BuildReport) -> Imported:
    """Per-user sequence file (+ item attributes JSON) -> DIN protocol dataset."""
    if options.category_rule not in CATEGORY_RULES:
        raise DataPrepError(f"unknown --category_rule {options.category_rule!r}; choose from {list(CATEGORY_RULES)}")
    path = require_file(options.input, "--input (the sequence file)")
    users: List[str] = []
    items: List[str] = []
    line_of_user: Dict[str, int] = {}
    repeated, first_repeat = 0, ""
    with report.timed("read"):
        for number, line in text_lines(path, report, "read " + os.path.basename(path)):
            fields = line.split()
            if not fields:
                continue
            if len(fields) == 1:
                report.malformed(path, number, "a user without items")
                continue
            if fields[0] in line_of_user:
                repeated += 1
                first_repeat = (
                    first_repeat or f"line {number}, user {fields[0]!r}, first on line {line_of_user[fields[0]]}"
                )
            line_of_user.setdefault(fields[0], number)
            users.extend([fields[0]] * (len(fields) - 1))
            items.extend(fields[1:])
        if repeated:
            report.note(
                f"{path}: {repeated} line(s) repeat the user of an earlier line; each user's lines were joined in "
                f"file order (the first: {first_repeat})"
            )
        meta_items = meta_categories = None
        sources = [path]
        if options.meta:
            meta_path = require_file(options.meta, "--meta (the item attributes JSON)")
            with open(meta_path, "rb") as handle:
                data = handle.read()
            try:
                attributes = json.loads(data.decode("utf-8"))
            except UnicodeDecodeError as error:
                # One JSON document: a bad byte anywhere spoils all of it, so this is fatal.
                line = data.count(b"\n", 0, error.start) + 1
                column = error.start - data.rfind(b"\n", 0, error.start)
                raise DataPrepError(
                    f"{meta_path}:{line}: not UTF-8 (byte 0x{data[error.start]:02x} at column "
                    f"{column}); --meta must be a UTF-8 JSON file"
                ) from None
            except ValueError as error:
                raise DataPrepError(f"{meta_path}: not JSON ({error})") from None
            except RecursionError:
                raise DataPrepError(f"{meta_path}: nested too deeply to be item attributes") from None
            if not isinstance(attributes, dict):
                raise DataPrepError(f"{meta_path}: expected a JSON object mapping item -> attributes")
            meta_items = list(attributes)
            meta_categories = [category_from_attributes(value, options.category_rule) for value in attributes.values()]
            sources.append(meta_path)
        else:
            report.note("no --meta: every item is <unknown>")
    # File order is time order: within a line, and across lines of the same user.
    times = np.arange(len(items), dtype=np.int64)
    with report.timed("clean + remap"):
        log = clean_and_remap(users, items, times, meta_items, meta_categories, report)
    return finish_protocol(log, options, report, sources)
