"""Ablation grids: expansion, tuning, skip/resume, the JSON-lines store, tables and charts.

A grid is a list of *cells* (named configurations: a variant, a model, an
attention, an activation, a regulariser, ...), each given as command-line
flag overrides on top of a base configuration. Every cell is tuned with the
same budget (the same list of candidate overrides, e.g. three learning
rates, run with one tuning seed and compared on the validation metric) and
then trained once per seed with the chosen candidate. ``experiments/ablate.py``
turns flags into cells; everything here is flag-free and testable.

Each run appends one JSON line to a results file (``status`` ``ok`` or
``failed``, after a ``started`` line). A run is identified by the hash of
its resolved ``TrainConfig`` (the *run key*), so re-running a grid skips the
runs already finished, two grids that share a configuration (the attention
grid's ``din`` is the paper grid's) share its runs, and changing any setting
(epochs, data) runs again. A run that raised is recorded as failed and the
grid goes on; a run whose process died leaves a ``started`` line without an
end and is reported as interrupted, then run again.
"""

import dataclasses
import datetime
import hashlib
import itertools
import json
import math
import os
import shlex
import time
import traceback
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from absl import logging

from din_jax.metrics import compute_relaimpr

STARTED, OK, FAILED = "started", "ok", "failed"
PHASE_TUNE, PHASE_FINAL = "tune", "final"

# TrainConfig fields that do not change what a run computes: left out of the run key.
VOLATILE_FIELDS = ("model_path", "log_every", "prefetch", "donate", "eval_micro_batch_size", "checkpoint_every",
                   "keep_checkpoints", "resume")

# Regulariser names of the grid axis and the flag each sets (with its default value).
REGULARIZERS = {
    "none": (),
    "mba": ("mba_lambda", 0.01),  # the paper's lambda
    "l2": ("l2", 1e-5),
    "dropout": ("dropout", 0.5),
}


class Cell(NamedTuple):
    """One named configuration of a grid: ``overrides`` are flags, e.g. ``('--model=din', '--activation=dice')``."""

    label: str
    overrides: Tuple[str, ...]


class RunSpec(NamedTuple):
    """One training run of a grid."""

    cell: Cell
    phase: str  # PHASE_TUNE or PHASE_FINAL
    candidate: Cell  # the tuning candidate (label '' and no overrides when there is no tuning)
    seed: int

    @property
    def overrides(self) -> Tuple[str, ...]:
        return self.cell.overrides + self.candidate.overrides + ("--seed=%d" % self.seed,)

    def describe(self) -> str:
        parts = [self.cell.label]
        if self.candidate.label:
            parts.append(self.candidate.label)
        return "%s [%s seed %d]" % (" | ".join(parts), self.phase, self.seed)


NO_CANDIDATE = Cell("", ())


# ----------------------------------------------------------------------------
# Grid specification
# ----------------------------------------------------------------------------


def parse_labelled_overrides(text: str) -> Cell:
    """Parses ``'LABEL: --flag=value --other=value'`` (or just the flags; the label is then the flags).

    Raises:
      ValueError: for an empty specification or words that are not flags.
    """
    text = text.strip()
    label = ""
    head, sep, tail = text.partition(":")
    if sep and not head.strip().startswith("-"):
        label, text = head.strip(), tail.strip()
    overrides = tuple(shlex.split(text))
    bad = [word for word in overrides if not word.startswith("--")]
    if bad:
        raise ValueError("expected flags such as --model=din in %r, got %s" % (text, bad))
    if not label:
        label = " ".join(word[2:] for word in overrides)
    if not label:
        raise ValueError("empty configuration %r" % text)
    return Cell(label, overrides)


