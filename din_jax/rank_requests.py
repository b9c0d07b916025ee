"""Rank requests: the JSON-lines input of ``infer.py --rank_candidates`` and its output (docs/WATCHING.md)."""

import json
from typing import Any, List, NamedTuple, Optional

from din_jax.inference import Predictor

RANK_REQUEST_KEYS = ("history", "candidates", "user", "id")


class RankRequest(NamedTuple):
    """One line of a ``--rank_candidates`` file."""

    line: int
    history: List[int]
    candidates: List[int]
    user: Optional[int]
    id: Any


def _id_list(where: str, name: str, value: Any, allow_empty: bool) -> List[int]:
    if not isinstance(value, list):
        raise ValueError("%s: %r must be a list of item ids, got %s" % (where, name, type(value).__name__))
    if not value and not allow_empty:
        raise ValueError("%s: %r is empty" % (where, name))
    for x in value:
        # bool is an int in Python; an id never is one.
        if isinstance(x, bool) or not isinstance(x, int):
            raise ValueError("%s: %r holds %r, not an integer item id" % (where, name, x))
    return list(value)


def read_rank_requests(path: str, predictor: Optional[Predictor] = None, raw_ids: bool = False) -> List[RankRequest]:
    """Reads and checks a rank-candidates file (JSON lines, docs/WATCHING.md).

    Each non-blank line is an object ``{"history": [item, ...], "candidates":
    [item, ...], "user": id, "id": any}``: ``history`` (oldest first, may be
    empty) and ``candidates`` (at least one) are required, ``user`` is needed
    by models with a user embedding (and ignored, unchecked, by the others),
    ``id`` is echoed in the output.

    Args:
      predictor: when given, ids are checked against its vocabulary.
      raw_ids: the ids are the dataset's own (strings or numbers, e.g. ASINs), mapped through the predictor's
        ``id_map`` (it is required then).

    Raises:
      ValueError: ``FILE:LINE: what is wrong``, for the first bad line.
    """
    if raw_ids and predictor is None:
        raise ValueError("%s: raw ids need the predictor, whose dataset's id maps translate them" % path)
    try:
        with open(path, "rb") as handle:
            lines = handle.read().split(b"\n")
    except OSError as error:
        raise ValueError("%s: %s" % (path, error.strerror or error)) from None
    requests = []
    for number, data in enumerate(lines, 1):
        where = "%s:%d" % (path, number)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            message = "%s: not UTF-8 (byte 0x%02x at column %d)" % (where, data[error.start], error.start + 1)
            raise ValueError(message) from None
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except ValueError as error:
            raise ValueError("%s: not valid JSON (%s)" % (where, error)) from None
        except RecursionError:
            raise ValueError("%s: nested too deeply to be a rank request" % where) from None
        if not isinstance(row, dict):
            raise ValueError('%s: expected a JSON object {"history": [...], "candidates": [...]}' % where)
        unknown = sorted(set(row) - set(RANK_REQUEST_KEYS))
        if unknown:
            raise ValueError("%s: unknown key(s) %s; the keys are %s" % (where, unknown, list(RANK_REQUEST_KEYS)))
        for key in ("history", "candidates"):
            if key not in row:
                raise ValueError("%s: missing %r" % (where, key))
        if raw_ids:
            for key in ("history", "candidates"):
                row[key] = predictor.internal_ids("item", row[key], "%s: %r" % (where, key))
            if row.get("user") is not None:
                row["user"] = predictor.internal_ids("user", [row["user"]], "%s: 'user'" % where)[0]
        history = _id_list(where, "history", row["history"], allow_empty=True)
        candidates = _id_list(where, "candidates", row["candidates"], allow_empty=False)
        user = row.get("user")
        if user is not None and (isinstance(user, bool) or not isinstance(user, int)):
            raise ValueError("%s: 'user' must be an integer id, got %r" % (where, user))
        if predictor is not None:
            if user is None and predictor.uses_user:
                raise ValueError("%s: the model has a user embedding: give 'user'" % where)
            for name, ids, size in (
                ("history", history, predictor.num_items),
                ("candidates", candidates, predictor.num_items),
                # Models without a user embedding never read the id.
                ("user", [] if user is None or not predictor.uses_user else [user], max(predictor.num_users, 1)),
            ):
                bad = [x for x in ids if not 0 <= x < size]
                if bad:
                    raise ValueError("%s: %r id %d is out of range [0, %d)" % (where, name, bad[0], size))
        requests.append(RankRequest(number, history, candidates, user, row.get("id")))
    if not requests:
        raise ValueError("%s: no requests (the file is empty)" % path)
    return requests


def rank_requests(predictor: Predictor, requests: List[RankRequest], top_k: int, raw_ids: bool = False) -> List[str]:
    """One JSON line per request: ``{"line", "id"?, "user", "ranking": [{"item", "score"}, ...]}`` (with ``raw_ids``,
    the user and the items are the dataset's own ids)."""
    raw_items = predictor.id_map("item")[0] if raw_ids else None
    raw_users = predictor.id_map("user")[0] if raw_ids else None
    lines = []
    for request in requests:
        ranking = predictor.rank(request.history, request.candidates, k=top_k, user=request.user or 0)
        row: dict = {"line": request.line}
        if request.id is not None:
            row["id"] = request.id
        row["user"] = raw_users[request.user] if raw_users is not None and request.user is not None else request.user
        row["ranking"] = [{"item": raw_items[item] if raw_items else item, "score": score} for item, score in ranking]
        lines.append(json.dumps(row))
    return lines
