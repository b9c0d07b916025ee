"""Importers: the authors' DIN data, DIEN files, interaction tables, sequence files, the step chain."""

import os
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
from dataprep_testlib import REPO_ROOT, build, fixture

from data_prep.convert import convert_amazon, read_converted
from data_prep.importers.interactions import parse_times
from data_prep.remap import remap_converted, write_remapped
from data_prep.report import BuildReport, DataPrepError
from data_prep.tables import parquet_available, read_table, write_table

# ----------------------------------------------------------------------------
# The DIN authors' dataset.pkl (written here as Python 2 would: protocol 2)
# ----------------------------------------------------------------------------

TRAIN_SET = [
    (0, [1, 2], 3, 1),
    (0, [1, 2], 5, 0),
    (0, [1], 2, 1),
    (0, [1], 4, 0),
    (1, [3], 0, 1),
    (1, [3], 6, 0),
    # User 2's two histories contradict each other: two stored sequences.
    (2, [4, 5], 6, 1),
    (2, [4, 5], 0, 0),
    (2, [5, 4], 1, 1),
    (2, [5, 4], 2, 0),
    (3, [], 1, 1),  # no history: cannot be a sample
]
TEST_SET = [(0, [1, 2, 3], (7, 6)), (1, [3, 0], (2, 5))]
CATE_LIST = np.array([0, 1, 1, 2, 2, 0, 1, 2], dtype=np.int32)


def _write_pkl(path, train_set=TRAIN_SET, test_set=TEST_SET, cate_list=CATE_LIST, counts=(4, 8, 3)):
    with open(path, "wb") as handle:
        for obj in (train_set, test_set, cate_list, counts):
            pickle.dump(obj, handle, protocol=2)
    return path


def test_din_pickle_histories_are_stored_once(tmp_path):
    path = _write_pkl(str(tmp_path / "dataset.pkl"))
    dataset, meta = build(tmp_path, format="din", input=path, din_validation="none")
    assert (meta["users"], meta["items"], meta["categories"]) == (4, 8, 3)
    assert dataset.item_category.tolist() == CATE_LIST.tolist()
    sequences = np.asarray(dataset.sequences)
    stored = [sequences[a:b].tolist() for a, b in zip(dataset.offsets[:-1], dataset.offsets[1:])]
    # user 0: [1, 2, 3] + test positive 7; user 1: [3, 0, 2]; user 2: two sequences.
    assert stored == [[1, 2, 3, 7], [3, 0, 2], [4, 5, 6], [5, 4, 1]]
    train = np.asarray(dataset.samples("train")).tolist()
    assert train == [
        [0, 0, 2, 3, 1],
        [0, 0, 2, 5, 0],
        [0, 0, 1, 2, 1],
        [0, 0, 1, 4, 0],
        [1, 1, 1, 0, 1],
        [1, 1, 1, 6, 0],
        [2, 2, 2, 6, 1],
        [2, 2, 2, 0, 0],
        [2, 3, 2, 1, 1],
        [2, 3, 2, 2, 0],
    ]
    assert np.asarray(dataset.samples("test")).tolist() == [
        [0, 0, 3, 7, 1],
        [0, 0, 3, 6, 0],
        [1, 1, 2, 2, 1],
        [1, 1, 2, 5, 0],
    ]
    assert meta["splits"]["validation"] == 0
    assert meta["dropped"]["empty_history_rows"] == 1
    assert meta["negatives"]["resampleable"] is False
    with pytest.raises(Exception, match="cannot be resampled"):
        dataset.resample_negatives(np.random.default_rng(0))
    batch = dataset.gather("test", np.array([0, 2]), 10)
    assert batch["hist_item"][:, :3].tolist() == [[1, 2, 3], [3, 0, 0]]
    assert batch["hist_len"].tolist() == [3, 2]


def test_din_validation_last_position_pair(tmp_path):
    path = _write_pkl(str(tmp_path / "dataset.pkl"))
    dataset, meta = build(tmp_path, format="din", input=path, din_validation="last")
    assert np.asarray(dataset.samples("validation")).tolist() == [
        [0, 0, 2, 3, 1],
        [0, 0, 2, 5, 0],
        [1, 1, 1, 0, 1],
        [1, 1, 1, 6, 0],
        [2, 2, 2, 6, 1],
        [2, 2, 2, 0, 0],
        [2, 3, 2, 1, 1],
        [2, 3, 2, 2, 0],
    ]
    assert np.asarray(dataset.samples("train")).tolist() == [[0, 0, 1, 2, 1], [0, 0, 1, 4, 0]]