def parse_regularizer(text: str) -> Cell:
    """A regulariser of the grid axis: ``none``, ``mba``, ``mba=0.01``, ``l2=1e-5``, ``dropout=0.3``."""
    name, _, value = text.strip().partition("=")
    if name not in REGULARIZERS:
        raise ValueError("unknown regulariser %r; choose from %s (optionally NAME=VALUE)" % (name, sorted(REGULARIZERS)))
    if name == "none":
        if value:
            raise ValueError("regulariser 'none' takes no value")
        return Cell("none", ())
    flag, default = REGULARIZERS[name]
    number = float(value) if value else default
    return Cell(name if not value else "%s=%s" % (name, value), ("--%s=%r" % (flag, number),))


def expand_grid(variants: Sequence[Cell] = (), models: Sequence[str] = (), attentions: Sequence[str] = (),
                activations: Sequence[str] = (), regularizers: Sequence[str] = ()) -> List[Cell]:
    """The product of the axes, in order; an empty axis is not varied.

    Labels join the parts with `` / `` (``din / dice / mba``); overrides are
    the variant's followed by the axes' (a later flag wins).
    """
    axes: List[List[Cell]] = []
    if variants:
        axes.append(list(variants))
    axes.append([Cell(name, ("--model=%s" % name,)) for name in models] or [Cell("", ())])
    axes.append([Cell(name, ("--attention=%s" % name,)) for name in attentions] or [Cell("", ())])
    axes.append([Cell(name, ("--activation=%s" % name,)) for name in activations] or [Cell("", ())])
    axes.append([parse_regularizer(name) for name in regularizers] or [Cell("", ())])
    cells = []
    for parts in itertools.product(*axes):
        label = " / ".join(part.label for part in parts if part.label) or "default"
        overrides = tuple(itertools.chain.from_iterable(part.overrides for part in parts))
        cells.append(Cell(label, overrides))
    labels = [cell.label for cell in cells]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError("grid labels must be unique; repeated: %s" % duplicates)
    return cells


def default_config_dict() -> Dict[str, Any]:
    """``TrainConfig``'s defaults, as JSON values (what ``compute_run_key`` compares against)."""
    from din_jax.config import TrainConfig

    return _config_dict(TrainConfig())


