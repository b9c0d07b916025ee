"""One build: importer -> dataset directory, with provenance, drop counts and timings in meta.json."""

import json
import os
import sys
import time
from typing import List, Optional

import numpy as np

import din_jax
from data_prep.importers.common import BuildOptions, check_options
from data_prep.importers.registry import get_importer
from data_prep.progress import stage
from data_prep.report import BuildReport
from data_prep.sources import SourceHasher
from din_jax.data.dataset import META_FILE
from din_jax.data.writer import check_output_path, write_dataset


def build_dataset(
    options: BuildOptions,
    output: str,
    *,
    overwrite: bool = False,
    strict: bool = False,
    name: Optional[str] = None,
    report: Optional[BuildReport] = None,
) -> dict:
    """Builds a din_jax dataset directory from any supported source.

    Args:
      options: the source format, paths and protocol parameters.
      output: the dataset directory to create (written atomically).
      overwrite: replace an existing dataset directory there.
      strict: make the first malformed input line fatal.
      name: the dataset name in meta.json (default: the output folder's name).
      report: collects drop counts and timings (a new one by default).

    Returns:
      The meta.json written.
    """
    check_options(options)
    check_output_path(output, overwrite)
    report = report or BuildReport(strict=strict)
    report.strict = strict
    hasher = SourceHasher()
    try:
        # Hashing runs in a thread while the importer parses (hashlib releases the GIL).
        hasher.prefetch([options.input, options.meta])
        imported = get_importer(options.format)(options, report)
        with report.timed("sha256 of sources"):
            sources = hasher.entries(imported.sources)
    finally:
        hasher.close()
    build = options._asdict()
    build.update(
        {
            "strict": strict,
            "output": os.path.abspath(output),
            "din_jax_version": din_jax.__version__,
            "python": sys.version.split()[0],
            "numpy": np.__version__,
        }
    )
    meta = {
        "name": name or os.path.basename(os.path.abspath(output)),
        "source_format": options.format,
        "max_seq_len": options.max_seq_len,
        "sources": sources,
        "build": build,
        "dropped": report.as_meta(),
        "timings_s": dict(report.timings),
    }
    meta.update(imported.meta)
    start = time.perf_counter()

    def record_write_time(full_meta: dict) -> None:
        # meta.json is the last file written, so the figure leaves out only meta.json
        # itself and the rename (milliseconds); the summary prints the same figure.
        report.timings["write"] = round(time.perf_counter() - start, 3)
        full_meta["timings_s"] = dict(report.timings)

    with stage("write " + os.path.basename(os.path.abspath(output)), "arrays"):
        write_dataset(
            output,
            sequences=imported.sequences,
            offsets=imported.offsets,
            item_category=imported.item_category,
            splits=imported.splits,
            meta=meta,
            id_maps=imported.id_maps,
            overwrite=overwrite,
            before_meta=record_write_time,
        )
    with open(os.path.join(output, META_FILE), encoding="utf-8") as handle:
        return json.load(handle)


def summarize(meta: dict, report: BuildReport) -> List[str]:
    """Returns the lines printed at the end of a build."""
    splits = meta["splits"]
    lines = [
        "built {} ({} format) -> {}".format(meta["name"], meta["source_format"], meta["build"]["output"]),
        "  users {:,}  items {:,}  categories {:,}  sequences {:,}  events {:,}".format(
            meta["users"], meta["items"], meta["categories"], meta["sequences"], meta["events"]
        ),
        "  rows: " + "  ".join(f"{name} {rows:,}" for name, rows in splits.items()),
    ]
    lines.extend(report.summary_lines())
    lines.append("timings (s): " + ", ".join(f"{step} {seconds:.1f}" for step, seconds in report.timings.items()))
    return lines