def test_din_validation_users_is_seeded(tmp_path):
    path = _write_pkl(str(tmp_path / "dataset.pkl"))
    first, meta = build(tmp_path / "a", format="din", input=path, validation_users=0.34, seed=3)
    again, _ = build(tmp_path / "b", format="din", input=path, validation_users=0.34, seed=3)
    validation = np.asarray(first.samples("validation"))
    assert len(np.unique(validation[:, 0])) == 1  # round(0.34 * 3 training users)
    assert np.array_equal(validation, again.samples("validation"))
    assert set(validation[:, 0].tolist()).isdisjoint(np.asarray(first.samples("train"))[:, 0].tolist())
    assert meta["splits"]["train"] + meta["splits"]["validation"] == 10


def test_din_pickle_with_bad_entries_and_ranges(tmp_path):
    bad = TRAIN_SET[:4] + [("x", [1], 2, 1), (0, "oops", 2)]
    dataset, meta = build(
        tmp_path, format="din", input=_write_pkl(str(tmp_path / "d.pkl"), train_set=bad), din_validation="none"
    )
    assert meta["dropped"]["malformed_lines"] == 2
    assert "train_set[4]" in meta["dropped"]["malformed_examples"][0]
    with pytest.raises(DataPrepError, match="item ids outside"):
        build(tmp_path, name="x", format="din", input=_write_pkl(str(tmp_path / "e.pkl"), train_set=[(0, [1], 99, 1)]))


def _write_din_csv(folder, train_lines, test_lines, cate_lines):
    os.makedirs(folder)
    for name, lines in (("train_set.csv", train_lines), ("test_set.csv", test_lines), ("cate_list.csv", cate_lines)):
        with open(os.path.join(folder, name), "w") as handle:
            handle.write("\n".join(lines) + "\n")
    return folder


def test_din_csv_folder(tmp_path):
    folder = _write_din_csv(
        str(tmp_path / "csv"),
        ['0,"[1, 2]",3,1', '0,"[1, 2]",5,0', "1,[3],0,1", "1,[3],6,0", "1,[3],6", "2,[9],1,1"],
        ['0,"[1, 2, 3]","(7, 6)"', '4,[1],"(2, 5)"'],
        ["0", "1", "1", "2", "2", "0", "1", "2"],
    )
    dataset, meta = build(tmp_path, format="din", input=folder, din_validation="none")
    assert (meta["users"], meta["items"], meta["categories"]) == (5, 8, 3)
    assert meta["dropped"]["malformed_lines"] == 2  # a missing label, an item id past cate_list
    assert meta["dropped"]["malformed_examples"][0].endswith("train_set.csv:5: expected 4 fields, found 3")
    assert meta["splits"] == {"train": 4, "validation": 0, "test": 4}
    overridden, meta = build(tmp_path, name="big", format="din", input=folder, users=192403, din_validation="none")
    assert meta["users"] == 192403 and len(overridden.id_map("user")) == 192403


def test_din_csv_with_one_huge_user_id_is_refused_at_once(tmp_path):
    folder = _write_din_csv(
        str(tmp_path / "csv"),
        ['0,"[1, 2]",3,1', '999999999999,"[1, 2]",5,0'],
        ['0,"[1, 2, 3]","(7, 6)"'],
        ["0", "1", "1", "2", "2", "0", "1", "2"],
    )
    with pytest.raises(DataPrepError, match="largest user id is 999,999,999,999 but only 2 distinct user ids"):
        build(tmp_path, format="din", input=folder, din_validation="none")


# ----------------------------------------------------------------------------
# DIEN / Graphcore files
# ----------------------------------------------------------------------------


