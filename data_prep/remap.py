r"""Step 3: clean an interaction log and give users, items and categories contiguous ids.

As the DIN authors do, each vocabulary is its sorted distinct keys, so id
``i`` is the ``i``-th smallest key (numeric keys sort as numbers, others as
strings). Before that, exact duplicate interactions and users with fewer than
3 interactions are dropped (counted), so the ids cover exactly the kept
users and items. An item without a category gets the extra category
``<unknown>``, appended after the sorted real ones.

Standalone use, on the output of convert.py:

  python data_prep/remap.py --input /tmp/electronics_converted --output_dir /tmp/electronics_remapped
  python data_prep/build.py --format remapped --input /tmp/electronics_remapped --output /tmp/electronics
"""

import json
import os
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import pandas as pd
from absl import flags

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep import convert  # noqa: E402
from data_prep.cli import require_flags, run_app, run_safely  # noqa: E402
from data_prep.progress import stage, stages  # noqa: E402
from data_prep.report import BuildReport, DataPrepError  # noqa: E402

UNKNOWN_CATEGORY = "<unknown>"
MIN_USER_EVENTS = 3
REMAPPED_TABLE = "interactions.npz"
REMAPPED_ITEM_CATEGORY = "item_category.npy"
REMAP_REPORT = "remap.json"
ID_MAP_FILES = {"user": "user_ids.txt", "item": "item_ids.txt", "category": "category_ids.txt"}


class RemappedLog(NamedTuple):
    """A cleaned log with contiguous ids; rows keep their input order."""

    user: np.ndarray  # int32 [rows]
    item: np.ndarray  # int32 [rows]
    time: np.ndarray  # int64 [rows]
    item_category: np.ndarray  # int32 [items]
    id_maps: Dict[str, List[str]]  # user / item / category -> raw keys, index = id


def normalize_keys(values) -> pd.Series:
    """Returns keys as int64 when every key is an integer (so they sort numerically), else as strings."""
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if len(series) == 0:
        return series.astype(object)
    kind = pd.api.types.infer_dtype(series, skipna=False)
    if kind == "integer":
        try:
            return series.astype(np.int64)
        except OverflowError:  # keys beyond int64 (uint64 ids): Python ints still sort numerically
            return series.map(int).astype(object)
    if kind == "floating":
        if series.notna().all() and (series == np.floor(series)).all() and (series.abs() < 2**63).all():
            return series.astype(np.int64)
    elif kind == "string":
        # Only canonical integers: "007" or " 7" would not print back as the raw key
        # (and ISBN-like asins with leading zeros must keep the authors' string order).
        if series.str.fullmatch(r"-?(?:0|[1-9]\d{0,17})").all():
            return series.astype(np.int64)
    return series.map(str).astype(object)


def sorted_codes(values):
    """Returns ``(ids, sorted distinct keys)``: id ``i`` is the ``i``-th smallest key.

    Distinct values are found by hashing first, so the key normalisation and
    the sort touch each distinct key once, not every row.
    """
    codes, uniques = pd.factorize(pd.Series(values) if not isinstance(values, pd.Series) else values)
    keys = normalize_keys(pd.Series(np.asarray(uniques, dtype=object) if len(uniques) else [], dtype=object))
    rank, ordered = pd.factorize(keys, sort=True)
    return rank.astype(np.int64)[codes], np.asarray(ordered, dtype=object)


def clean_and_remap(
    users,
    items,
    times: np.ndarray,
    meta_items: Optional[Sequence] = None,
    meta_categories: Optional[Sequence] = None,
    report: Optional[BuildReport] = None,
    item_categories: Optional[Sequence] = None,
) -> RemappedLog:
    """Drops duplicates and short users, then assigns sorted contiguous ids.

    Args:
      users, items: per-interaction raw keys (any hashable; see ``normalize_keys``).
      times: int64 per-interaction time; ties keep input order later.
      meta_items, meta_categories: an item table (raw item key -> category
        key or None); the first entry of a repeated item wins.
      report: receives the counts of what was dropped.
      item_categories: alternatively a category per interaction row (the
        first non-missing value seen for an item wins; disagreements counted).

    Returns:
      The remapped log.
    """
    report = report or BuildReport()
    times = np.asarray(times, dtype=np.int64)
    if not (len(users) == len(items) == len(times)):
        raise DataPrepError("users, items and times differ in length")
    with stages("clean + remap", _CLEAN_STAGES) as step:
        return _clean_and_remap(users, items, times, meta_items, meta_categories, report, item_categories, step)


