"""Bad input of every kind: a clear error or a counted malformed line naming file and line, never a traceback."""

import io
import os
import pickle
import re
import shutil
import stat
import struct
import subprocess
import sys
import urllib.request
import warnings

import numpy as np
import pandas as pd
import pytest
from dataprep_testlib import REPO_ROOT, build, fixture

from data_prep import download, progress
from data_prep.amazon import parse_meta_line, read_amazon_files, read_metadata, read_reviews
from data_prep.cli import run_safely
from data_prep.convert import convert_amazon, read_converted
from data_prep.importers import interactions
from data_prep.remap import remap_converted, sorted_codes, write_remapped
from data_prep.report import BuildReport, DataPrepError
from data_prep.tables import read_table
from din_jax.data.dataset import DatasetError, load_dataset
from din_jax.data.writer import write_dataset


def _run(script, *args, env=None):
    return subprocess.run(
        [sys.executable, os.path.join("data_prep", script)] + list(args),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _one_line_error(result, program="build.py"):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(program + ": error: ")
    return lines[0]


# ----------------------------------------------------------------------------
# Bytes that are not UTF-8: a malformed line with file:line, fatal only with --strict
# ----------------------------------------------------------------------------


def _dien_with_bad_byte(tmp_path):
    folder = str(tmp_path / "dien")
    shutil.copytree(fixture("dien"), folder)
    path = os.path.join(folder, "local_train_splitByUser")
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    lines.insert(1, b"1\tuA\tm\xff3\tc2\tm1\x02m2\tc1\x02c1")
    with open(path, "wb") as handle:
        handle.write(b"\n".join(lines))
    return folder, path


def test_dien_line_not_utf8(tmp_path):
    folder, path = _dien_with_bad_byte(tmp_path)
    _, meta = build(tmp_path, format="dien", input=folder, din_validation="none")
    assert meta["dropped"]["malformed_lines"] == 2  # the fixture's own bad line, and this one
    assert path + ":2: not UTF-8 (byte 0xff at character 7)" in meta["dropped"]["malformed_examples"]
    with pytest.raises(DataPrepError, match=re.escape(path + ":2: not UTF-8")):
        build(tmp_path, name="strict", format="dien", input=folder, strict=True)


def test_amazon_lines_not_utf8(tmp_path):
    reviews = tmp_path / "reviews.json"
    reviews.write_bytes(
        b'{"reviewerID": "U1", "asin": "A1", "unixReviewTime": 1}\n'
        b'{"reviewerID": "U\xff", "asin": "A2", "unixReviewTime": 2}\n'
    )
    metadata = tmp_path / "meta.json"
    metadata.write_bytes(b"{'asin': 'A1', 'categories': [['x']]}\n{'asin': 'A2', 'title': 'caf\xe9'}\n")
    report = BuildReport()
    read_reviews(str(reviews), report)
    read_metadata(str(metadata), report)
    assert report.malformed_examples == [
        f"{reviews}:2: not UTF-8 (byte 0xff at column 18)",
        f"{metadata}:2: not UTF-8 (byte 0xe9 at column 29)",
    ]


def test_amazon_lines_nested_too_deeply_or_with_huge_times_are_counted(tmp_path):
    reviews = tmp_path / "reviews.json"
    reviews.write_text(
        '{"reviewerID": "U1", "asin": "A1", "unixReviewTime": 1}\n'
        '{"reviewerID": "U2", "asin": "A1", "unixReviewTime": 1000000000000000000000000000000}\n'
        '{"reviewerID": "U3", "asin": "A1", "unixReviewTime": ' + "[" * 50000 + "]" * 50000 + "}\n"
    )
    metadata = tmp_path / "meta.json"
    metadata.write_text(
        "{'asin': 'A1', 'categories': [['x']]}\n{'asin': 'A2', 'categories': " + "[" * 50000 + "]" * 50000 + "}\n"
    )
    report = BuildReport()
    assert read_reviews(str(reviews), report).user == ["U1"]
    read_metadata(str(metadata), report)
    assert report.malformed_examples[:2] == [
        f"{reviews}:2: unixReviewTime 1000000000000000000000000000000 is out of range (int64)",
        f"{reviews}:3: not a JSON object (nested too deeply)",
    ]
    # Python's parser says "too many nested parentheses" (3.9+) or overflows its stack (3.8).
    assert report.malformed_examples[2] in [
        f"{metadata}:2: not a Python dict literal or JSON object (%s)" % reason
        for reason in ("too many nested parentheses", "nested too deeply")
    ]


def test_integer_keys_beyond_int64_keep_their_numeric_order():
    codes, keys = sorted_codes(pd.Series([2**64 - 1, 7, 2**64 - 1, 3], dtype=object))
    assert codes.tolist() == [2, 1, 2, 0] and [str(key) for key in keys] == ["3", "7", str(2**64 - 1)]


def test_din_csv_line_not_utf8(tmp_path):
    folder = str(tmp_path / "csv")
    os.makedirs(folder)
    for name in ("train_set.csv", "test_set.csv", "cate_list.csv"):
        shutil.copy(
            os.path.join(
                REPO_ROOT,
                "data",
                "amazon_electronics_din_sample",
                name.replace("_set", "_set_mini") if "set" in name else name,
            ),
            os.path.join(folder, name),
        )
    path = os.path.join(folder, "train_set.csv")
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    lines[2] = lines[2] + b"\xe9"
    with open(path, "wb") as handle:
        handle.write(b"\n".join(lines))
    _, meta = build(tmp_path, format="din", input=folder)
    assert meta["dropped"]["malformed_examples"] == [
        path + ":3: not UTF-8 (byte 0xe9 at character {})".format(len(lines[2].split(b",")[-1]))
    ]
    with pytest.raises(DataPrepError, match=re.escape(path + ":3: not UTF-8")):
        build(tmp_path, name="strict", format="din", input=folder, strict=True)


def test_din_cate_list_names_the_line(tmp_path):
    folder = str(tmp_path / "csv")
    os.makedirs(folder)
    (tmp_path / "csv" / "train_set.csv").write_text('0,"[1, 2]",3,1\n')
    (tmp_path / "csv" / "test_set.csv").write_text('0,"[1, 2, 3]","(0, 2)"\n')
    (tmp_path / "csv" / "cate_list.csv").write_bytes(b"0\n1\n\xff\n")
    with pytest.raises(DataPrepError, match=r"cate_list.csv:3: expected one category id per line"):
        build(tmp_path, format="din", input=folder)


def test_sequences_line_not_utf8(tmp_path):
    path = tmp_path / "seqs.txt"
    path.write_bytes(open(fixture("sequences", "seqs.txt"), "rb").read() + b"9 10 1\xc3 12\n")
    _, meta = build(tmp_path, format="sequences", input=str(path), meta=fixture("sequences", "item2attributes.json"))
    assert meta["dropped"]["malformed_lines"] == 2
    assert meta["dropped"]["malformed_examples"][-1] == f"{path}:7: not UTF-8 (byte 0xc3 at character 7)"
    path.write_bytes(b"1 10 11 12\n2 1\xc3 11 12\n")
    with pytest.raises(DataPrepError, match=re.escape(f"{path}:2: not UTF-8 (byte 0xc3 at character 4)")):
        build(tmp_path, name="strict", format="sequences", input=str(path), strict=True)


def test_sequences_meta_not_utf8_names_the_line(tmp_path):
    meta = tmp_path / "attributes.json"
    meta.write_bytes(b'{\n"10": ["a"],\n"11": ["\xff"]\n}\n')
    with pytest.raises(DataPrepError, match=r"attributes.json:3: not UTF-8 \(byte 0xff at column 9\)"):
        build(tmp_path, format="sequences", input=fixture("sequences", "seqs.txt"), meta=str(meta))


def test_interactions_line_not_utf8(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"user_id,item_id,time\na,x,1\na,y,2\na,\xe9t\xe9,3\na,z,4\nb,x,1\nb,y,2\nb,w,3\n")
    dataset, meta = build(tmp_path, format="interactions", input=str(path), category_col="")
    assert meta["dropped"]["malformed_examples"] == [f"{path}:4: not UTF-8 (byte 0xe9 at column 3)"]
    assert dataset.id_map("item") == ["w", "x", "y", "z"]
    with pytest.raises(DataPrepError, match=re.escape(f"{path}:4: not UTF-8")):
        build(tmp_path, name="strict", format="interactions", input=str(path), category_col="", strict=True)


def test_interactions_strict_reports_the_earliest_problem(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"user_id,item_id,time\na,x,1\na,y,2,9\na,\xe9,3\n")
    with pytest.raises(DataPrepError, match=r"line 3"):
        build(tmp_path, format="interactions", input=str(path), category_col="", strict=True)
    path.write_bytes(b"user_id,item_id,time\na,x,1\na,\xe9,3\na,y,2,9\n")
    with pytest.raises(DataPrepError, match=re.escape(f"{path}:3: not UTF-8")):
        build(tmp_path, format="interactions", input=str(path), category_col="", strict=True)


def test_interactions_header_not_utf8(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"\nuser\xff,item_id,time\na,x,1\n")
    with pytest.raises(DataPrepError, match=re.escape(f"{path}:2: the header line is not UTF-8")):
        build(tmp_path, format="interactions", input=str(path), category_col="")


def test_dataset_pkl_of_the_wrong_shape(tmp_path):
    path = tmp_path / "dataset.pkl"
    with open(str(path), "wb") as handle:
        for obj in (7, [], np.zeros(3, dtype=np.int32), (1, 3, 1)):
            pickle.dump(obj, handle, protocol=2)
    with pytest.raises(DataPrepError, match=r"dataset.pkl: pickle 1 must be train_set, a list of samples; found int"):
        build(tmp_path, format="din", input=str(path))


def test_build_py_bad_bytes_and_bad_pickles_are_one_line(tmp_path):
    path = tmp_path / "dataset.pkl"
    with open(str(path), "wb") as handle:
        for obj in ({"not": "a list"}, [], [0], (1, 1, 1)):
            pickle.dump(obj, handle, protocol=2)
    line = _one_line_error(_run("build.py", "--format", "din", "--input", str(path), "--output", str(tmp_path / "x")))
    assert "dataset.pkl: pickle 1 must be train_set" in line
    seqs = tmp_path / "seqs.txt"
    seqs.write_bytes(b"1 10 11 12\n2 \xff\xfe 11 12\n")
    line = _one_line_error(
        _run("build.py", "--format", "sequences", "--input", str(seqs), "--output", str(tmp_path / "y"), "--strict")
    )
    assert f"{seqs}:2: not UTF-8" in line


def test_run_safely_catches_decode_errors_but_not_bugs(capsys):
    def undecodable():
        b"\xff".decode("utf-8")

    with pytest.raises(SystemExit) as stopped:
        run_safely("x.py", undecodable)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith("x.py: error: an input file is not UTF-8 text")

    def bug():
        raise TypeError("a bug in our code")

    with pytest.raises(TypeError, match="a bug in our code"):
        run_safely("x.py", bug)


# ----------------------------------------------------------------------------
# Interaction tables: line numbers, time parsing
# ----------------------------------------------------------------------------


def test_interactions_line_numbers_after_blank_lines(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("user_id,item_id,time\na,x,1\na,y,2\n\na,z,3\na,w,soon\nb,x,1\nb,y,2\nb,w,3\n")
    _, meta = build(tmp_path, format="interactions", input=str(path), category_col="")
    assert meta["dropped"]["malformed_examples"] == [
        f"{path}:6: time 'soon' is not a finite number (the column holds numbers)"
    ]


def test_table_line_numbers_with_quoted_line_breaks_and_skipped_lines(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'\n\nu,i,t\n\na,b,1\n   \n,,\nc,d,e,f\n"x\ny",z,3\nq,w,\xff\n\nlast,row,9')
    report = BuildReport()
    frame, lines = read_table(str(path), report)
    assert frame["u"].tolist()[2:] == ["x\ny", "last"]
    assert lines.tolist() == [5, 7, 9, 13]
    assert report.malformed_examples == [
        f"{path}:8: expected 3 fields, saw 4",
        f"{path}:11: not UTF-8 (byte 0xff at column 5)",
    ]


def test_table_line_numbers_with_crlf_and_lone_cr(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"u,i,t\r\na,b,1\r\n\r\nc,d,2\r\n")
    assert read_table(str(path), BuildReport())[1].tolist() == [2, 4]
    path.write_bytes(b"u,i,t\ra,b,1\r\rc,d,2\r")
    assert read_table(str(path), BuildReport())[1].tolist() == [2, 4]


def test_numeric_times_with_a_bad_value_stay_numeric(tmp_path, monkeypatch):
    def no_dates(*args, **kwargs):
        raise AssertionError("a numeric column must not be parsed as dates")

    monkeypatch.setattr(interactions.pd, "to_datetime", no_dates)
    values = pd.Series(["5", "7", "oops", None, "9"], dtype=object)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        times, kind = interactions.parse_times(values)
    assert kind == "number"
    assert times[[0, 1, 4]].tolist() == [5.0, 7.0, 9.0] and np.isnan(times[[2, 3]]).all()


@pytest.mark.parametrize(
    "values, expected",
    [
        (["2014-01-02", "2014-01-01T12:00:00Z", "junk"], [1388620800.0, 1388577600.0, None]),
        (["Jan 2, 2014", "July 1, 2014", "junk"], [1388620800.0, 1404172800.0, None]),
    ],
)
def test_date_times(values, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        times, kind = interactions.parse_times(pd.Series(values, dtype=object))
    assert kind == "date"
    assert [None if np.isnan(t) else t for t in times] == expected


def test_time_column_of_neither_numbers_nor_dates(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,time\na,x,red\na,y,green\na,z,blue\n")
    with pytest.raises(
        DataPrepError,
        match=r"--time_col 'time': most values in .* are neither numbers nor dates "
        r"\(e.g. 'red' at .*log.csv:2\)",
    ):
        build(tmp_path, format="interactions", input=str(path), category_col="")


def test_meta_with_a_table_that_has_categories_is_an_error(tmp_path):
    with pytest.raises(DataPrepError, match=r"has its own category column 'category', so --meta .* would be ignored"):
        build(
            tmp_path,
            format="interactions",
            input=fixture("interactions", "three_users.csv"),
            meta=fixture("interactions", "items.csv"),
        )


# ----------------------------------------------------------------------------
# Flags, messages, meta.json
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("max_seq_len", 0, "--max_seq_len must be >= 1"),
        ("max_seq_len", -5, "--max_seq_len must be >= 1"),
        ("seed", -1, "--seed must be >= 0, got -1"),
        ("validation_users", 1.0, "--validation_users must be in [0, 1)"),
        ("workers", 0, "--workers must be >= 1"),
    ],
)
def test_out_of_range_flags_name_the_flag(tmp_path, flag, value, message):
    with pytest.raises(DataPrepError, match=re.escape(message)):
        build(tmp_path, format="sequences", input=fixture("sequences", "seqs.txt"), **{flag: value})
    assert not os.listdir(str(tmp_path))


def test_max_seq_len_flag_is_one_line_and_recorded(tmp_path):
    line = _one_line_error(
        _run(
            "build.py",
            "--format",
            "sequences",
            "--input",
            fixture("sequences", "seqs.txt"),
            "--output",
            str(tmp_path / "x"),
            "--max_seq_len",
            "0",
        )
    )
    assert "--max_seq_len must be >= 1" in line
    _, meta = build(tmp_path, format="sequences", input=fixture("sequences", "seqs.txt"), max_seq_len=7)
    assert meta["max_seq_len"] == 7 and meta["build"]["max_seq_len"] == 7


def test_write_dataset_refuses_max_seq_len_below_one(tmp_path):
    with pytest.raises(DatasetError, match="max_seq_len must be an integer >= 1"):
        write_dataset(
            str(tmp_path / "x"),
            sequences=[1, 2],
            offsets=[0, 2],
            item_category=[0, 0, 0],
            splits={},
            meta={"max_seq_len": 0},
            id_maps={"user": ["u"], "item": ["a", "b", "c"], "category": ["c"]},
        )


def test_metadata_errors_hold_no_memory_addresses():
    with pytest.raises(ValueError) as raised:
        parse_meta_line("{'asin': 'A1', 'price': float('nan')}")
    assert " at 0x" not in str(raised.value)
    assert str(raised.value) == (
        "not a Python dict literal or JSON object (it holds something other than plain values, e.g. a call or a name)"
    )


def test_dropped_lists_only_the_counters_a_format_checks(tmp_path):
    _, meta = build(tmp_path, format="din", input=os.path.join(REPO_ROOT, "data", "amazon_electronics_din_sample"))
    counters = [key for key, value in meta["dropped"].items() if isinstance(value, int)]
    assert counters == ["malformed_lines", "empty_history_rows"]
    _, meta = build(tmp_path, name="seq", format="sequences", input=fixture("sequences", "seqs.txt"))
    assert list(meta["dropped"])[:6] == [
        "malformed_lines",
        "duplicate_reviews",
        "short_users",
        "short_user_reviews",
        "unknown_category_reviews",
        "unknown_category_items",
    ]


def test_summary_keeps_long_counter_names_apart():
    report = BuildReport()
    report.count("unknown_keys_mapped_to_default_in_a_long_name", 1234567)
    lines = report.summary_lines()
    assert lines[2] == "  unknown_keys_mapped_to_default_in_a_long_name     1,234,567"
    assert lines[1].index("0") == lines[2].index("7")  # numbers right-aligned in one column


def test_timings_include_the_write(tmp_path):
    _, meta = build(tmp_path, format="sequences", input=fixture("sequences", "seqs.txt"))
    assert list(meta["timings_s"])[-1] == "write"
    assert set(meta["timings_s"]) >= {"read", "clean + remap", "protocol + negatives", "write"}


def test_dataset_directory_mode_follows_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        build(tmp_path, format="sequences", input=fixture("sequences", "seqs.txt"))
    finally:
        os.umask(previous)
    path = str(tmp_path / "ds")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(os.path.join(path, "meta.json")).st_mode) == 0o640
    assert sorted(os.listdir(str(tmp_path))) == ["ds"]


# ----------------------------------------------------------------------------
# Two processes, proxies, progress
# ----------------------------------------------------------------------------


def test_metadata_error_in_the_second_process_comes_back(tmp_path):
    reviews = tmp_path / "reviews.json"
    reviews.write_text('{"reviewerID": "U1", "asin": "A1", "unixReviewTime": 1}\n')
    with pytest.raises(DataPrepError, match=r"meta_Tiny.json:4: "):
        read_amazon_files(str(reviews), fixture("amazon", "meta_Tiny.json"), BuildReport(strict=True), workers=2)
    report = BuildReport()
    _, metadata = read_amazon_files(str(reviews), fixture("amazon", "meta_Tiny.json"), report, workers=2)
    assert len(metadata.item) == 5 and report.dropped["malformed_lines"] == 1


def test_strict_with_two_workers_is_one_line(tmp_path):
    result = _run(
        "build.py",
        "--format",
        "amazon",
        "--input",
        fixture("amazon", "reviews_Tiny_5.json.gz"),
        "--meta",
        fixture("amazon", "meta_Tiny.json"),
        "--output",
        str(tmp_path / "x"),
        "--strict",
    )
    assert "reviews_Tiny_5.json.gz:4" in _one_line_error(result)


def test_no_name_lookup_through_a_proxy(tmp_path, monkeypatch):
    port = _closed_port()
    monkeypatch.setenv("http_proxy", f"http://user:secret@127.0.0.1:{port}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)

    def no_lookup(*args):
        raise AssertionError("the proxy resolves names, not this machine")

    monkeypatch.setattr(download, "_check_resolvable", no_lookup)
    # urlopen caches its opener, proxies included: start from none, and put the old one back afterwards.
    monkeypatch.setattr(urllib.request, "_opener", None)
    url = "http://no-such-host.invalid/reviews_Books_5.json.gz"
    assert download.proxy_for(url) == f"http://user:secret@127.0.0.1:{port}"
    with pytest.raises(
        DataPrepError,
        match=rf"cannot reach no-such-host.invalid through the proxy "
        rf"http://127.0.0.1:{port} \(.*by hand",
    ) as raised:
        download.download_file(url, str(tmp_path / "reviews_Books_5.json.gz"), timeout=2)
    assert "secret" not in str(raised.value)
    monkeypatch.setenv("no_proxy", "no-such-host.invalid")
    assert download.proxy_for(url) is None


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_log_progress_is_throttled():
    clock, stream = _Clock(), io.StringIO()
    bar = progress.LogProgress(
        total=4_000_000,
        desc="reviews x.json.gz",
        unit="B",
        unit_scale=True,
        stream=stream,
        interval=10.0,
        min_seconds=1.0,
        clock=clock,
    )
    for _ in range(40):
        clock.now += 1.0
        bar.update(100_000)
    bar.close()
    assert stream.getvalue().splitlines() == [
        "[data_prep] reviews x.json.gz: 25% (1.0 MB of 4.0 MB) after 10 s",
        "[data_prep] reviews x.json.gz: 50% (2.0 MB of 4.0 MB) after 20 s",
        "[data_prep] reviews x.json.gz: 75% (3.0 MB of 4.0 MB) after 30 s",
        "[data_prep] reviews x.json.gz: 100% (4.0 MB of 4.0 MB) after 40 s",
        "[data_prep] reviews x.json.gz: done, 4.0 MB in 40.0 s",
    ]


def test_log_progress_is_quiet_for_short_or_failed_work():
    clock, stream = _Clock(), io.StringIO()
    with progress.LogProgress(total=10, desc="quick", stream=stream, clock=clock) as bar:
        bar.update(10)
    with pytest.raises(KeyError):
        with progress.LogProgress(total=10, desc="failing", stream=stream, clock=clock, min_seconds=0) as bar:
            clock.now += 5
            raise KeyError("x")
    assert stream.getvalue() == ""


def test_without_tqdm_progress_falls_back_to_log_lines(monkeypatch):
    monkeypatch.setattr(progress, "_tqdm", None)
    monkeypatch.delenv("DATA_PREP_PROGRESS", raising=False)
    assert isinstance(progress.progress(total=3), progress.LogProgress)
    monkeypatch.setenv("DATA_PREP_PROGRESS", "bar")
    assert isinstance(progress.progress(total=3), progress.LogProgress)


def test_every_long_step_reports_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_MIN_S", 0.0)
    monkeypatch.setenv("DATA_PREP_PROGRESS", "log")
    build(tmp_path, format="sequences", input=fixture("sequences", "seqs.txt"))
    build(tmp_path, name="dien", format="dien", input=fixture("dien"))
    path = tmp_path / "dataset.pkl"
    with open(str(path), "wb") as handle:
        for obj in ([(0, [1], 2, 1), (0, [1], 0, 0)], [(0, [1, 2], (0, 2))], np.zeros(3, dtype=np.int32), (1, 3, 1)):
            pickle.dump(obj, handle, protocol=2)
    build(tmp_path, name="din", format="din", input=str(path), din_validation="none")
    done = [line.split(": done")[0] for line in capsys.readouterr().err.splitlines() if ": done" in line]
    for step in (
        "read seqs.txt",
        "clean + remap",
        "protocol + negatives",
        "write ds",
        "read local_train_splitByUser",
        "read local_test_splitByUser",
        "read dataset.pkl",
        "samples of dataset.pkl",
    ):
        assert "[data_prep] " + step in done, (step, done)


def test_remapped_chain_reports_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(progress, "LOG_MIN_S", 0.0)
    monkeypatch.setenv("DATA_PREP_PROGRESS", "log")
    converted, remapped = str(tmp_path / "converted"), str(tmp_path / "remapped")
    convert_amazon(
        fixture("amazon", "reviews_Tiny_5.json.gz"),
        fixture("amazon", "meta_Tiny.json"),
        converted,
        BuildReport(),
        workers=1,
    )
    report = BuildReport()
    reviews, items, sources = read_converted(converted, report)
    log = remap_converted(reviews, items, report)
    write_remapped(remapped, log, report, sources)
    capsys.readouterr()
    build(tmp_path, name="chain", format="remapped", input=remapped)
    err = capsys.readouterr().err
    for step in ("read remapped", "protocol + negatives", "write chain"):
        assert f"[data_prep] {step}: done in" in err, (step, err)


# ----------------------------------------------------------------------------
# The DIN authors' dataset.pkl as Python 2 wrote it
# ----------------------------------------------------------------------------

PY2_TRAIN = [(0, [1, 2], 3, 1), (0, [1, 2], 4, 0), (0, [1], 2, 1), (0, [1], 0, 0), (1, [2], 0, 1), (1, [2], 4, 0)]
PY2_TEST = [(0, [1, 2, 3], (0, 4)), (1, [2, 0], (3, 4))]
PY2_CATE_LIST = [0, 1, 1, 0, 1]
PY2_COUNTS = (2, 5, 2)


def _py2_object(value) -> bytes:
    """Protocol-2 opcodes as Python 2's cPickle writes them (memo puts left out)."""
    if isinstance(value, int):
        return b"K" + bytes([value])  # BININT1
    if isinstance(value, bytes):
        return b"U" + bytes([len(value)]) + value  # SHORT_BINSTRING: a Python 2 str
    if isinstance(value, list):
        return b"](" + b"".join(map(_py2_object, value)) + b"e"  # EMPTY_LIST MARK ... APPENDS
    if len(value) <= 3:
        return b"".join(map(_py2_object, value)) + bytes([0x84 + len(value)])  # TUPLE1..3
    return b"(" + b"".join(map(_py2_object, value)) + b"t"  # MARK ... TUPLE


def _py2_int32_array(values) -> bytes:
    """numpy 1.x under Python 2: _reconstruct(ndarray, (0,), 'b') + __setstate__ with a py2 str of raw bytes."""
    raw = b"".join(struct.pack("<i", value) for value in values)
    dtype = (
        b"cnumpy\ndtype\n"
        + _py2_object((b"i4", 0, 1))
        + b"R"
        + b"("
        + _py2_object(3)
        + _py2_object(b"<")
        + b"NNN"
        + b"J\xff\xff\xff\xff" * 2
        + _py2_object(0)
        + b"tb"
    )
    empty = b"cnumpy\nndarray\n" + _py2_object((0,)) + _py2_object(b"b") + b"\x87"  # TUPLE3
    state = b"(" + _py2_object(1) + _py2_object((len(values),)) + dtype + b"\x89" + _py2_object(raw) + b"t"
    return b"cnumpy.core.multiarray\n_reconstruct\n" + empty + b"R" + state + b"b"


def py2_dataset_pkl() -> bytes:
    """The bytes of tests/data/fixtures/din/dataset_py2.pkl."""
    bodies = [_py2_object(PY2_TRAIN), _py2_object(PY2_TEST), _py2_int32_array(PY2_CATE_LIST), _py2_object(PY2_COUNTS)]
    return b"".join(b"\x80\x02" + body + b"." for body in bodies)


def test_python2_dataset_pkl_fixture(tmp_path):
    path = fixture("din", "dataset_py2.pkl")
    with open(path, "rb") as handle:
        assert handle.read() == py2_dataset_pkl(), "regenerate the fixture with py2_dataset_pkl()"
    dataset, meta = build(tmp_path, format="din", input=path, din_validation="none")
    assert (meta["users"], meta["items"], meta["categories"]) == PY2_COUNTS
    assert dataset.item_category.tolist() == PY2_CATE_LIST
    assert np.asarray(dataset.samples("test")).tolist() == [
        [0, 0, 3, 0, 1],
        [0, 0, 3, 4, 0],
        [1, 1, 2, 3, 1],
        [1, 1, 2, 4, 0],
    ]
    assert meta["splits"] == {"train": 6, "validation": 0, "test": 4}
    assert load_dataset(str(tmp_path / "ds")).meta["dropped"]["malformed_lines"] == 0
