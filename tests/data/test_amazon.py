"""Amazon review + metadata files: parsing, category rules, malformed lines, the literal fast path."""

import ast
import gzip
import json
import os

import numpy as np
import pytest
from dataprep_testlib import build, fixture

from data_prep.amazon import category_of, parse_meta_line, parse_meta_literal_fast, read_metadata, read_reviews
from data_prep.report import BuildReport, DataPrepError
from data_prep.tables import parquet_available

REVIEWS = fixture("amazon", "reviews_Tiny_5.json.gz")
META = fixture("amazon", "meta_Tiny.json")


def test_reviews_and_malformed_lines_are_counted():
    report = BuildReport()
    reviews = read_reviews(REVIEWS, report)
    assert len(reviews.user) == 10
    assert reviews.user[:3] == ["U1", "U1", "U2"] and reviews.time.dtype == np.int64
    assert report.dropped["malformed_lines"] == 2
    assert report.malformed_examples[0].startswith(REVIEWS + ":4: ")
    assert report.malformed_examples[1].startswith(REVIEWS + ":12: missing key 'asin'")


def test_metadata_categories():
    report = BuildReport()
    meta = read_metadata(META, report)
    assert dict(zip(meta.item, meta.category)) == {
        "A1": "Cables",
        "A2": "Headphones",
        "A3": "Audio",
        "A4": None,
        "A9": "Dolls",
    }
    assert report.dropped["malformed_lines"] == 1
    assert report.malformed_examples[0].startswith(META + ":4: not a Python dict literal")


def test_strict_mode_fails_at_first_malformed_line():
    with pytest.raises(DataPrepError, match=r"reviews_Tiny_5.json.gz:4: "):
        read_reviews(REVIEWS, BuildReport(strict=True))
    with pytest.raises(DataPrepError, match=r"meta_Tiny.json:4: "):
        read_metadata(META, BuildReport(strict=True))


@pytest.mark.parametrize("workers", [1, 2])
def test_build_from_amazon_files(tmp_path, workers):
    dataset, meta = build(tmp_path, format="amazon", input=REVIEWS, meta=META, workers=workers)
    assert (meta["users"], meta["items"], meta["categories"]) == (2, 5, 4)
    assert dataset.id_map("user") == ["U1", "U2"]
    assert dataset.id_map("item") == ["A1", "A2", "A3", "A4", "A5"]
    # Sorted real categories, then <unknown> for A4 (empty categories) and A5 (no metadata line).
    assert dataset.id_map("category") == ["Audio", "Cables", "Headphones", "<unknown>"]
    assert dataset.item_category.tolist() == [1, 2, 0, 3, 3]
    dropped = meta["dropped"]
    assert dropped["malformed_lines"] == 3
    assert dropped["duplicate_reviews"] == 1
    assert (dropped["short_users"], dropped["short_user_reviews"]) == (1, 2)
    assert (dropped["unknown_category_items"], dropped["unknown_category_reviews"]) == (2, 2)
    # U1: A1 A2 A5 A3, U2: A1 A3 A4 (time order).
    assert np.asarray(dataset.sequences).tolist() == [0, 1, 4, 2, 0, 2, 3]
    assert meta["splits"] == {"train": 2, "validation": 4, "test": 4}
    assert [source["path"] for source in meta["sources"]] == [os.path.abspath(REVIEWS), os.path.abspath(META)]
    assert all(len(source["sha256"]) == 64 for source in meta["sources"])


def test_build_strict_names_file_and_line(tmp_path):
    with pytest.raises(DataPrepError, match=r"reviews_Tiny_5.json.gz:4"):
        build(tmp_path, format="amazon", input=REVIEWS, meta=META, strict=True)
    assert os.listdir(str(tmp_path)) == []


def test_2018_metadata_json():
    assert parse_meta_line(json.dumps({"asin": "X", "category": ["Electronics", "Cables"], "main_cat": "All"})) == (
        "X",
        "Cables",
    )
    assert parse_meta_line(json.dumps({"asin": "X", "category": [], "main_cat": "Audio"})) == ("X", "Audio")
    assert parse_meta_line(json.dumps({"asin": "X", "title": "t"})) == ("X", None)