def compute_run_key(config_dict: Dict[str, Any], defaults: Optional[Dict[str, Any]] = None) -> str:
    """A short stable hash of a run's resolved configuration.

    Volatile fields (output paths, logging) are left out, and so are fields
    equal to their default in ``defaults``: a field added to ``TrainConfig``
    later, with a default that keeps the old behaviour, does not change the
    keys of the runs already recorded (a stored record without the field
    reads as having its default).
    """
    defaults = defaults or {}
    kept = {key: value for key, value in config_dict.items()
            if key not in VOLATILE_FIELDS and not (key in defaults and defaults[key] == value)}
    text = json.dumps(kept, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------
# The results store
# ----------------------------------------------------------------------------


def append_record(path: str, record: Dict[str, Any]) -> None:
    """Appends one JSON line with a single write, then flush and fsync.

    A crash leaves either the whole line or none of it (the write is one
    ``os.write`` of an ``O_APPEND`` descriptor), never half a record.
    """
    line = (json.dumps(record, sort_keys=True, default=_json_default) + "\n").encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
        if written != len(line):
            raise OSError("short write to %s (%d of %d bytes)" % (path, written, len(line)))
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def load_records(path: str) -> List[Dict[str, Any]]:
    """Every record of a results file, in order; a torn or corrupt line is skipped (and reported)."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                logging.warning("%s line %d is not JSON (a torn write?); skipped", path, number)
                continue
            if isinstance(record, dict) and "key" in record and "status" in record:
                records.append(record)
    return records


def latest_by_key(records: Iterable[Dict[str, Any]],
                  defaults: Optional[Dict[str, Any]] = None) -> Dict[str, Dict[str, Any]]:
    """The last record of each run key (``ok`` or ``failed`` after ``started``, or a dangling ``started``).

    Keys are recomputed from each record's ``flags`` with ``compute_run_key``
    (so records written before a ``TrainConfig`` field was added still
    match); records without flags (invalid configurations) keep their key.
    """
    latest: Dict[str, Dict[str, Any]] = {}
    for record in records:
        flags = record.get("flags")
        key = compute_run_key(flags, defaults) if isinstance(flags, dict) else record["key"]
        latest[key] = dict(record, key=key)
    return latest


# ----------------------------------------------------------------------------
# Running a grid
# ----------------------------------------------------------------------------


class GridOutcome(NamedTuple):
    """What ``run_grid`` did, and the records of the grid's runs.

    Attributes:
      cells: the grid's cells, in order.
      final_keys, tune_keys: cell label -> run keys of its final (one per
        seed) and tuning (one per candidate) runs.
      records: run key -> the latest record of every run of the grid.
      tuned: cell label -> the chosen candidate label (None if tuning failed).
      ran, skipped, failed, interrupted: run keys by what happened now
        (``failed`` also holds failed runs skipped without ``retry_failed``;
        ``interrupted``: a previous invocation died during that run).
    """

    cells: List[Cell]
    final_keys: Dict[str, List[str]]
    tune_keys: Dict[str, List[str]]
    records: Dict[str, Dict[str, Any]]
    tuned: Dict[str, Optional[str]]
    ran: List[str]
    skipped: List[str]
    failed: List[str]
    interrupted: List[str]


def _better(metric: str, value: float, best: Optional[float]) -> bool:
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if metric == "logloss" else value > best


def run_grid(cells: Sequence[Cell], seeds: Sequence[int], results_path: str,
             make_config: Callable[[Sequence[str]], Any], train_fn: Callable[[Any], Dict[str, Any]],
             candidates: Sequence[Cell] = (), tune_seed: int = 0, select_metric: str = "gauc",
             retry_failed: bool = True, dry_run: bool = False,
             stop_exceptions: Tuple[type, ...] = ()) -> GridOutcome:
    """Runs (or skips) every run of a grid, cell by cell, recording each in ``results_path``.

    With ``candidates``, each cell first runs every candidate with
    ``tune_seed`` and keeps the one with the best validation
    ``select_metric``; the final runs (one per seed) use it. Without, the
    final runs use the cell's overrides alone.

    Args:
      cells: the grid's configurations.
      seeds: seeds of the final runs.
      results_path: the JSON-lines store (created if missing; shared by grids).
      make_config: flag overrides -> a ``TrainConfig`` (may raise: the run
        is then recorded as failed).
      train_fn: ``TrainConfig`` -> summary (``din_jax.train.loop.train_and_evaluate``
        or a wrapper).
      retry_failed: run again the runs whose latest record is ``failed``
        (else they are skipped and stay failed).
      dry_run: resolve keys and report, train nothing.
      stop_exceptions: exceptions that stop the grid instead of failing one
        run (a user's interrupt). KeyboardInterrupt always stops it.

    Returns:
      A ``GridOutcome``.
    """
    defaults = default_config_dict()
    latest = latest_by_key(load_records(results_path), defaults)
    outcome = GridOutcome(list(cells), {}, {}, {}, {}, [], [], [], [])

    def execute(spec: RunSpec) -> str:
        started = time.time()
        try:
            config = make_config(spec.overrides)
            config_dict = _config_dict(config)
            key = compute_run_key(config_dict, defaults)
        except Exception as error:  # noqa: BLE001 - a bad configuration fails this run only
            config_dict = None
            key = "config-" + hashlib.sha256(json.dumps(list(spec.overrides)).encode()).hexdigest()[:16]
            config_error = error
        else:
            config_error = None
        previous = latest.get(key)
        base = {
            "key": key, "cell": spec.cell.label, "phase": spec.phase, "candidate": spec.candidate.label,
            "seed": spec.seed, "overrides": list(spec.overrides), "flags": config_dict,
        }
        if previous is not None and previous["status"] == STARTED:
            logging.warning("%s: an earlier invocation died during this run (no end record); running it again",
                            spec.describe())
            outcome.interrupted.append(key)
        if previous is not None and (previous["status"] == OK or (previous["status"] == FAILED and not retry_failed)):
            outcome.skipped.append(key)
            outcome.records[key] = previous
            if previous["status"] == FAILED:
                outcome.failed.append(key)
            logging.info("%s: %s earlier, skipped", spec.describe(), previous["status"])
            return key
        if dry_run:
            outcome.records[key] = dict(base, status="planned")
            logging.info("%s: would run (key %s)", spec.describe(), key)
            return key
        if config_error is not None:
            record = dict(base, status=FAILED, error="%s: %s" % (type(config_error).__name__, config_error),
                          traceback=None, time=_now(), wall_s=0.0)
            append_record(results_path, record)
            latest[key] = record
            outcome.records[key] = record
            outcome.failed.append(key)
            logging.error("%s: invalid configuration: %s", spec.describe(), record["error"])
            return key
        append_record(results_path, dict(base, status=STARTED, time=_now()))
        logging.info("%s: running (key %s)", spec.describe(), key)
        try:
            summary = train_fn(config)
        except KeyboardInterrupt:
            raise
        except stop_exceptions:
            raise
        except Exception as error:  # noqa: BLE001 - one failed run must not stop the grid
            record = dict(base, status=FAILED, error="%s: %s" % (type(error).__name__, error),
                          traceback=traceback.format_exc(limit=8)[-4000:], time=_now(),
                          wall_s=time.time() - started)
            outcome.failed.append(key)
            logging.error("%s: failed: %s", spec.describe(), record["error"])
        else:
            record = dict(base, status=OK, time=_now(), wall_s=time.time() - started, **_summary_fields(summary))
            logging.info("%s: ok, validation %s %s, test gauc %s (%.0f s)", spec.describe(), select_metric,
                         _format_number(_metric(record, "validation", select_metric)),
                         _format_number(_metric(record, "test", "gauc")), record["wall_s"])
        append_record(results_path, record)
        latest[key] = record
        outcome.records[key] = record
        outcome.ran.append(key)
        return key

    for cell in cells:
        chosen = NO_CANDIDATE
        if candidates:
            best_value, best_candidate = None, None
            keys = []
            for candidate in candidates:
                key = execute(RunSpec(cell, PHASE_TUNE, candidate, tune_seed))
                keys.append(key)
                record = outcome.records[key]
                value = _metric(record, "validation", select_metric) if record["status"] == OK else None
                if _better(select_metric, value, best_value):
                    best_value, best_candidate = value, candidate
            outcome.tune_keys[cell.label] = keys
            if best_candidate is None:
                outcome.tuned[cell.label] = None
                outcome.final_keys[cell.label] = []
                if not dry_run:
                    logging.error("%s: no tuning run succeeded; its final runs are not run", cell.label)
                    continue
                best_candidate = candidates[0]
            chosen = best_candidate
            outcome.tuned[cell.label] = chosen.label
        outcome.final_keys[cell.label] = [execute(RunSpec(cell, PHASE_FINAL, chosen, seed)) for seed in seeds]
    return outcome


def _config_dict(config: Any) -> Dict[str, Any]:
    if dataclasses.is_dataclass(config):
        return json.loads(json.dumps(dataclasses.asdict(config), default=_json_default))
    return json.loads(json.dumps(dict(config), default=_json_default))


def _summary_fields(summary: Dict[str, Any]) -> Dict[str, Any]:
    def metrics(split):
        values = summary.get(split) or {}
        return {name: values.get(name) for name in ("gauc", "auc", "logloss", "accuracy", "samples") if name in values}

    return {
        "validation": metrics("validation"),
        "test": metrics("test"),
        "best_step": summary.get("best_step"),
        "steps": summary.get("steps"),
        "samples_per_s": summary.get("samples_per_s"),
        "num_parameters": summary.get("num_parameters"),
        "platform": summary.get("platform"),
        "replicas": summary.get("replicas"),
    }


def _metric(record: Dict[str, Any], split: str, name: str) -> Optional[float]:
    value = (record.get(split) or {}).get(name)
    return float(value) if value is not None else None


def _format_number(value: Optional[float]) -> str:
    return "n/a" if value is None else "%.5f" % value


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


class RegularizationNotApplied(RuntimeError):
    """The config asks for regularisation but the train step was built without it."""


class _RegularizationCheck:
    """A Trainer hook that fails the run at its first host call if no regularised train step was traced."""

    def __init__(self, traces_before: int):
        self._before = traces_before
        self._checked = False

    def on_train_call(self, trainer: Any, record: Dict[str, Any]) -> None:
        del trainer, record
        if self._checked:
            return
        self._checked = True
        from din_jax.train import step as train_lib

        if train_lib.TRACE_COUNTS.get("regularized", 0) == self._before:
            raise RegularizationNotApplied(
                "--mba_lambda/--l2 were set but the train step applies no regularisation: the Trainer must pass "
                "regularization=regularization_for(config, source) to make_p_train_chunk")


def train_and_check(config: Any, train_fn: Optional[Callable[..., Dict[str, Any]]] = None) -> Dict[str, Any]:
    """Trains a config (``din_jax.train.loop.train_and_evaluate`` by default), checking requested regularisation.

    Raises:
      RegularizationNotApplied: the config asks for ``mba_lambda`` or ``l2``
        but no train step with a regularisation term was traced (checked at
        the first host call, so little time is lost): the results would
        otherwise be those of an unregularised model under the wrong name.
    """
    from din_jax.train import step as train_lib

    if train_fn is None:
        from din_jax.train.loop import train_and_evaluate as train_fn
    wanted = getattr(config, "mba_lambda", 0.0) > 0 or getattr(config, "l2", 0.0) > 0
    # The check counts traces of train_lib.make_train_step (the dense-update step).
    if not wanted or getattr(config, "embedding_updates", "dense") != "dense":
        return train_fn(config)
    check = _RegularizationCheck(train_lib.TRACE_COUNTS.get("regularized", 0))
    summary = train_fn(config, hooks=[check])
    check.on_train_call(None, {})  # a run with no training call at all
    return summary


# ----------------------------------------------------------------------------
# Aggregation, tables, chart
# ----------------------------------------------------------------------------

METRICS = (("test", "gauc"), ("test", "auc"), ("test", "logloss"), ("validation", "gauc"))


def mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value; None for none)."""
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    if len(values) == 1:
        return values[0], 0.0
    return float(np.mean(values)), float(np.std(values, ddof=1))


def summarize(outcome: GridOutcome, baseline: Optional[str] = "base") -> List[Dict[str, Any]]:
    """One row per cell: mean ± std over its final runs, RelaImpr of test GAUC against ``baseline``.

    A cell's row counts its ok and failed runs; metrics are over the ok ones.
    RelaImpr is None for the baseline itself, or when the baseline has no
    successful run in this grid.
    """
    rows = []
    for cell in outcome.cells:
        records = [outcome.records[key] for key in outcome.final_keys.get(cell.label, []) if key in outcome.records]
        ok = [r for r in records if r["status"] == OK]
        row: Dict[str, Any] = {
            "label": cell.label,
            "runs_ok": len(ok),
            "runs_failed": sum(1 for r in records if r["status"] == FAILED),
            "runs_missing": len(outcome.final_keys.get(cell.label, [])) - len(ok)
            - sum(1 for r in records if r["status"] == FAILED),
            "tuned": outcome.tuned.get(cell.label),
            "seeds": [r["seed"] for r in ok],
        }
        for split, name in METRICS:
            row["%s_%s" % (split, name)] = mean_std([_metric(r, split, name) for r in ok])
        row["best_step"] = mean_std([r.get("best_step") for r in ok])[0]
        row["samples_per_s"] = mean_std([r.get("samples_per_s") for r in ok])[0]
        row["wall_s"] = mean_std([r.get("wall_s") for r in ok])[0]
        rows.append(row)
    base_row = next((row for row in rows if row["label"] == baseline), None)
    base_gauc = base_row["test_gauc"][0] if base_row else None
    for row in rows:
        gauc = row["test_gauc"][0]
        if base_gauc is None or gauc is None or row is base_row or base_gauc == 0.5:
            row["relaimpr"] = None
        else:
            row["relaimpr"] = compute_relaimpr(gauc, base_gauc)
    return rows


def compare_against(rows: Sequence[Dict[str, Any]], label: str) -> List[Dict[str, Any]]:
    """How row ``label`` compares with every other row on test GAUC.

    ``spread`` is the larger of the two seed standard deviations; ``clear``
    is whether the difference of the means exceeds it.
    """
    target = next((row for row in rows if row["label"] == label), None)
    if target is None or target["test_gauc"][0] is None:
        return []
    out = []
    for row in rows:
        if row is target or row["test_gauc"][0] is None:
            continue
        diff = target["test_gauc"][0] - row["test_gauc"][0]
        spread = max(target["test_gauc"][1] or 0.0, row["test_gauc"][1] or 0.0)
        out.append({"against": row["label"], "difference": diff, "spread": spread, "clear": diff > spread})
    return out


def _pm(pair: Tuple[Optional[float], Optional[float]], digits: int = 4) -> str:
    mean, std = pair
    if mean is None:
        return "n/a"
    return "%.*f ± %.*f" % (digits, mean, digits, std)


def format_markdown(rows: Sequence[Dict[str, Any]], baseline: Optional[str] = "base") -> str:
    """The results table in Markdown (mean ± sample std over seeds)."""
    header = ["configuration", "runs", "tuned", "test GAUC", "test AUC", "test logloss", "validation GAUC",
              "RelaImpr vs %s (GAUC)" % baseline, "best step", "samples/s", "s/run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        runs = "%d" % row["runs_ok"]
        if row["runs_failed"]:
            runs += " (%d failed)" % row["runs_failed"]
        if row["runs_missing"] > 0:
            runs += " (%d missing)" % row["runs_missing"]
        relaimpr = "—" if row["label"] == baseline else ("n/a" if row["relaimpr"] is None else "%+.2f%%" % row["relaimpr"])
        cells = [
            row["label"], runs, row["tuned"] or "—", _pm(row["test_gauc"]), _pm(row["test_auc"]),
            _pm(row["test_logloss"]), _pm(row["validation_gauc"]), relaimpr,
            "n/a" if row["best_step"] is None else "%.0f" % row["best_step"],
            "n/a" if row["samples_per_s"] is None else "%.0f" % row["samples_per_s"],
            "n/a" if row["wall_s"] is None else "%.0f" % row["wall_s"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("label", "runs_ok", "runs_failed", "tuned", "test_gauc_mean", "test_gauc_std", "test_auc_mean",
               "test_auc_std", "test_logloss_mean", "test_logloss_std", "validation_gauc_mean",
               "validation_gauc_std", "relaimpr_gauc_percent", "best_step", "samples_per_s", "wall_s", "seeds")


def format_csv(rows: Sequence[Dict[str, Any]]) -> str:
    """The results table as CSV (one column per mean and std)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        values = [row["label"], row["runs_ok"], row["runs_failed"], row["tuned"] or ""]
        for split, name in METRICS:
            mean, std = row["%s_%s" % (split, name)]
            values += ["" if mean is None else "%.6f" % mean, "" if std is None else "%.6f" % std]
        values += ["" if row["relaimpr"] is None else "%.4f" % row["relaimpr"],
                   "" if row["best_step"] is None else "%.0f" % row["best_step"],
                   "" if row["samples_per_s"] is None else "%.0f" % row["samples_per_s"],
                   "" if row["wall_s"] is None else "%.1f" % row["wall_s"],
                   " ".join(str(seed) for seed in row["seeds"])]
        writer.writerow(values)
    return buffer.getvalue()


def plot_chart(rows: Sequence[Dict[str, Any]], path: str, title: str = "") -> bool:
    """A bar chart of test GAUC (mean, error bars ± std) as PNG.

    Returns:
      False (and writes nothing) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.warning("matplotlib is not installed: no chart written to %s", path)
        return False
    shown = [row for row in rows if row["test_gauc"][0] is not None]
    labels = [row["label"] for row in shown]
    means = [row["test_gauc"][0] for row in shown]
    stds = [row["test_gauc"][1] for row in shown]
    figure, axes = plt.subplots(figsize=(max(4.0, 0.9 * len(shown) + 1.5), 3.6))
    positions = np.arange(len(shown))
    axes.bar(positions, means, yerr=stds, capsize=4, color="#4c72b0", edgecolor="black", linewidth=0.5)
    axes.set_xticks(positions)
    axes.set_xticklabels(labels, rotation=30, ha="right")
    axes.set_ylabel("test GAUC (mean ± std over seeds)")
    if means:
        low = min(m - s for m, s in zip(means, stds))
        high = max(m + s for m, s in zip(means, stds))
        margin = max(0.01, 0.15 * (high - low))
        axes.set_ylim(max(0.0, low - margin), min(1.0, high + margin))
    if title:
        axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def format_failures(outcome: GridOutcome) -> str:
    """Markdown list of the grid's failed and interrupted runs (empty string if none)."""
    lines = []
    for key in sorted(set(outcome.failed)):
        record = outcome.records.get(key, {})
        lines.append("- `%s` %s (%s, seed %s): %s" % (key, record.get("cell"), record.get("phase"),
                                                      record.get("seed"), record.get("error")))
    for key in sorted(set(outcome.interrupted) - set(outcome.failed)):
        record = outcome.records.get(key, {})
        lines.append("- `%s` %s (seed %s): interrupted in an earlier invocation, run again (now %s)"
                     % (key, record.get("cell"), record.get("seed"), record.get("status")))
    return "\n".join(lines) + ("\n" if lines else "")


def write_reports(outcome: GridOutcome, output_prefix: str, baseline: Optional[str] = "base",
                  title: str = "", highlight: Optional[str] = None) -> Dict[str, str]:
    """Writes ``<prefix>.md``, ``<prefix>.csv`` and ``<prefix>.png``; returns the paths written."""
    rows = summarize(outcome, baseline)
    directory = os.path.dirname(os.path.abspath(output_prefix))
    os.makedirs(directory, exist_ok=True)
    markdown = format_markdown(rows, baseline)
    if highlight:
        comparison = compare_against(rows, highlight)
        if comparison:
            markdown += "\n%s against each other configuration (test GAUC; spread = the larger seed std):\n\n" % highlight
            for item in comparison:
                markdown += "- vs %s: %+.4f (spread %.4f): %s\n" % (
                    item["against"], item["difference"], item["spread"],
                    "better by more than the spread" if item["clear"] else "within the spread" if item["difference"] > 0
                    else "not better")
    failures = format_failures(outcome)
    if failures:
        markdown += "\nFailed or interrupted runs:\n\n" + failures
    paths = {"markdown": output_prefix + ".md", "csv": output_prefix + ".csv"}
    with open(paths["markdown"], "w", encoding="utf-8") as handle:
        handle.write(markdown)
    with open(paths["csv"], "w", encoding="utf-8") as handle:
        handle.write(format_csv(rows))
    if plot_chart(rows, output_prefix + ".png", title):
        paths["chart"] = output_prefix + ".png"
    return paths
