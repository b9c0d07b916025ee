"""``--format amazon``: raw Amazon review + metadata files (2014 or 2018, .json or .json.gz)."""

import multiprocessing
from typing import Tuple

from data_prep.amazon import Metadata, read_metadata, read_reviews
from data_prep.importers.common import BuildOptions, Imported, finish_protocol, require_file
from data_prep.remap import clean_and_remap
from data_prep.report import BuildReport


def _read_metadata_job(path: str, strict: bool) -> Tuple[Metadata, BuildReport]:
    report = BuildReport(strict=strict)
    return read_metadata(path, report, position=1), report


def read_amazon_files(reviews_path: str, meta_path: str, report: BuildReport, workers: int = 2):
    """Reads both files; with ``workers > 1`` the metadata is parsed in a second process meanwhile.

    Returns:
      ``(Reviews, Metadata)``.
    """
    if workers <= 1:
        return read_reviews(reviews_path, report), read_metadata(meta_path, report)
    # spawn, not fork: the parent may be running a hashing thread, and a forked
    # child of a threaded process can inherit a held lock.
    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        pending = pool.apply_async(_read_metadata_job, (meta_path, report.strict))
        reviews = read_reviews(reviews_path, report)
        metadata, meta_report = pending.get()
        pool.close()
    except BaseException:
        # Do not wait for the other file after a failure (e.g. --strict).
        pool.terminate()
        raise
    finally:
        pool.join()
    report.merge(meta_report)
    return reviews, metadata


def import_amazon(options: BuildOptions, report: BuildReport) -> Imported:
    """Reviews (``--input``) + metadata (``--meta``) -> DIN protocol dataset."""
    reviews_path = require_file(options.input, "--input (the review file)")
    meta_path = require_file(options.meta, "--meta (the metadata file)")
    with report.timed("read reviews + metadata"):
        reviews, metadata = read_amazon_files(reviews_path, meta_path, report, options.workers)
    with report.timed("clean + remap"):
        log = clean_and_remap(reviews.user, reviews.item, reviews.time, metadata.item, metadata.category, report)
    del reviews, metadata
    return finish_protocol(log, options, report, [reviews_path, meta_path])