def test_2018_files_build(tmp_path):
    reviews = tmp_path / "Tiny_5.json.gz"
    with gzip.open(str(reviews), "wt") as handle:
        for user, item, when in (
            ("u", "a", 3),
            ("u", "b", 1),
            ("u", "c", 2),
            ("v", "a", 1),
            ("v", "c", 1),
            ("v", "b", 1),
            ("w", "d", 1),
            ("w", "e", 2),
            ("w", "f", 3),
        ):
            handle.write(
                json.dumps(
                    {
                        "overall": 5.0,
                        "verified": True,
                        "reviewTime": "x",
                        "reviewerID": user,
                        "asin": item,
                        "unixReviewTime": when,
                        "reviewText": "ok",
                    }
                )
                + "\n"
            )
    meta = tmp_path / "meta_Tiny.json"
    meta.write_text(
        "\n".join(
            json.dumps(line)
            for line in (
                {"asin": "a", "category": ["Electronics", "Audio"], "main_cat": "Electronics"},
                {"asin": "b", "category": [], "main_cat": "Cameras"},
                {"asin": "c", "title": "no category"},
            )
        )
        + "\n"
    )
    dataset, built = build(tmp_path, format="amazon", input=str(reviews), meta=str(meta))
    assert dataset.id_map("category") == ["Audio", "Cameras", "<unknown>"]
    assert dataset.item_category.tolist() == [0, 1, 2, 2, 2, 2]
    # u: b(1) c(2) a(3); v: a, c, b all at time 1 -> file order.
    assert np.asarray(dataset.sequences).tolist()[:6] == [1, 2, 0, 0, 2, 1]


