r"""Step 1: download the Amazon review and metadata files of a category (resumable).

  python data_prep/download.py --output_dir data/raw [--category Electronics] [--release 2014|2018]

The URLs are the ones the original code uses. An interrupted download is
resumed from ``<file>.part`` with an HTTP Range request; the result is
checked against the size the server announces and must be gzip. Without a
network the command fails within ``--timeout`` seconds and says where to put
the files by hand.
"""

import http.client
import os
import socket
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Dict, List, Optional

from absl import flags

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.cli import require_flags, run_app, run_safely  # noqa: E402
from data_prep.progress import progress  # noqa: E402
from data_prep.report import DataPrepError  # noqa: E402

URL_TEMPLATES: Dict[str, Dict[str, str]] = {
    "2014": {
        "reviews": "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_{category}_5.json.gz",
        "meta": "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/meta_{category}.json.gz",
    },
    "2018": {
        "reviews": "https://jmcauley.ucsd.edu/data/amazon_v2/categoryFilesSmall/{category}_5.json.gz",
        "meta": "https://jmcauley.ucsd.edu/data/amazon_v2/metaFiles2/meta_{category}.json.gz",
    },
}
_CHUNK = 1 << 20


def amazon_urls(category: str, release: str) -> Dict[str, str]:
    """Returns ``{"reviews": url, "meta": url}`` for a category and release (2014 or 2018)."""
    if release not in URL_TEMPLATES:
        raise DataPrepError(f"unknown release {release!r}; choose from {sorted(URL_TEMPLATES)}")
    return {kind: template.format(category=category) for kind, template in URL_TEMPLATES[release].items()}


def _manual_hint(url: str, destination: str) -> str:
    return (
        f"download {url} by hand (browser, or another machine) and place it at {destination} (a partial {destination}.part is "
        "resumed on the next run)"
    )


def _total_size(response, already: int) -> Optional[int]:
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    if length is None:
        return None
    return int(length) + (already if response.status == 206 else 0)


def proxy_for(url: str) -> Optional[str]:
    """The proxy urllib will use for ``url`` (``http_proxy`` etc., minus ``no_proxy``), or None."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy:
        return None
    try:
        if urllib.request.proxy_bypass(parts.hostname or ""):
            return None
    except OSError:  # proxy_bypass may look the host up on some platforms
        pass
    return proxy


def _without_credentials(proxy: str) -> str:
    parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a malformed port: still name the host
        port = ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}"


def _check_resolvable(url: str, destination: str, timeout: float) -> None:
    """Fails within ``timeout`` if the host name does not resolve.

    urllib's timeout does not cover name resolution, which can hang for long
    on a machine without network; resolve in a daemon thread and stop waiting.
    """
    parts = urllib.parse.urlsplit(url)
    result: Dict[str, object] = {}

    def resolve():
        try:
            result["addresses"] = socket.getaddrinfo(parts.hostname, parts.port or 80)
        except OSError as error:
            result["error"] = error

    thread = threading.Thread(target=resolve, name="resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    if "addresses" not in result:
        reason = result.get("error", f"name resolution timed out after {timeout} s")
        raise DataPrepError(f"cannot reach {parts.netloc} ({reason}); {_manual_hint(url, destination)}")


def download_file(url: str, destination: str, timeout: float = 10.0) -> str:
    """Downloads ``url`` to ``destination``, resuming ``destination.part`` if present.

    Args:
      url: http(s) URL.
      destination: final path; written only once complete and size-checked.
      timeout: seconds to wait for the server (connection and each read).

    Returns:
      ``destination``.

    Raises:
      DataPrepError: unreachable server (with instructions to place the file
        by hand), HTTP errors, or a size mismatch.
    """
    if os.path.isfile(destination):
        return destination
    proxy = proxy_for(url)
    if proxy is None:
        # Through a proxy the proxy resolves the name; this machine may be unable to.
        _check_resolvable(url, destination, timeout)
    part = destination + ".part"
    already = os.path.getsize(part) if os.path.isfile(part) else 0
    request = urllib.request.Request(url, headers={"User-Agent": "din_jax-data-prep"})
    if already:
        request.add_header("Range", f"bytes={already}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and already:
            # Nothing left to fetch: the part file already holds the whole file.
            total = _total_size(error, already)
            if total is not None and total == already:
                os.replace(part, destination)
                return destination
        raise DataPrepError(f"{url}: HTTP {error.code} {error.reason}; {_manual_hint(url, destination)}") from None
    except (urllib.error.URLError, socket.timeout, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        via = f" through the proxy {_without_credentials(proxy)}" if proxy else ""
        raise DataPrepError(
            f"cannot reach {urllib.parse.urlsplit(url).netloc}{via} ({reason}); {_manual_hint(url, destination)}"
        ) from None
    with response:
        if already and response.status != 206:
            already = 0  # the server ignored the Range header: start over
        total = _total_size(response, already)
        mode = "ab" if already else "wb"
        bar = progress(total=total, initial=already, desc=os.path.basename(destination), unit="B", unit_scale=True)
        received = already
        try:
            with open(part, mode) as handle:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (socket.timeout, OSError, http.client.HTTPException) as error:
            raise DataPrepError(
                f"{url}: connection lost after {received:,} bytes ({error}); run again to resume"
            ) from None
        finally:
            bar.close()
    if total is not None and received != total:
        raise DataPrepError(f"{url}: got {received:,} of {total:,} bytes; run again to resume")
    with open(part, "rb") as handle:
        if handle.read(2) != b"\x1f\x8b":
            raise DataPrepError(f"{url}: the download is not a gzip file (an error page?); delete {part} and retry")
    os.replace(part, destination)
    return destination


def download_amazon(
    category: str, release: str, output_dir: str, timeout: float = 10.0, kinds: Optional[List[str]] = None
) -> Dict[str, str]:
    """Downloads the review and metadata files of a category; returns kind -> local path."""
    os.makedirs(output_dir, exist_ok=True)
    urls = amazon_urls(category, release)
    wanted = kinds or ["reviews", "meta"]
    destinations = {
        kind: os.path.join(output_dir, os.path.basename(urllib.parse.urlsplit(urls[kind]).path)) for kind in wanted
    }
    paths = {}
    for kind in wanted:
        try:
            paths[kind] = download_file(urls[kind], destinations[kind], timeout)
        except DataPrepError as error:
            others = [
                f"{urls[other]} -> {destinations[other]}" for other in wanted if other != kind and other not in paths
            ]
            if others:
                raise DataPrepError("{}; likewise {}".format(error, "; ".join(others))) from None
            raise
    return paths


def main(argv):
    """Entry point (flags defined below, only when run as a script)."""
    del argv
    flags_ = flags.FLAGS

    def work():
        require_flags(output_dir=flags_.output_dir)
        paths = download_amazon(flags_.category, flags_.release, flags_.output_dir, flags_.timeout)
        for kind, path in paths.items():
            print(f"{kind}: {path} ({os.path.getsize(path):,} bytes)")
        print(
            "next: python data_prep/build.py --format amazon --input {} --meta {} --output DIR".format(
                paths["reviews"], paths["meta"]
            )
        )

    run_safely("download.py", work)


if __name__ == "__main__":
    flags.DEFINE_string("output_dir", None, "Where to put the files.")
    flags.DEFINE_string("category", "Electronics", "Amazon category (file name part), e.g. Electronics, Books.")
    flags.DEFINE_enum("release", "2014", sorted(URL_TEMPLATES), "Dataset release (2014 = the DIN paper's).")
    flags.DEFINE_float("timeout", 10.0, "Seconds to wait for the server before giving up.")
    run_app(main)
