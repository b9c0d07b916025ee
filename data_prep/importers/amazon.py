"""``--format amazon``: raw Amazon review + metadata files (2014 or 2018, .json or .json.gz)."""

import multiprocessing
from typing import Tuple

from data_prep.amazon import Metadata, read_metadata, read_reviews
from data_prep.importers.common import BuildOptions, Imported, finish_protocol, require_file
from data_prep.remap import clean_and_remap
from data_prep.report import BuildReport, DataPrepError


def _read_metadata_job(path: str, strict: bool) -> Tuple[Metadata, BuildReport]:
    report = BuildReport(strict=strict)
    return read_metadata(path, report, position=1), report


def _metadata_worker(connection, path: str, strict: bool) -> None:
    """Runs in the second process: sends ``("ok", (metadata, report))`` or ``("error", exception)``."""
    try:
        try:
            result = ("ok", _read_metadata_job(path, strict))
        except KeyboardInterrupt:
            result = ("error", DataPrepError("interrupted"))
        except Exception as error:  # re-raised in the parent, which owns the error reporting
            result = ("error", error)
        try:
            connection.send(result)
        except Exception as error:  # e.g. an exception that does not pickle
            connection.send(("error", DataPrepError(f"{path}: {type(error).__name__}: {error}")))
    finally:
        connection.close()


def read_amazon_files(reviews_path: str, meta_path: str, report: BuildReport, workers: int = 2):
    """Reads both files; with ``workers > 1`` the metadata is parsed in a second process meanwhile.

    Returns:
      ``(Reviews, Metadata)``.
    """
    if workers <= 1:
        return read_reviews(reviews_path, report), read_metadata(meta_path, report)
    # spawn, not fork: the parent may be running a hashing thread, and a forked
    # child of a threaded process can inherit a held lock. A bare Process and a
    # Pipe, not a Pool: a Pool's queues hold semaphores, and terminating it after
    # a --strict error made the resource tracker print a "leaked semaphore"
    # warning under the one-line error.
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_metadata_worker, args=(sender, meta_path, report.strict),
                              name="read-metadata", daemon=True)
    process.start()
    sender.close()
    try:
        reviews = read_reviews(reviews_path, report)
        try:
            status, payload = receiver.recv()
        except EOFError:
            process.join()
            raise DataPrepError(f"{meta_path}: the process reading it stopped without a result (exit code "
                                f"{process.exitcode}); try --workers 1") from None
        process.join()
    finally:
        if process.is_alive():
            # Do not wait for the other file after a failure (e.g. --strict).
            process.terminate()
            process.join()
        receiver.close()
    if status == "error":
        raise payload
    metadata, meta_report = payload
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