def test_user_who_reviewed_every_item_is_a_clear_error(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user_id,item_id,time\nu,a,1\nu,b,2\nu,c,3\n")
    with pytest.raises(DataPrepError, match="interacted with all 3 items"):
        build(tmp_path, format="interactions", input=str(log), category_col="")


# ----------------------------------------------------------------------------
# The literal fast path must agree with ast.literal_eval wherever it answers
# ----------------------------------------------------------------------------

TRICKY_LINES = [
    "{'asin': 'B1', 'categories': [['Electronics', 'Audio', 'Headphones']]}",
    "{'asin': 'B1', 'title': \"Men's\", 'categories': [['A'], ['B', 'C']]}",
    "{'asin': 'B1', 'categories': []}",
    "{'asin': 'B1', 'categories': [[]]}",
    "{'asin': 'B1', 'categories': [['A'], []]}",
    "{'asin': 'B1'}",
    "{'asin': 'B1', 'title': 'categories'}",
    "{'asin': 'B1', 'related': {'categories': [['X']]}}",
    "{'asin': 'B1', 'related': {'asin': 'B2'}, 'categories': [['A', 'B']]}",
    "{'asin': 'B1', 'asin': 'B2', 'categories': [['A']]}",
    "{'asin': 'B1', 'categories': [['A']], 'categories': [['B']]}",
    "{'asin': 'B' 'X', 'categories': [['A']]}",
    "{'asin': 'B1', 'categories': [['A' 'B']]}",
    "{'asin': 'B1', 'categories': [['A\\'s', 'B\\x41\\u00e9\\n']]}",
    "{'asin': 'B1', 'categories': [['caf\u00e9', 'na\\u00efve']]}",
    "{'asin': 'B1', 'categories': [['\\N{LATIN SMALL LETTER E WITH ACUTE}']]}",
    "{'asin': 'B1', 'categories': [['bad \\x4']]}",
    "{'asin': 'B1', 'categ\\x6fries': [['A']]}",
    "{'\\x61sin': 'B1', 'categories': [['A']]}",
    "{'asin': 'B1', 'price': 1e5, 'rank': -3, 'x': None, 'y': True, 'z': False, 'categories': [['A', 'B']]}",
    "{'asin': 'B1', 'categories': (('A',),)}",
    "{'asin': 'B1', 'categories': [['A',]]}",
    "{'asin': 'B1', 'categories': [['A']], 1: 2}",
    "{'asin': 'B1', 'categories': [['A']], 'x': __import__('os')}",
    "{'asin': 'B1', 'categories': [['A']], 'x': {1, 2}}",
    "{'asin': 'B1', 'categories': [['A']]",
    "{'asin': 'B1', 'categories': [['A']]}}",
    "{'asin': 'B1', 'categories': [['A']] 'x': 1}",
    "['asin', 'B1']",
    "{'asin': 1, 'categories': [['A']]}",
    "{'asin': '', 'categories': [['A']]}",
    "{'asin': 'B1', 'categories': [['A', 7]]}",
    "{'asin': 'B1', 'categories': [['A', ['B']]]}",
    "{'asin': 'B1', 'categories': [['A']], 'main_cat': 'M'}",
    "{'asin': 'B1', 'category': ['X'], 'main_cat': 'M'}",
    '{"asin": "B1", "categories": [["A", "B"]]}',
    "{'asin': 'B1', 'categories': [[\"it's\"]], 'd': 'say \"hi\"'}",
    "{u'asin': u'B1', u'categories': [[u'A']]}",
    "{'asin': 'B1', 'categories': [['A']], 'n': 01}",
    "{'asin': 'B1', 'categories': [['A']], 'n': .5}",
    "{'asin': 'B1', 'categories': [['A']], 'n': 1_000}",
    "{'asin': 'B1',\t'categories' :[ [ 'A' ,'B' ] ] }",
    "{'asin': 'B1', 'categories': [['A']], 'd': 'x\\\\'}",
    "{'asin': 'B1', 'categories': [['A']], 'd': 'x\\\\\\'y'}",
    "",
    "{}",
    "{'asin': 'B1', 'categories': [['A']], 'd': 'a\rb'}",
]


def _slow(line):
    try:
        entry = ast.literal_eval(line.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return "malformed"
    if not isinstance(entry, dict) or not isinstance(entry.get("asin"), str) or not entry.get("asin"):
        return "malformed"
    return entry["asin"], category_of(entry)


@pytest.mark.parametrize("line", TRICKY_LINES)
def test_fast_path_agrees_with_literal_eval(line):
    fast = parse_meta_literal_fast(line)
    if fast is not None:
        assert fast == _slow(line)
    try:
        parsed = parse_meta_line(line)
    except ValueError:
        parsed = "malformed"
    if not line.strip().startswith('{"'):
        assert parsed == _slow(line)


def test_fast_path_answers_the_common_shapes():
    common = [line for line in TRICKY_LINES[:3]] + [TRICKY_LINES[19], TRICKY_LINES[36]]
    assert all(parse_meta_literal_fast(line) is not None for line in common)


def test_fast_path_on_generated_lines():
    rng = np.random.default_rng(0)
    pieces = [
        "a",
        "b c",
        "it's",
        'say "x"',
        "both ' and \"",
        "back\\slash",
        "tab\t",
        "new\nline",
        "caf\u00e9",
        "\u2013",
        "categories",
        "asin",
        "",
        "x\x01y",
    ]
    agreed = 0
    for _ in range(400):
        entry = {"asin": "B%05d" % rng.integers(100000)}
        for key in ("title", "description", "brand"):
            if rng.random() < 0.5:
                entry[key] = "".join(str(piece) for piece in rng.choice(pieces, size=3))
        if rng.random() < 0.5:
            entry["related"] = {"also_bought": ["B%d" % i for i in range(int(rng.integers(0, 4)))]}
        if rng.random() < 0.3:
            entry["price"] = float(rng.random() * 10)
        if rng.random() < 0.9:
            entry["categories"] = [
                [str(piece) for piece in rng.choice(pieces, size=int(rng.integers(0, 4)))]
                for _ in range(int(rng.integers(0, 3)))
            ]
        line = repr(entry)
        fast = parse_meta_literal_fast(line)
        if fast is not None:
            agreed += 1
            assert fast == _slow(line), line
        assert parse_meta_line(line) == _slow(line)
    assert agreed > 300


@pytest.mark.skipif(
    not parquet_available(), reason="pyarrow is not installed (IPU lane): its JSON fast path is optional"
)
@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b'{"reviewerID": "u1", "asin": "a9", "unixReviewTime": 7, "reviewText": "\xff broken utf-8"}',
        b'{"reviewerID": "u1", "asin": "a9", "unixReviewTime": 7.0}',
        b'{"reviewerID": "u1", "reviewerID": "u2", "asin": "a9", "unixReviewTime": 7}',
        b'{"reviewerID": "u1", "asin": "a9", "unixReviewTime": 7}{"reviewerID": "u2", "asin": "a9", "unixReviewTime": 7}',
        b'{"reviewerID": "", "asin": "a9", "unixReviewTime": 7}',
        b'{"reviewerID": "u1", "asin": "a9", "unixReviewTime": 7, "overall": NaN}',
        b'{"reviewerID": "u1", "asin": "a9"}',
        b'{"reviewerID": "u1", "asin": "a9", "unixReviewTime": 7}\r',
    ],
)
def test_arrow_and_line_by_line_review_parsing_agree(tmp_path, bad):
    good = [
        json.dumps(
            {"reviewerID": "u%d" % (i % 7), "asin": "a%d" % (i % 5), "unixReviewTime": i, "reviewText": 'caf\u00e9 "x"'}
        ).encode()
        for i in range(50)
    ]
    path = str(tmp_path / "reviews.json.gz")
    with gzip.open(path, "wb") as handle:
        handle.write(b"\n".join(good[:20] + [bad] + good[20:]) + b"\n")
    results = []
    for use_arrow in (True, False):
        report = BuildReport()
        reviews = read_reviews(path, report, use_arrow=use_arrow)
        results.append(
            (reviews.user, reviews.item, reviews.time.tolist(), dict(report.dropped), list(report.malformed_examples))
        )
    assert results[0] == results[1]


def test_truncated_gzip_is_a_clear_error(tmp_path):
    data = open(REVIEWS, "rb").read()
    cut = tmp_path / "reviews_cut.json.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataPrepError, match="reviews_cut.json.gz: unreadable or truncated gzip file"):
        read_reviews(str(cut), BuildReport())
