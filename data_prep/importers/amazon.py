"""``--format amazon``: raw Amazon review + metadata files (2014 or 2018, .json or .json.gz)."""

from data_prep.amazon import read_amazon_files
from data_prep.importers.common import BuildOptions, Imported, finish_protocol, require_file
from data_prep.remap import clean_and_remap
from data_prep.report import BuildReport


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
