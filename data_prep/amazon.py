"""Streaming readers for the Amazon review and metadata files (2014 and 2018 releases).

Reviews are strict JSON, one object per line, in both releases. Metadata is a
Python dict literal per line in 2014 (single quotes, so not JSON) and strict
JSON in 2018. Nothing here calls ``eval``: JSON goes through ``json.loads``,
literals through a fast path that is exact (see ``parse_meta_literal_fast``)
or else ``ast.literal_eval``, which only builds constants.

Category rule (DIN's): the last element of the last path of the 2014
``categories`` list; for 2018 the last element of ``category``, else
``main_cat``. An item without one gets no category here (the build maps it
to an extra "unknown" category and counts it).
"""

import ast
import gzip
import io
import json
import multiprocessing
import os
import re
import zlib
from typing import Iterator, List, NamedTuple, Optional, Tuple

import numpy as np

from data_prep.progress import progress
from data_prep.report import BuildReport, DataPrepError, describe_decode_error

_GZIP_MAGIC = b"\x1f\x8b"
_BLOCK_BYTES = 1 << 23
# A line longer than this is treated as malformed instead of being parsed
# (ast.literal_eval on hostile input can take memory and time without bound).
MAX_LINE_BYTES = 1 << 24


class Reviews(NamedTuple):
    """Review columns in file order."""

    user: List[str]
    item: List[str]
    time: np.ndarray  # int64 unix seconds


class Metadata(NamedTuple):
    """One entry per metadata line that has an asin; ``category`` is None when the item has none."""

    item: List[str]
    category: List[Optional[str]]


def is_gzip(path: str) -> bool:
    """Returns True if the file starts with the gzip magic bytes (whatever its extension)."""
    with open(path, "rb") as handle:
        return handle.read(2) == _GZIP_MAGIC


def iter_line_blocks(path: str, desc: str, position: int = 0) -> Iterator[Tuple[int, List[bytes]]]:
    """Yields ``(number of lines before the block, lines)`` for a text or gzip file.

    Reading large blocks and splitting them with ``bytes.split`` is several
    times faster than iterating a GzipFile line by line. The progress bar
    follows the bytes read from disk (compressed bytes for gzip input).
    """
    try:
        raw = open(path, "rb")
    except OSError as error:
        raise DataPrepError(f"cannot open {path}: {error.strerror or error}") from None
    with raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        bar = progress(total=os.fstat(raw.fileno()).st_size, desc=desc, unit="B", unit_scale=True, position=position)
        done, carry, before = 0, b"", 0
        try:
            while True:
                block = stream.read(_BLOCK_BYTES)
                if not block:
                    break
                lines = (carry + block).split(b"\n")
                carry = lines.pop()
                yield before, lines
                before += len(lines)
                consumed = raw.tell()
                bar.update(consumed - done)
                done = consumed
        except (EOFError, OSError, zlib.error) as error:
            raise DataPrepError(f"{path}: unreadable or truncated gzip file ({error}); download it again") from None
        finally:
            bar.close()
        if carry:
            yield before, [carry]


