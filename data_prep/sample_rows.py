"""Imported sample rows (user, history, candidate, label) -> stored sequences and sample arrays.

The DIN authors' and the DIEN files store every sample's history in full, so
a user's history is repeated once per sample. Here each user's histories
that are prefixes of one another (with a positive's target appended, which
extends its history by the item actually reviewed next) are merged into one
stored sequence, and a sample keeps only ``(sequence, position)``.
Histories that contradict each other become separate sequences of the same
user; nothing is stored once per prefix.

The imported data has no validation split: ``cut_validation`` moves a seeded
fraction of the training users (all their training rows), or each user's last
training position, to ``validation``.
"""

from typing import Dict, NamedTuple, Tuple

import numpy as np

from data_prep.report import BuildReport, DataPrepError

TRAIN, VALIDATION, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "validation", "test")
VALIDATION_MODES = ("users", "last", "none")


class SampleRows(NamedTuple):
    """Samples as imported: history items flat, row r's history is ``hist_items[hist_offsets[r]:hist_offsets[r+1]]``."""

    user: np.ndarray  # int64 [R]
    hist_items: np.ndarray  # int64 [total history items]
    hist_offsets: np.ndarray  # int64 [R + 1]
    item: np.ndarray  # int64 [R]
    label: np.ndarray  # int64 [R], 0 or 1
    split: np.ndarray  # int8 [R], TRAIN / VALIDATION / TEST


def select_rows(rows: SampleRows, keep: np.ndarray) -> SampleRows:
    """Returns the rows where ``keep`` is True (histories compacted)."""
    lengths = np.diff(rows.hist_offsets)
    starts = rows.hist_offsets[:-1][keep]
    kept_lengths = lengths[keep]
    offsets = np.zeros(len(kept_lengths) + 1, dtype=np.int64)
    np.cumsum(kept_lengths, out=offsets[1:])
    within = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], kept_lengths)
    hist_items = rows.hist_items[np.repeat(starts, kept_lengths) + within]
    return SampleRows(rows.user[keep], hist_items, offsets, rows.item[keep], rows.label[keep], rows.split[keep])


def drop_empty_histories(rows: SampleRows, report: BuildReport) -> SampleRows:
    """Drops rows without history (a sample needs position >= 1), counted as ``empty_history_rows``."""
    keep = np.diff(rows.hist_offsets) > 0
    report.count("empty_history_rows", int((~keep).sum()))
    return rows if keep.all() else select_rows(rows, keep)


def cut_validation(rows: SampleRows, mode: str, fraction: float, seed: int, report: BuildReport) -> SampleRows:
    """Moves training rows to the validation split.

    Args:
      mode: ``users``: a seeded random ``fraction`` of the users with training
        rows, all their training rows; ``last``: each user's training rows at
        their largest position (the last position pair); ``none``: nothing.
    """
    if mode not in VALIDATION_MODES:
        raise DataPrepError(f"unknown validation mode {mode!r}; choose from {list(VALIDATION_MODES)}")
    split = rows.split.copy()
    train = split == TRAIN
    if mode == "users":
        if not 0.0 <= fraction < 1.0:
            raise DataPrepError(f"the validation fraction must be in [0, 1), got {fraction}")
        train_users = np.unique(rows.user[train])
        count = int(round(fraction * len(train_users)))
        chosen = np.random.default_rng(seed).choice(train_users, size=count, replace=False) if count else []
        split[train & np.isin(rows.user, chosen)] = VALIDATION
        report.note(
            f"validation = all training rows of {count:,} of {len(train_users):,} training users (fraction {fraction}, seed {seed})"
        )
    elif mode == "last" and train.any():
        position = np.diff(rows.hist_offsets)
        users = rows.user[train]
        last = np.zeros(int(users.max()) + 1 if len(users) else 0, dtype=np.int64)
        np.maximum.at(last, users, position[train])
        split[train & (position == last[np.where(train, rows.user, 0)])] = VALIDATION
        report.note("validation = each training user's rows at their last training position")
    elif mode == "none":
        report.note("no validation split (the source data has none)")
    return rows._replace(split=split)


