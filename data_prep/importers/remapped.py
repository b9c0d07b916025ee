"""``--format remapped``: the output directory of ``remap.py`` (the step-by-step pipeline)."""

import os

from data_prep.importers.common import BuildOptions, Imported, finish_protocol
from data_prep.remap import REMAPPED_TABLE, read_remapped
from data_prep.report import BuildReport, DataPrepError


def import_remapped(options: BuildOptions, report: BuildReport) -> Imported:
    """remap.py directory -> DIN protocol dataset (ids as remap.py assigned them)."""
    folder = options.input
    if not folder or not os.path.isfile(os.path.join(folder, REMAPPED_TABLE)):
        raise DataPrepError(f"{folder}: not a directory written by remap.py (no {REMAPPED_TABLE})")
    with report.timed("read"):
        log, earlier_sources = read_remapped(folder, report)
    imported = finish_protocol(log, options, report, [os.path.join(folder, REMAPPED_TABLE)])
    meta = dict(imported.meta)
    meta["earlier_sources"] = earlier_sources
    return imported._replace(meta=meta)