def _clean(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


def _arrow_block_parser():
    """Returns a pyarrow-based parser of review blocks, or None when pyarrow is missing.

    pyarrow's JSON reader parses a block in C++ about three times faster than
    ``json.loads`` per line. It answers only when the outcome cannot differ
    from the per-line path: every line valid UTF-8 and one JSON object with
    the three keys of the right types, non-empty strings, no line too long;
    otherwise (any error, a null, a row count that differs from the line
    count) the caller parses that block line by line, which also finds and
    reports the malformed lines.
    """
    try:
        import pyarrow as pa
        import pyarrow.json as pa_json
    except ImportError:
        return None
    schema = pa.schema([("reviewerID", pa.string()), ("asin", pa.string()), ("unixReviewTime", pa.int64())])
    parse_options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    read_options = pa_json.ReadOptions(use_threads=False, block_size=1 << 26)

    def parse(lines: List[bytes]):
        if not lines or max(map(len, lines)) > MAX_LINE_BYTES:
            return None
        # Objects only: pyarrow 26 crashes (SIGSEGV) on a block that is the single line `null`.
        if not all(line.lstrip()[:1] == b"{" for line in lines):
            return None
        data = b"\n".join(lines)
        try:
            # json.loads(bytes) decodes like this first; pyarrow skips ignored fields' bytes.
            data.decode("utf-8", "surrogatepass")
            table = pa_json.read_json(io.BytesIO(data), read_options=read_options, parse_options=parse_options)
        except (pa.ArrowException, ValueError):
            return None
        if table.num_rows != len(lines) or any(column.null_count for column in table.columns):
            return None
        users, items = table.column(0).to_pylist(), table.column(1).to_pylist()
        if "" in users or "" in items:
            return None
        return users, items, table.column(2).to_numpy()

    return parse


def read_reviews(path: str, report: BuildReport, use_arrow: bool = True) -> Reviews:
    """Reads ``reviewerID``, ``asin`` and ``unixReviewTime`` from a review file (.json or .json.gz).

    Malformed lines (not JSON, not an object, a key missing or of the wrong
    type) are reported to ``report`` with their line number. With pyarrow
    installed (and ``use_arrow``), clean blocks are parsed by pyarrow.
    """
    users: List[str] = []
    items: List[str] = []
    times: List[np.ndarray] = []
    loads = json.loads
    name = os.path.basename(path)
    arrow_parse = _arrow_block_parser() if use_arrow else None
    for before, lines in iter_line_blocks(path, "reviews " + name):
        parsed = arrow_parse(lines) if arrow_parse is not None else None
        if parsed is not None:
            users.extend(parsed[0])
            items.extend(parsed[1])
            times.append(np.asarray(parsed[2], dtype=np.int64))
            continue
        block_times: List[int] = []
        for offset, line in enumerate(lines):
            line = _clean(line)
            if not line.strip():
                continue
            try:
                if len(line) > MAX_LINE_BYTES:
                    raise ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
                review = loads(line)
                user, item, when = review["reviewerID"], review["asin"], review["unixReviewTime"]
            except RecursionError:
                report.malformed(path, before + offset + 1, "not a JSON object (nested too deeply)")
                continue
            except (ValueError, TypeError, KeyError) as error:
                report.malformed(path, before + offset + 1, _describe(error))
                continue
            if type(user) is not str or type(item) is not str or type(when) is not int or not user or not item:
                report.malformed(
                    path, before + offset + 1, "reviewerID/asin must be non-empty strings and unixReviewTime an integer"
                )
                continue
            if not -(2**63) <= when < 2**63:
                report.malformed(path, before + offset + 1, "unixReviewTime %d is out of range (int64)" % when)
                continue
            users.append(user)
            items.append(item)
            block_times.append(when)
        times.append(np.array(block_times, dtype=np.int64))
    return Reviews(users, items, np.concatenate(times) if times else np.zeros(0, dtype=np.int64))


def _describe(error: Exception) -> str:
    if isinstance(error, UnicodeDecodeError):
        return describe_decode_error(error)
    if isinstance(error, KeyError):
        return f"missing key {error}"
    if isinstance(error, TypeError):
        return "not a JSON object"
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:200]


# ----------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------

# A complete Python string literal without prefix: the quote, then runs of
# characters other than that quote, a backslash or a line break, possibly
# interrupted by backslash pairs, then the quote. Splitting on it (with the
# capturing group) alternates "skeleton" text and string tokens, so a quote can
# only ever open a token. Without backslashes in the line the simpler pattern
# (or for lines without double quotes, str.split) tokenizes identically.
_STRING_TOKEN = re.compile(r"""('[^'\\\n]*(?:\\.[^'\\\n]*)*'|"[^"\\\n]*(?:\\.[^"\\\n]*)*")""")
_PLAIN_STRING_TOKEN = re.compile(r"""('[^'\n]*'|"[^"\n]*")""")
# What may remain between string tokens in a dict of str / numbers / lists /
# dicts / None / True / False. "\x00" marks where a token was.
_SKELETON = re.compile(r"[\x00\[\]{}:,\s0-9.eE+\-]*(?:(?:None|True|False)[\x00\[\]{}:,\s0-9.eE+\-]*)*\Z")
_ADJACENT_TOKENS = re.compile(r"\x00\s*\x00")  # 'a' 'b' is one concatenated string in Python


def leaf_category(categories) -> Optional[str]:
    """DIN's rule for 2014 ``categories``: the last element of the last path, or None."""
    if isinstance(categories, list) and categories:
        path = categories[-1]
        if isinstance(path, list) and path and isinstance(path[-1], str):
            return path[-1]
    return None


def category_of(entry: dict) -> Optional[str]:
    """Returns an item's category from a parsed metadata dict (2014 or 2018 keys), or None."""
    if "categories" in entry:
        return leaf_category(entry["categories"])
    category = entry.get("category")
    if isinstance(category, list) and category and isinstance(category[-1], str) and category[-1]:
        return category[-1]
    main = entry.get("main_cat")
    if isinstance(main, str) and main:
        return main
    return None