def merge_into_sequences(rows: SampleRows) -> Tuple[np.ndarray, np.ndarray, Dict[str, np.ndarray]]:
    """Stores each user's consistent histories once and turns rows into dataset samples.

    Returns:
      ``(sequences int32, offsets int64, {split name: int32 [rows, 5]})`` with
      sample columns ``user, sequence, position, item, label``; sequences are
      numbered by user, then by how many rounds of merging found them.
    """
    count = len(rows.user)
    hist_len = np.diff(rows.hist_offsets)
    # A positive's target is the next item of the same behaviour sequence.
    cand_len = hist_len + (rows.label == 1)
    cand_off = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(cand_len, out=cand_off[1:])
    cand = np.empty(int(cand_off[-1]), dtype=np.int64)
    row_of_hist = np.repeat(np.arange(count, dtype=np.int64), hist_len)
    cand[cand_off[row_of_hist] + (np.arange(len(rows.hist_items)) - rows.hist_offsets[row_of_hist])] = rows.hist_items
    positives = np.flatnonzero(rows.label == 1)
    cand[cand_off[positives] + hist_len[positives]] = rows.item[positives]

    head_of_row = np.full(count, -1, dtype=np.int64)
    heads, rounds = [], []
    remaining = np.arange(count, dtype=np.int64)
    round_number = 0
    while len(remaining):
        # The longest candidate of each user (first on ties) heads this round.
        sub_user = rows.user[remaining]
        order = np.lexsort((-cand_len[remaining], sub_user))
        first = np.ones(len(order), dtype=bool)
        first[1:] = sub_user[order][1:] != sub_user[order][:-1]
        round_heads = remaining[order[first]]
        head_users = rows.user[round_heads]
        head = round_heads[np.searchsorted(head_users, sub_user)]
        # Compare every remaining candidate with its head, element by element.
        lengths = cand_len[remaining]
        starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        within = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(starts, lengths)
        differs = (
            cand[np.repeat(cand_off[remaining], lengths) + within] != cand[np.repeat(cand_off[head], lengths) + within]
        )
        owner = np.repeat(np.arange(len(remaining), dtype=np.int64), lengths)
        consistent = np.bincount(owner[differs], minlength=len(remaining)) == 0
        head_of_row[remaining[consistent]] = head[consistent]
        heads.append(round_heads)
        rounds.append(np.full(len(round_heads), round_number, dtype=np.int64))
        remaining = remaining[~consistent]
        round_number += 1

    heads_all = np.concatenate(heads) if heads else np.zeros(0, dtype=np.int64)
    rounds_all = np.concatenate(rounds) if rounds else np.zeros(0, dtype=np.int64)
    ordered_heads = heads_all[np.lexsort((rounds_all, rows.user[heads_all]))]
    sequence_of_head = np.full(count, -1, dtype=np.int64)
    sequence_of_head[ordered_heads] = np.arange(len(ordered_heads), dtype=np.int64)
    head_lengths = cand_len[ordered_heads]
    offsets = np.zeros(len(ordered_heads) + 1, dtype=np.int64)
    np.cumsum(head_lengths, out=offsets[1:])
    within = np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1], head_lengths)
    sequences = cand[np.repeat(cand_off[ordered_heads], head_lengths) + within].astype(np.int32)

    samples = np.stack([rows.user, sequence_of_head[head_of_row], hist_len, rows.item, rows.label], axis=1).astype(
        np.int32
    )
    splits = {name: samples[rows.split == code] for code, name in enumerate(SPLIT_NAMES)}
    return sequences, offsets, splits


def require_training_rows(rows: SampleRows, path: str) -> None:
    """A DataPrepError unless some rows are training rows: a build without them would train on nothing."""
    if not np.any(rows.split == TRAIN):
        raise DataPrepError(
            f"{path}: no training samples (the training file is empty, or every row was dropped or went to "
            "validation; see the counts above); nothing written"
        )