def test_dien_folder(tmp_path):
    dataset, meta = build(tmp_path, format="dien", input=fixture("dien"), din_validation="none")
    assert dataset.id_map("user") == ["uA", "uB", "uC"]
    assert dataset.id_map("item") == ["default_mid", "m1", "m2", "m3", "m4", "m5"]
    assert dataset.id_map("category") == ["default_cat", "c1", "c2"]
    assert meta["dropped"]["malformed_lines"] == 1
    assert meta["dropped"]["unknown_keys_mapped_to_default"] == 2
    # m1, m2 in c1; m3, m4, m5 in c2; default_mid seen (for m9) with c1.
    assert dataset.item_category.tolist() == [1, 1, 1, 2, 2, 2]
    sequences = np.asarray(dataset.sequences)
    stored = [sequences[a:b].tolist() for a, b in zip(dataset.offsets[:-1], dataset.offsets[1:])]
    assert stored == [[1, 2, 3], [4, 2], [1, 0, 4]]
    assert np.asarray(dataset.samples("train")).tolist() == [
        [0, 0, 2, 3, 1],
        [0, 0, 2, 5, 0],
        [1, 1, 1, 2, 1],
        [1, 1, 1, 1, 0],
    ]
    assert np.asarray(dataset.samples("test")).tolist() == [[2, 2, 2, 4, 1], [2, 2, 2, 2, 0]]
    assert meta["negatives"]["resampleable"] is True
    assert len(meta["sources"]) == 5


def test_dien_missing_file_is_clear(tmp_path):
    folder = str(tmp_path / "dien")
    shutil.copytree(fixture("dien"), folder)
    os.remove(os.path.join(folder, "cat_voc.pkl"))
    with pytest.raises(DataPrepError, match="cat_voc.pkl: missing"):
        build(tmp_path, format="dien", input=folder)


# ----------------------------------------------------------------------------
# Interaction tables and sequence files
# ----------------------------------------------------------------------------


def test_interactions_with_item_table_and_bad_lines(tmp_path):
    dataset, meta = build(
        tmp_path,
        format="interactions",
        input=fixture("interactions", "log.tsv"),
        meta=fixture("interactions", "items.csv"),
        category_col="i_category",
    )
    assert dataset.id_map("user") == ["7", "8", "9"]
    assert dataset.id_map("item") == ["101", "102", "103", "105"]
    assert dataset.id_map("category") == ["5", "12", "<unknown>"]
    assert dataset.item_category.tolist() == [0, 0, 1, 2]
    examples = meta["dropped"]["malformed_examples"]
    assert meta["dropped"]["malformed_lines"] == 2
    assert examples[0].startswith(fixture("interactions", "log.tsv") + ":6: ")
    assert examples[1] == fixture("interactions", "log.tsv") + ":10: missing value in column time"
    assert meta["dropped"]["metadata_items_without_reviews"] == 2
    # user 7 in time order: 102 (t1), 103 (t2), 101 (t3).
    assert np.asarray(dataset.sequences)[:3].tolist() == [1, 2, 0]


def test_interactions_strict_and_missing_columns(tmp_path):
    with pytest.raises(DataPrepError, match=r"log.tsv: .*line 6"):
        build(
            tmp_path,
            format="interactions",
            input=fixture("interactions", "log.tsv"),
            meta=fixture("interactions", "items.csv"),
            category_col="i_category",
            strict=True,
        )
    with pytest.raises(DataPrepError, match=r"no category column 'category' and no --meta"):
        build(tmp_path, format="interactions", input=fixture("interactions", "log.tsv"))
    with pytest.raises(DataPrepError, match=r"no column 'who'"):
        build(tmp_path, format="interactions", input=fixture("interactions", "log.tsv"), user_col="who")


