r"""Step 2: stream the Amazon ``.json.gz`` files into two columnar tables.

  python data_prep/convert.py --input reviews_Electronics_5.json.gz --meta meta_Electronics.json.gz \
      --output_dir /tmp/electronics_converted [--table_format npz|parquet] [--strict]

Writes ``reviews.<fmt>`` (user_id, item_id, time) and ``items.<fmt>``
(item_id, category; missing category = no value) and ``convert.json`` (drop
counts, sources). npz needs only numpy; Parquet needs pyarrow. Only what DIN
needs is kept. ``remap.py`` continues from here, or ``build.py --format
interactions --input DIR/reviews.npz --meta DIR/items.npz`` builds directly.
"""

import json
import os
import sys
from typing import List, Tuple

import pandas as pd
from absl import flags

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.amazon import read_amazon_files  # noqa: E402
from data_prep.cli import require_flags, run_app, run_safely  # noqa: E402
from data_prep.report import BuildReport, DataPrepError, reading  # noqa: E402
from data_prep.sources import SourceHasher  # noqa: E402
from data_prep.tables import TABLE_FORMATS, read_table, table_path, write_table  # noqa: E402

CONVERT_REPORT = "convert.json"


def convert_amazon(
    reviews_path: str, meta_path: str, output_dir: str, report: BuildReport, table_format: str = "npz", workers: int = 2
) -> List[str]:
    """Parses both Amazon files and writes the reviews and items tables; returns the written paths."""
    for path in (reviews_path, meta_path):
        if not path or not os.path.isfile(path):
            raise DataPrepError(f"{path}: no such file")
    os.makedirs(output_dir, exist_ok=True)
    hasher = SourceHasher()
    try:
        hasher.prefetch([reviews_path, meta_path])
        with report.timed("read reviews + metadata"):
            reviews, metadata = read_amazon_files(reviews_path, meta_path, report, workers)
        sources = hasher.entries([reviews_path, meta_path])
    finally:
        hasher.close()
    with report.timed("write tables"):
        written = [table_path(output_dir, "reviews", table_format), table_path(output_dir, "items", table_format)]
        write_table(written[0], {"user_id": reviews.user, "item_id": reviews.item, "time": reviews.time})
        write_table(written[1], {"item_id": metadata.item, "category": metadata.category})
    with open(os.path.join(output_dir, CONVERT_REPORT), "w", encoding="utf-8") as handle:
        json.dump({"dropped": report.as_meta(), "sources": sources}, handle, indent=2)
        handle.write("\n")
    return written


def read_converted(directory: str, report: BuildReport) -> Tuple[pd.DataFrame, pd.DataFrame, List[dict]]:
    """Reads convert.py's tables (npz or parquet) and adds its drop counts to ``report``.

    Returns:
      ``(reviews, items, sources)``.
    """
    tables = []
    for stem in ("reviews", "items"):
        found = [
            table_path(directory, stem, fmt)
            for fmt in TABLE_FORMATS
            if os.path.isfile(table_path(directory, stem, fmt))
        ]
        if not found:
            raise DataPrepError(f"{directory}: no {stem}.npz or {stem}.parquet (run convert.py first)")
        tables.append(read_table(found[0], report)[0])
    earlier = {}
    report_path = os.path.join(directory, CONVERT_REPORT)
    if os.path.isfile(report_path):
        with reading(report_path), open(report_path, encoding="utf-8") as handle:
            earlier = json.load(handle)
        if not isinstance(earlier, dict):
            raise DataPrepError(f"{report_path}: expected a JSON object (written by convert.py)")
    for key, value in earlier.get("dropped", {}).items():
        if isinstance(value, int):
            report.count(key, value)
    report.malformed_examples.extend(earlier.get("dropped", {}).get("malformed_examples", []))
    return tables[0], tables[1], earlier.get("sources", [])


def main(argv):
    """Entry point (flags defined below, only when run as a script)."""
    del argv
    flags_ = flags.FLAGS

    def work():
        require_flags(input=flags_.input, meta=flags_.meta, output_dir=flags_.output_dir)
        report = BuildReport(strict=flags_.strict)
        written = convert_amazon(
            flags_.input, flags_.meta, flags_.output_dir, report, flags_.table_format, flags_.workers
        )
        print("converted -> " + ", ".join(written))
        print("\n".join(report.summary_lines()))

    run_safely("convert.py", work)


if __name__ == "__main__":
    flags.DEFINE_string("input", None, "Review file (.json or .json.gz, 2014 or 2018).")
    flags.DEFINE_string("meta", None, "Metadata file (.json or .json.gz, 2014 literal or 2018 JSON lines).")
    flags.DEFINE_string("output_dir", None, "Directory for the tables.")
    flags.DEFINE_enum("table_format", "npz", list(TABLE_FORMATS), "npz (numpy only) or parquet (needs pyarrow).")
    flags.DEFINE_bool("strict", False, "Fail at the first malformed line.")
    flags.DEFINE_integer("workers", 2, "Processes reading the two files.")
    run_app(main)
