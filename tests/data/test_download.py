"""download.py against a local HTTP server: resume with Range, size check, offline failure."""

import gzip
import http.server
import os
import socket
import threading
import time

import pytest

from data_prep.download import amazon_urls, download_amazon, download_file
from data_prep.report import DataPrepError

PAYLOAD = gzip.compress(os.urandom(300000), compresslevel=1)


class _Handler(http.server.BaseHTTPRequestHandler):
    honour_range = True
    short_body = False
    ranges_seen = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        start = 0
        header = self.headers.get("Range")
        type(self).ranges_seen.append(header)
        if header and self.honour_range:
            start = int(header.split("=")[1].rstrip("-"))
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.short_body else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    class Handler(_Handler):
        ranges_seen = []

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/file.json.gz", Handler
    httpd.shutdown()
    httpd.server_close()


def test_fresh_download(tmp_path, server):
    url, handler = server
    target = str(tmp_path / "file.json.gz")
    assert download_file(url, target, timeout=5) == target
    assert open(target, "rb").read() == PAYLOAD
    assert not os.path.exists(target + ".part")
    assert handler.ranges_seen == [None]


def test_resume_with_range(tmp_path, server):
    url, handler = server
    target = str(tmp_path / "file.json.gz")
    open(target + ".part", "wb").write(PAYLOAD[:123456])
    download_file(url, target, timeout=5)
    assert open(target, "rb").read() == PAYLOAD
    assert handler.ranges_seen == ["bytes=123456-"]


def test_part_already_complete(tmp_path, server):
    url, _ = server
    target = str(tmp_path / "file.json.gz")
    open(target + ".part", "wb").write(PAYLOAD)
    download_file(url, target, timeout=5)
    assert open(target, "rb").read() == PAYLOAD


def test_server_ignoring_range_restarts(tmp_path, server):
    url, handler = server
    handler.honour_range = False
    target = str(tmp_path / "file.json.gz")
    open(target + ".part", "wb").write(b"garbage that must not stay")
    download_file(url, target, timeout=5)
    assert open(target, "rb").read() == PAYLOAD


def test_short_body_is_reported_and_resumable(tmp_path, server):
    url, handler = server
    handler.short_body = True
    target = str(tmp_path / "file.json.gz")
    with pytest.raises(DataPrepError, match="run again to resume"):
        download_file(url, target, timeout=5)
    assert not os.path.exists(target)
    handler.short_body = False
    download_file(url, target, timeout=5)
    assert open(target, "rb").read() == PAYLOAD


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_offline_fails_at_once_with_instructions(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/reviews_Electronics_5.json.gz"
    started = time.time()
    with pytest.raises(DataPrepError, match=r"cannot reach 127.0.0.1.*by hand.*reviews_Electronics_5.json.gz"):
        download_file(url, str(tmp_path / "reviews_Electronics_5.json.gz"), timeout=2)
    assert time.time() - started < 5


def test_amazon_urls_are_the_originals():
    assert amazon_urls("Electronics", "2014") == {
        "reviews": "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_Electronics_5.json.gz",
        "meta": "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/meta_Electronics.json.gz",
    }
    assert amazon_urls("Electronics", "2018") == {
        "reviews": "https://jmcauley.ucsd.edu/data/amazon_v2/categoryFilesSmall/Electronics_5.json.gz",
        "meta": "https://jmcauley.ucsd.edu/data/amazon_v2/metaFiles2/meta_Electronics.json.gz",
    }


def test_existing_files_are_not_fetched_again(tmp_path):
    for name in ("reviews_Books_5.json.gz", "meta_Books.json.gz"):
        (tmp_path / name).write_bytes(PAYLOAD)
    # No network needed: both files are already there.
    paths = download_amazon("Books", "2014", str(tmp_path), timeout=1)
    assert sorted(os.path.basename(p) for p in paths.values()) == ["meta_Books.json.gz", "reviews_Books_5.json.gz"]