def _tokenize(line: str):
    """Splits a line into ``(skeleton, tokens, quoted)``; token i lies between skeleton[i] and skeleton[i + 1].

    ``quoted`` tells whether tokens keep their quotes (and may hold escapes)
    or are already the string values. Returns None if a quote is unmatched.
    """
    if "\\" not in line:
        if '"' not in line:
            # Only single-quoted strings and no escapes: every quote toggles.
            parts = line.split("'")
            if len(parts) % 2 == 0:
                return None
            return parts[0::2], parts[1::2], False
        parts = _PLAIN_STRING_TOKEN.split(line)
    else:
        parts = _STRING_TOKEN.split(line)
    return parts[0::2], parts[1::2], True


def _decode_escaped(token: str) -> str:
    """Decodes a quoted token holding backslash escapes exactly as the Python parser would.

    For ASCII tokens the ``unicode_escape`` codec is the parser's own escape
    decoder (it raises on the same invalid escapes) at a fraction of the cost
    of ``ast.literal_eval``; other tokens go to ``ast.literal_eval``.
    """
    if token.isascii():
        try:
            return token[1:-1].encode("ascii").decode("unicode_escape")
        except UnicodeDecodeError as error:
            raise ValueError(f"invalid escape in string literal ({error})") from None
    value = ast.literal_eval(token)
    if not isinstance(value, str):
        raise ValueError("not a string literal")
    return value


def _token_value(token: str, quoted: bool) -> str:
    if not quoted:
        return token
    if "\\" not in token:
        return token[1:-1]
    return _decode_escaped(token)


def _count_strings(value) -> int:
    """Number of string tokens a JSON-decoded value was written with (dict keys included)."""
    if isinstance(value, str):
        return 1
    if isinstance(value, list):
        return sum(_count_strings(element) for element in value)
    if isinstance(value, dict):
        return len(value) + sum(_count_strings(element) for element in value.values())
    return 0


# Keys whose presence changes what category_of returns; the fast path must see them exactly.
_FAST_KEYS = ("asin", "categories", "category", "main_cat")
_PLAIN_SPELLINGS = {name: name for name in _FAST_KEYS}
_QUOTED_SPELLINGS = dict(
    [("'" + name + "'", name) for name in _FAST_KEYS] + [('"' + name + '"', name) for name in _FAST_KEYS]
)


def parse_meta_literal_fast(line: str):
    """Extracts ``(asin, category)`` from a 2014 metadata literal without building the whole dict.

    Returns None when the line is not of the shape handled here; the caller
    then uses ``ast.literal_eval``. For every line it accepts, the result
    equals ``ast.literal_eval`` followed by ``category_of``, because:

    * the line is split into string tokens and skeleton (a quote can only
      open a token); the skeleton may only hold brackets, separators, numbers
      and None/True/False, and two tokens may not be adjacent (Python would
      concatenate them);
    * every token with a backslash is decoded as the parser would (which
      validates it, see ``_decode_escaped``) and none may spell a key that
      matters;
    * each of ``asin``, ``categories``, ``category``, ``main_cat`` occurs at
      most once as a string; ``category`` and ``main_cat`` not at all;
    * the skeleton, with every token replaced by ``""`` except the ``asin``
      and ``categories`` tokens (kept as JSON strings) and None/True/False by
      their JSON names, must parse as a JSON object. So the line is a valid
      literal of dicts, lists, strings and numbers with string keys only, and
      the JSON object's top-level keys and value shapes are those of the
      literal; the asin value is the token right after its key, and the last
      string of the categories value is its last token.
    """
    if "\x00" in line or "\r" in line:
        return None
    tokenized = _tokenize(line)
    if tokenized is None:
        return None
    skeleton, tokens, quoted = tokenized
    joined = "\x00".join(skeleton)
    if not _SKELETON.match(joined) or _ADJACENT_TOKENS.search(joined):
        return None
    if quoted and "\\" in line:
        try:
            decoded = [_decode_escaped(token) for token in tokens if "\\" in token]
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
        if any(name in decoded for name in _FAST_KEYS):
            return None
    where = {}
    spelled = _QUOTED_SPELLINGS if quoted else _PLAIN_SPELLINGS
    for spelling in spelled.keys() & tokens:
        name = spelled[spelling]
        if tokens.count(spelling) > 1 or name in where.values() or name in ("category", "main_cat"):
            return None
        where[tokens.index(spelling)] = name
    pieces, start = [], 0
    for index in sorted(where):
        pieces.append('""'.join(skeleton[start : index + 1]))
        pieces.append('"' + where[index] + '"')
        start = index + 1
    pieces.append('""'.join(skeleton[start:]))
    masked = "".join(pieces)
    if "N" in masked or "T" in masked or "F" in masked:
        masked = masked.replace("None", "null").replace("True", "true").replace("False", "false")
    try:
        shape = json.loads(masked)
    except (ValueError, RecursionError):  # too deep: ast.literal_eval below says so
        return None
    if not isinstance(shape, dict) or shape.get("asin") != "":
        return None
    key_index = {name: index for index, name in where.items()}
    asin = _token_value(tokens[key_index["asin"] + 1], quoted)
    if not asin:
        return None
    if "categories" not in shape:
        return asin, None
    if leaf_category(shape["categories"]) is None:
        return asin, None
    last = key_index["categories"] + _count_strings(shape["categories"])
    return asin, _token_value(tokens[last], quoted)