_CLEAN_STAGES = ("sorted ids", "duplicates + short users", "renumber", "categories")


def remap_converted(reviews, items, report: Optional[BuildReport] = None) -> RemappedLog:
    """``clean_and_remap`` of ``convert.read_converted``'s review and item tables."""
    users, item_keys = reviews["user_id"].to_numpy(dtype=object), reviews["item_id"].to_numpy(dtype=object)
    meta_items, meta_categories = items["item_id"].to_numpy(dtype=object), items["category"].to_numpy(dtype=object)
    return clean_and_remap(users, item_keys, reviews["time"].to_numpy(), meta_items, meta_categories, report)


def _clean_and_remap(users, items, times, meta_items, meta_categories, report, item_categories, step):
    step.advance("sorted ids")
    user_code, user_uniques = sorted_codes(users)
    item_code, item_uniques = sorted_codes(items)

    # Exact duplicates: same user, item and time.
    step.advance("duplicates + short users")
    frame = pd.DataFrame({"u": user_code, "i": item_code, "t": times})
    keep = ~frame.duplicated().to_numpy()
    report.count("duplicate_reviews", int((~keep).sum()))
    per_user = np.bincount(user_code[keep], minlength=len(user_uniques))
    short = (per_user > 0) & (per_user < MIN_USER_EVENTS)
    short_rows = keep & short[user_code]
    report.count("short_users", int(short.sum()))
    report.count("short_user_reviews", int(short_rows.sum()))
    keep &= ~short[user_code]

    # Re-number the survivors; np.unique is sorted, so ids stay in key order.
    step.advance("renumber")
    kept_users, user_id = np.unique(user_code[keep], return_inverse=True)
    kept_items, item_id = np.unique(item_code[keep], return_inverse=True)
    user_id = user_id.reshape(-1)
    item_id = item_id.reshape(-1)
    kept_item_keys = normalize_keys(pd.Series(item_uniques[kept_items], dtype=object))

    step.advance("categories")
    if item_categories is not None:
        row_categories = pd.Series(item_categories, dtype=object).reset_index(drop=True)
        table = pd.DataFrame({"item": item_id, "category": row_categories[keep].to_numpy()})
        table = table[table["category"].notna()]
        table["category"] = table["category"].map(str)
        conflicts = table.groupby("item")["category"].nunique()
        report.count("items_with_conflicting_categories", int((conflicts > 1).sum()))
        first = table.drop_duplicates("item", keep="first")
        category_key = pd.Series([None] * len(kept_items), dtype=object)
        category_key.iloc[first["item"].to_numpy()] = first["category"].to_numpy()
    elif meta_items is not None:
        meta_keys = normalize_keys(meta_items)
        meta_values = pd.Series(meta_categories, dtype=object).reset_index(drop=True)
        if meta_keys.dtype != kept_item_keys.dtype:
            # One side numeric, the other not: compare as strings.
            meta_keys, kept_item_keys = meta_keys.map(str), kept_item_keys.map(str)
        repeated = meta_keys.duplicated().to_numpy()
        report.count("duplicate_metadata_items", int(repeated.sum()))
        lookup = pd.Index(meta_keys[~repeated].to_numpy())
        where = lookup.get_indexer(kept_item_keys.to_numpy())
        values = meta_values[~repeated].to_numpy()
        category_key = pd.Series(
            np.where(where >= 0, values[np.maximum(where, 0)] if len(values) else None, None), dtype=object
        )
        report.count("metadata_items_without_reviews", int(len(lookup) - (where >= 0).sum()))
    else:
        category_key = pd.Series([None] * len(kept_items), dtype=object)

    category_key = category_key.map(
        lambda value: None if value is None or value != value or value == "" else str(value)
    )
    known = category_key.notna().to_numpy()
    category_codes, category_uniques = pd.factorize(
        normalize_keys(category_key[known].reset_index(drop=True)), sort=True
    )
    item_category = np.full(len(kept_items), len(category_uniques), dtype=np.int64)
    item_category[known] = category_codes
    category_names = [str(key) for key in category_uniques]
    unknown_items = int((~known).sum())
    if unknown_items:
        category_names.append(UNKNOWN_CATEGORY)
    report.count("unknown_category_items", unknown_items)
    report.count("unknown_category_reviews", int((~known[item_id]).sum()) if len(item_id) else 0)

    return RemappedLog(
        user=user_id.astype(np.int32),
        item=item_id.astype(np.int32),
        time=times[keep],
        item_category=item_category.astype(np.int32),
        id_maps={
            "user": [str(key) for key in user_uniques[kept_users]] if len(kept_users) else [],
            "item": [str(key) for key in kept_item_keys],
            "category": category_names,
        },
    )