def test_interactions_dates_and_file_order(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(
        "u;i;when\na;x;2014-01-03\na;y;2014-01-01\na;z;2014-01-02\nb;x;2014-01-01\nb;y;2014-01-01\nb;w;2014-01-01\n"
    )
    dataset, _ = build(
        tmp_path, format="interactions", input=str(log), user_col="u", item_col="i", time_col="when", category_col=""
    )
    assert dataset.id_map("category") == ["<unknown>"]
    assert np.asarray(dataset.sequences).tolist() == [2, 3, 1, 1, 2, 0]
    ordered, _ = build(
        tmp_path,
        name="ordered",
        format="interactions",
        input=str(log),
        user_col="u",
        item_col="i",
        time_col="",
        category_col="",
    )
    assert np.asarray(ordered.sequences).tolist() == [1, 2, 3, 1, 2, 0]


@pytest.mark.parametrize(
    "rule, categories, item_category",
    [
        ("last", ["3", "5", "6", "7", "<unknown>"], [1, 2, 0, 4, 3, 4]),
        ("first", ["1", "2", "3", "4", "<unknown>"], [0, 1, 2, 4, 3, 4]),
    ],
)
def test_sequences_with_attributes(tmp_path, rule, categories, item_category):
    dataset, meta = build(
        tmp_path,
        format="sequences",
        input=fixture("sequences", "seqs.txt"),
        meta=fixture("sequences", "item2attributes.json"),
        category_rule=rule,
    )
    assert dataset.id_map("user") == ["1", "2", "3"]
    assert dataset.id_map("item") == ["10", "11", "12", "13", "14", "15"]
    assert dataset.id_map("category") == categories
    assert dataset.item_category.tolist() == item_category
    assert meta["dropped"]["malformed_lines"] == 1  # "5": a user without items
    assert meta["dropped"]["malformed_examples"][0].endswith("seqs.txt:6: a user without items")
    assert meta["dropped"]["short_users"] == 1  # "4 10": one item
    assert np.asarray(dataset.sequences).tolist() == [0, 1, 2, 3, 1, 2, 4, 0, 3, 4, 5]


# ----------------------------------------------------------------------------
# Tables and the step-by-step chain
# ----------------------------------------------------------------------------


def test_npz_table_roundtrip(tmp_path):
    path = str(tmp_path / "t.npz")
    write_table(path, {"user_id": ["a", "b", "a"], "time": np.array([3, 1, 2]), "category": ["x", None, "y"]})
    frame, lines = read_table(path, BuildReport())
    assert lines is None
    assert frame["user_id"].tolist() == ["a", "b", "a"]
    assert frame["time"].tolist() == [3, 1, 2]
    assert frame["category"].tolist() == ["x", None, "y"]


@pytest.mark.skipif(not parquet_available(), reason="pyarrow is not installed (IPU lane): Parquet is optional")
def test_parquet_table_and_build(tmp_path):
    path = str(tmp_path / "log.parquet")
    write_table(
        path,
        {
            "user_id": ["a"] * 3 + ["b"] * 3,
            "item_id": ["x", "y", "z", "x", "z", "w"],
            "category": ["c1", "c2", "c1", "c1", "c1", "c3"],
            "time": np.arange(6),
        },
    )
    dataset, meta = build(tmp_path, format="interactions", input=path)
    assert dataset.id_map("category") == ["c1", "c2", "c3"]
    assert meta["splits"]["test"] == 4


def test_convert_remap_build_chain_matches_one_command(tmp_path):
    report = BuildReport()
    written = convert_amazon(
        fixture("amazon", "reviews_Tiny_5.json.gz"),
        fixture("amazon", "meta_Tiny.json"),
        str(tmp_path / "converted"),
        report,
        workers=1,
    )
    assert [os.path.basename(path) for path in written] == ["reviews.npz", "items.npz"]
    chain_report = BuildReport()
    reviews, items, sources = read_converted(str(tmp_path / "converted"), chain_report)
    assert chain_report.dropped["malformed_lines"] == 3 and len(sources) == 2
    log = remap_converted(reviews, items, chain_report)
    write_remapped(str(tmp_path / "remapped"), log, chain_report, sources)
    chained, chained_meta = build(tmp_path, name="chained", format="remapped", input=str(tmp_path / "remapped"))
    direct, direct_meta = build(
        tmp_path,
        name="direct",
        format="amazon",
        input=fixture("amazon", "reviews_Tiny_5.json.gz"),
        meta=fixture("amazon", "meta_Tiny.json"),
    )
    for split in ("train", "validation", "test"):
        assert np.array_equal(chained.samples(split), direct.samples(split))
    assert chained.id_map("category") == direct.id_map("category")
    for key in ("malformed_lines", "duplicate_reviews", "short_users", "unknown_category_reviews"):
        assert chained_meta["dropped"][key] == direct_meta["dropped"][key], key
    # The converted tables also build directly as an interaction table.
    table, _ = build(
        tmp_path,
        name="table",
        format="interactions",
        input=str(tmp_path / "converted" / "reviews.npz"),
        meta=str(tmp_path / "converted" / "items.npz"),
    )
    assert np.array_equal(table.samples("test"), direct.samples("test"))


def test_key_order_numbers_and_strings():
    from data_prep.remap import normalize_keys

    assert normalize_keys(["10", "9", "-3"]).tolist() == [10, 9, -3]
    # Leading zeros (ISBN-like asins) and spaces stay strings, so raw keys and string order survive.
    assert normalize_keys(["0132793040", "9"]).tolist() == ["0132793040", "9"]
    assert normalize_keys([" 7", "8"]).tolist() == [" 7", "8"]
    assert normalize_keys(["B00X", "0001"]).tolist() == ["B00X", "0001"]
    assert normalize_keys([3, 1]).tolist() == [3, 1]


@pytest.mark.skipif(not parquet_available(), reason="pyarrow is not installed (IPU lane): Parquet is optional")
def test_parquet_list_cells(tmp_path):
    rows = {
        "user_id": ["a"] * 3 + ["b"] * 3,
        "item_id": ["x", "y", "z", "x", "z", "w"],
        "time": pd.to_datetime(["2020-01-0%d" % day for day in range(1, 7)], utc=True),
    }
    # Category paths (and lists of paths): the last element is the category; an empty list is missing.
    paths = [["Food", "c1"], ["Food", "c2"], ["c1"], ["Food", "c1"], ["c1"], []]
    nested = [[["Top", "x"], list(path)] for path in paths[:-1]] + [[]]
    for name, cells in (("paths", paths), ("nested", nested)):
        pd.DataFrame(dict(rows, category=cells)).to_parquet(str(tmp_path / (name + ".parquet")))
        dataset, meta = build(tmp_path, name=name, format="interactions", input=str(tmp_path / (name + ".parquet")))
        assert dataset.id_map("item") == ["w", "x", "y", "z"]
        categories = [dataset.id_map("category")[c] for c in dataset.item_category]
        assert categories == ["<unknown>", "c1", "c2", "c1"], name
        assert meta["dropped"]["unknown_category_items"] == 1
        assert any("6 cells of 'category' hold lists" in note for note in meta["dropped"]["notes"])
    # A list where one value is needed, and a struct as a category, are errors naming column and row.
    pd.DataFrame(dict(rows, category=["c"] * 6, item_id=[["x"]] * 6)).to_parquet(str(tmp_path / "items.parquet"))
    with pytest.raises(DataPrepError, match=r"items\.parquet row:1: column 'item_id' holds a list \(\['x'\]; 6 such"):
        build(tmp_path, name="items", format="interactions", input=str(tmp_path / "items.parquet"))
    structs = [{"name": "c"}] * 6
    pd.DataFrame(dict(rows, category=structs)).to_parquet(str(tmp_path / "struct.parquet"))
    with pytest.raises(DataPrepError, match=r"struct\.parquet row:1: column 'category' holds a dict"):
        build(tmp_path, name="struct", format="interactions", input=str(tmp_path / "struct.parquet"))


def test_timestamp_column_gives_seconds():
    stamps = pd.Series(pd.to_datetime(["1970-01-01 00:01:00", None, "2014-07-01 00:00:00"]))
    # A naive timestamp is UTC; Paris is UTC+1 in January and UTC+2 in July.
    for values, offsets in (
        (stamps, (0, 0)),
        (stamps.dt.tz_localize("UTC"), (0, 0)),
        (stamps.dt.tz_localize("Europe/Paris"), (-3600, -7200)),
    ):
        times, kind = parse_times(values)
        assert kind == "date"
        assert np.isnan(times[1])
        assert (times[0], times[2]) == (60 + offsets[0], 1404172800 + offsets[1])


def test_sequences_count_the_lines_that_repeat_a_user(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("u1 a b c\nu2 a d e\nu1 f g\nu3 b c d\nu2 h\n")
    dataset, meta = build(tmp_path, format="sequences", input=str(path))
    notes = [note for note in meta["dropped"]["notes"] if "repeat the user" in note]
    assert notes == [
        "%s: 2 line(s) repeat the user of an earlier line; each user's lines were joined in file order "
        "(the first: line 3, user 'u1', first on line 1)" % path
    ]
    assert dataset.id_map("user") == ["u1", "u2", "u3"]
    lengths = np.diff(dataset.offsets)
    assert sorted(lengths.tolist()) == [3, 4, 5]


def test_a_build_without_training_samples_is_refused_and_writes_nothing(tmp_path):
    source = tmp_path / "din"
    source.mkdir()
    for name in ("cate_list.csv", "test_set_mini.csv"):
        shutil.copy(os.path.join(REPO_ROOT, "data", "amazon_electronics_din_sample", name), str(source / name))
    (source / "train_set_mini.csv").write_text("")
    with pytest.raises(
        DataPrepError, match=r"din: no training samples \(the training file is empty, or every row was dropped"
    ):
        build(tmp_path, format="din", input=str(source))
    assert not os.path.exists(str(tmp_path / "ds"))


def test_a_dien_build_with_an_empty_training_file_is_refused(tmp_path):
    source = tmp_path / "dien"
    shutil.copytree(fixture("dien"), str(source))
    (source / "local_train_splitByUser").write_text("")
    with pytest.raises(DataPrepError, match="no training samples"):
        build(tmp_path, format="dien", input=str(source))
    assert not os.path.exists(str(tmp_path / "ds"))


def test_a_headerless_user_behaviour_log_with_event_types_and_repeats(tmp_path):
    # Taobao's UserBehavior.csv layout: no header; keep the purchase-like events, drop repeat consumption.
    options = dict(
        format="interactions",
        input=fixture("interactions", "user_behavior.csv"),
        columns="user_id,item_id,category,event,time",
        keep_rows="event=buy,cart",
    )
    dataset, meta = build(tmp_path, name="kept", **options)
    assert meta["dropped"]["rows_not_kept"] == 7  # the pv and fav rows
    assert "repeat_interactions" not in meta["dropped"]
    # User 1 keeps buy, cart, buy, buy (4 rows); user 2 six rows of which one repeats (2, 4365585): both policies.
    assert dataset.id_map("user") == ["1", "2"]
    first, first_meta = build(tmp_path, name="first", repeats="first", **options)
    assert first_meta["dropped"]["repeat_interactions"] == 2  # (1, 4365585) cart then buy; (2, 4365585) twice
    assert len(first.sequences) == len(dataset.sequences) - 2
    assert set(first.id_map("category")) == {"2520377", "2520771", "4181361"}
    with pytest.raises(DataPrepError, match=r"--keep_rows event=view: no row of .* has one of these values"):
        build(tmp_path, name="none", **dict(options, keep_rows="event=view"))
    with pytest.raises(DataPrepError, match="--keep_rows must be COLUMN=VALUE"):
        build(tmp_path, name="bad", **dict(options, keep_rows="buy"))
    with pytest.raises(DataPrepError, match="--columns must be distinct non-empty names"):
        build(tmp_path, name="bad2", **dict(options, columns="user_id,,item_id"))


def test_a_space_separated_user_item_file_without_header(tmp_path):
    dataset, meta = build(
        tmp_path,
        format="interactions",
        input=fixture("interactions", "user_item.txt"),
        columns="user_id,item_id",
        time_col="",
        category_col="",
    )
    assert dataset.id_map("user") == ["u1", "u2", "u3"] and dataset.id_map("item") == ["i1", "i2", "i3", "i4", "i5"]
    # File order is time order: u1's sequence is i1 i2 i3 i4.
    start, end = dataset.offsets[0], dataset.offsets[1]
    assert [dataset.id_map("item")[i] for i in dataset.sequences[start:end]] == ["i1", "i2", "i3", "i4"]


@pytest.mark.parametrize(
    "rule, expected",
    [("first", ["Action", "Animation", "Adventure", "Comedy"]), ("last", ["Thriller", "Comedy", "Fantasy", "Romance"])],
)
def test_an_item_table_whose_genre_cells_hold_several_values(tmp_path, rule, expected):
    dataset, meta = build(
        tmp_path,
        format="interactions",
        input=fixture("interactions", "ratings.csv"),
        meta=fixture("interactions", "movies.csv"),
        category_col="genres",
        category_sep=" ",
        category_rule=rule,
    )
    categories = dataset.id_map("category")
    items = dataset.id_map("item")
    chosen = [categories[dataset.item_category[items.index(m)]] for m in ("m1", "m2", "m3", "m4")]
    assert chosen == expected
    assert any(
        "4 cells of 'genres' hold several values; the %s is the category" % rule in n for n in meta["dropped"]["notes"]
    )