def parse_meta_line(line: str) -> Tuple[str, Optional[str]]:
    """Returns ``(asin, category or None)`` of one metadata line, 2014 literal or 2018 JSON.

    Raises:
      ValueError: the line is malformed (message says why).
    """
    text = line.strip()
    if text.startswith('{"'):
        try:
            entry = json.loads(text)
        except (ValueError, RecursionError):
            entry = None
        if entry is not None:
            return _entry_fields(entry)
    fast = parse_meta_literal_fast(text)
    if fast is not None:
        return fast
    try:
        entry = ast.literal_eval(text)
    except SyntaxError as error:
        raise ValueError(
            f"not a Python dict literal or JSON object ({(error.msg or 'invalid syntax')[:120]})"
        ) from None
    except (ValueError, TypeError):
        # ast's message names a node object by its memory address: keep the reason fixed so that
        # meta.json does not change from one build to the next.
        raise ValueError(
            "not a Python dict literal or JSON object (it holds something other than plain "
            "values, e.g. a call or a name)"
        ) from None
    except (MemoryError, RecursionError):
        raise ValueError("not a Python dict literal or JSON object (nested too deeply)") from None
    return _entry_fields(entry)


def _entry_fields(entry) -> Tuple[str, Optional[str]]:
    if not isinstance(entry, dict):
        raise ValueError("not a dict")
    asin = entry.get("asin")
    if not isinstance(asin, str) or not asin:
        raise ValueError("missing or non-string 'asin'")
    return asin, category_of(entry)


def read_metadata(path: str, report: BuildReport, position: int = 0) -> Metadata:
    """Reads the asin and category of every line of a metadata file (.json or .json.gz).

    ``position`` is the progress bar's line (1 when another bar runs beside it).
    """
    items: List[str] = []
    categories: List[Optional[str]] = []
    name = os.path.basename(path)
    for before, lines in iter_line_blocks(path, "metadata " + name, position):
        for offset, raw in enumerate(lines):
            raw = _clean(raw)
            if not raw.strip():
                continue
            try:
                if len(raw) > MAX_LINE_BYTES:
                    raise ValueError(f"line longer than {MAX_LINE_BYTES} bytes")
                asin, category = parse_meta_line(raw.decode("utf-8"))
            except UnicodeDecodeError as error:
                report.malformed(path, before + offset + 1, describe_decode_error(error))
                continue
            except ValueError as error:
                report.malformed(path, before + offset + 1, str(error)[:200])
                continue
            items.append(asin)
            categories.append(category or None)
    return Metadata(items, categories)


def _metadata_worker(connection, path: str, strict: bool) -> None:
    """Runs in the second process: sends ``("ok", (metadata, report))`` or ``("error", exception)``."""
    try:
        try:
            report = BuildReport(strict=strict)
            result = ("ok", (read_metadata(path, report, position=1), report))
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
    """``(Reviews, Metadata)`` of both files; with ``workers > 1`` the metadata is parsed in a second process."""
    if workers <= 1:
        return read_reviews(reviews_path, report), read_metadata(meta_path, report)
    # spawn, not fork: a forked child of a threaded process (the hashing thread) can inherit a held lock.
    # A bare Process and a Pipe, not a Pool, whose semaphores the resource tracker reported as leaked
    # when a --strict error terminated it.
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_metadata_worker, args=(sender, meta_path, report.strict), name="read-metadata", daemon=True
    )
    process.start()
    sender.close()
    try:
        reviews = read_reviews(reviews_path, report)
        try:
            status, payload = receiver.recv()
        except EOFError:
            process.join()
            raise DataPrepError(
                f"{meta_path}: the process reading it stopped without a result (exit code "
                f"{process.exitcode}); try --workers 1"
            ) from None
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