# ----------------------------------------------------------------------------
# Files of the standalone step
# ----------------------------------------------------------------------------


def write_remapped(directory: str, log: RemappedLog, report: BuildReport, sources: List[dict]) -> None:
    """Writes a remapped log (npz + id maps + remap.json) for ``build.py --format remapped``."""
    os.makedirs(directory, exist_ok=True)
    np.savez(os.path.join(directory, REMAPPED_TABLE), user=log.user, item=log.item, time=log.time)
    np.save(os.path.join(directory, REMAPPED_ITEM_CATEGORY), log.item_category)
    for kind, file in ID_MAP_FILES.items():
        with open(os.path.join(directory, file), "w", encoding="utf-8", newline="\n") as handle:
            handle.write("".join(key.replace("\n", "\\n") + "\n" for key in log.id_maps[kind]))
    with open(os.path.join(directory, REMAP_REPORT), "w", encoding="utf-8") as handle:
        json.dump({"dropped": report.as_meta(), "sources": sources}, handle, indent=2)
        handle.write("\n")


def read_remapped(directory: str, report: BuildReport):
    """Reads what ``write_remapped`` wrote; earlier drop counts are added to ``report``.

    Returns:
      ``(RemappedLog, sources of the earlier steps)``.
    """
    with stages("read " + os.path.basename(os.path.normpath(directory)), ["arrays", "id maps"]) as step:
        return _read_remapped(directory, report, step)


def _read_remapped(directory: str, report: BuildReport, step):
    try:
        step.advance("arrays")
        with np.load(os.path.join(directory, REMAPPED_TABLE), allow_pickle=False) as table:
            user, item, time = table["user"], table["item"], table["time"]
        item_category = np.load(os.path.join(directory, REMAPPED_ITEM_CATEGORY), allow_pickle=False)
        step.advance("id maps")
        id_maps = {}
        for kind, file in ID_MAP_FILES.items():
            with open(os.path.join(directory, file), encoding="utf-8", newline="\n") as handle:
                id_maps[kind] = handle.read().split("\n")[:-1]
        with open(os.path.join(directory, REMAP_REPORT), encoding="utf-8") as handle:
            earlier = json.load(handle)
    except (OSError, ValueError, KeyError) as error:
        raise DataPrepError(f"{directory}: not a directory written by remap.py ({error})") from None
    for key, value in earlier.get("dropped", {}).items():
        if isinstance(value, int):
            report.count(key, value)
    report.malformed_examples.extend(earlier.get("dropped", {}).get("malformed_examples", []))
    if not (len(user) == len(item) == len(time)) or len(item_category) != len(id_maps["item"]):
        raise DataPrepError(f"{directory}: inconsistent remapped arrays")
    log = RemappedLog(
        user.astype(np.int32), item.astype(np.int32), time.astype(np.int64), item_category.astype(np.int32), id_maps
    )
    return log, earlier.get("sources", [])


def main(argv):
    """Entry point: converted tables (convert.py output) -> remapped directory."""
    del argv
    flags_ = flags.FLAGS

    def work():
        require_flags(input=flags_.input, output_dir=flags_.output_dir)
        report = BuildReport()
        with report.timed("read"), stage("read " + flags_.input, "tables"):
            reviews, items, earlier = convert.read_converted(flags_.input, report)
        with report.timed("clean + remap"):
            log = remap_converted(reviews, items, report)
        with report.timed("write"), stage("write " + flags_.output_dir, "arrays + id maps"):
            write_remapped(flags_.output_dir, log, report, earlier)
        print(
            "remapped: {:,} users, {:,} items, {:,} categories, {:,} interactions -> {}".format(
                len(log.id_maps["user"]),
                len(log.id_maps["item"]),
                len(log.id_maps["category"]),
                len(log.user),
                flags_.output_dir,
            )
        )
        print("\n".join(report.summary_lines()))

    run_safely("remap.py", work)


if __name__ == "__main__":
    flags.DEFINE_string("input", None, "Directory written by convert.py (reviews + items tables).")
    flags.DEFINE_string("output_dir", None, "Directory for the remapped log and id maps.")
    run_app(main)
