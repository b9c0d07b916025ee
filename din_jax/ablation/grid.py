"""Ablation grids: cells, run keys, the JSON-lines results store and the runner (tuning, skip/resume, failures).

A grid is a list of named cells (flag overrides on a base configuration); every cell is tuned alike (the same
candidates, one tuning seed, the best validation metric) and then trained once per seed. Each run appends a
``started`` line, then an ``ok`` or ``failed`` one, keyed by the hash of its resolved ``TrainConfig``. Every record
names the code version (``din_jax.version``) and the hash of the whole configuration; a finished run is reused
only when both match (``reuse_other_versions`` reuses records of other code, with a warning). So re-running a grid
skips finished runs, grids share identical runs, changed code or a changed setting runs again, and a run whose
process died (a dangling ``started``) is reported and run again. ``experiments/ablate.py`` turns flags into cells.
"""

import dataclasses
import datetime
import hashlib
import itertools
import json
import os
import shlex
import time
import traceback
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from absl import logging

from din_jax.config import TrainConfig
from din_jax.fileio import ExclusiveLock, json_default
from din_jax.metrics import is_better
from din_jax.version import code_version, describe

__all__ = (
    "STARTED OK FAILED PHASE_TUNE PHASE_FINAL VOLATILE_FIELDS REGULARIZERS Cell NO_CANDIDATE RunSpec "
    "parse_labelled_overrides parse_regularizer expand_grid default_config_dict compute_run_key config_hash "
    "reusable append_record load_records latest_by_key record_metric GridOutcome run_grid"
).split()

STARTED, OK, FAILED = "started", "ok", "failed"
PHASE_TUNE, PHASE_FINAL = "tune", "final"

# TrainConfig fields that do not change what a run computes: left out of the run key.
VOLATILE_FIELDS = (
    "model_path",
    "log_every",
    "prefetch",
    "donate",
    "eval_micro_batch_size",
    "checkpoint_every",
    "keep_checkpoints",
    "resume",
)

# Regulariser names of the grid axis and the flag each sets (with its default value).
REGULARIZERS = {"none": (), "mba": ("mba_lambda", 0.01), "l2": ("l2", 1e-5), "dropout": ("dropout", 0.5)}


class Cell(NamedTuple):
    """One named configuration of a grid: ``overrides`` are flags, e.g. ``('--model=din', '--activation=dice')``."""

    label: str
    overrides: Tuple[str, ...]


NO_CANDIDATE = Cell("", ())


class RunSpec(NamedTuple):
    """One training run of a grid: a cell, its phase (tune or final), tuning candidate and seed."""

    cell: Cell
    phase: str
    candidate: Cell
    seed: int

    @property
    def overrides(self) -> Tuple[str, ...]:
        return self.cell.overrides + self.candidate.overrides + ("--seed=%d" % self.seed,)

    def describe(self) -> str:
        parts = [self.cell.label] + ([self.candidate.label] if self.candidate.label else [])
        return "%s [%s seed %d]" % (" | ".join(parts), self.phase, self.seed)


def parse_labelled_overrides(text: str) -> Cell:
    """Parses ``'LABEL: --flag=value ...'`` (or just flags, which then are the label); ValueError if malformed."""
    text = text.strip()
    label = ""
    head, sep, tail = text.partition(":")
    if sep and not head.strip().startswith("-"):
        label, text = head.strip(), tail.strip()
    overrides = tuple(shlex.split(text))
    bad = [word for word in overrides if not word.startswith("--")]
    if bad:
        raise ValueError("expected flags such as --model=din in %r, got %s" % (text, bad))
    label = label or " ".join(word[2:] for word in overrides)
    if not label:
        raise ValueError("empty configuration %r" % text)
    return Cell(label, overrides)


def parse_regularizer(text: str) -> Cell:
    """A regulariser of the grid axis: ``none``, ``mba``, ``mba=0.01``, ``l2=1e-5``, ``dropout=0.3``."""
    name, _, value = text.strip().partition("=")
    if name not in REGULARIZERS:
        raise ValueError(
            "unknown regulariser %r; choose from %s (optionally NAME=VALUE)" % (name, sorted(REGULARIZERS))
        )
    if name == "none":
        if value:
            raise ValueError("regulariser 'none' takes no value")
        return Cell("none", ())
    flag, default = REGULARIZERS[name]
    number = float(value) if value else default
    return Cell(name if not value else "%s=%s" % (name, value), ("--%s=%r" % (flag, number),))


def expand_grid(
    variants: Sequence[Cell] = (),
    models: Sequence[str] = (),
    attentions: Sequence[str] = (),
    activations: Sequence[str] = (),
    regularizers: Sequence[str] = (),
) -> List[Cell]:
    """The product of the axes in order (an empty axis is not varied); labels join the parts with `` / ``."""
    axes: List[List[Cell]] = [list(variants)] if variants else []
    for flag, names in (("model", models), ("attention", attentions), ("activation", activations)):
        axes.append([Cell(name, ("--%s=%s" % (flag, name),)) for name in names] or [NO_CANDIDATE])
    axes.append([parse_regularizer(name) for name in regularizers] or [NO_CANDIDATE])
    cells = [
        Cell(
            " / ".join(part.label for part in parts if part.label) or "default",
            tuple(itertools.chain.from_iterable(part.overrides for part in parts)),
        )
        for parts in itertools.product(*axes)
    ]
    labels = [cell.label for cell in cells]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError("grid labels must be unique; repeated: %s" % duplicates)
    return cells


def default_config_dict() -> Dict[str, Any]:
    """``TrainConfig``'s defaults, as JSON values (what ``compute_run_key`` compares against)."""
    return _config_dict(TrainConfig())


def compute_run_key(config_dict: Dict[str, Any], defaults: Optional[Dict[str, Any]] = None) -> str:
    """A short hash of a run's configuration without volatile fields and fields at their ``defaults`` (so that
    a field added to ``TrainConfig`` later, at a default that keeps the old behaviour, keeps the recorded keys)."""
    defaults = defaults or {}
    kept = {
        key: value
        for key, value in config_dict.items()
        if key not in VOLATILE_FIELDS and not (key in defaults and defaults[key] == value)
    }
    text = json.dumps(kept, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def config_hash(config_dict: Dict[str, Any]) -> str:
    """A short hash of a whole resolved configuration (every field)."""
    text = json.dumps(config_dict, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def reusable(record: Dict[str, Any], config_digest: str, version: Dict[str, Any]) -> bool:
    """Whether a finished record was made by this code (same commit, neither dirty) from this configuration."""
    recorded = record.get("code") or {}
    same_code = bool(version.get("commit")) and recorded.get("commit") == version["commit"]
    clean = recorded.get("dirty") is False and version.get("dirty") is False
    return same_code and clean and record.get("config_hash") == config_digest


def append_record(path: str, record: Dict[str, Any]) -> None:
    """Appends one JSON line in one ``O_APPEND`` write, then fsync: a crash leaves the whole line or none."""
    line = (json.dumps(record, sort_keys=True, default=json_default) + "\n").encode("utf-8")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
        if written != len(line):
            raise OSError("short write to %s (%d of %d bytes)" % (path, written, len(line)))
        os.fsync(fd)
    finally:
        os.close(fd)


def load_records(path: str, strict: bool = False) -> List[Dict[str, Any]]:
    """The records of a results file, in order. The grid reads leniently: no file has no records, a torn line is
    skipped with a warning, only ``ablate.py`` records (``key``, ``status``) are kept. ``strict`` (a file to chart)
    keeps every JSON object and raises ``ValueError('FILE:LINE: ...')`` for other lines or a file without rows."""
    if not strict and not os.path.exists(path):
        return []
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                if strict:
                    raise ValueError("%s:%d: not valid JSON (%s)" % (path, number, error)) from None
                logging.warning("%s line %d is not JSON (a torn write?); skipped", path, number)
                continue
            if strict and not isinstance(record, dict):
                raise ValueError("%s:%d: expected a JSON object" % (path, number))
            if strict or (isinstance(record, dict) and "key" in record and "status" in record):
                records.append(record)
    if strict and not records:
        raise ValueError("%s: no results" % path)
    return records


def latest_by_key(
    records: Iterable[Dict[str, Any]], defaults: Optional[Dict[str, Any]] = None
) -> Dict[str, Dict[str, Any]]:
    """The last record of each run key, in order of first appearance; a row without a key is a run of its own.
    With ``defaults``, keys are recomputed from the ``flags`` (records older than a ``TrainConfig`` field match)."""
    latest: Dict[Any, Dict[str, Any]] = {}
    for index, record in enumerate(records):
        recompute = defaults is not None and isinstance(record.get("flags"), dict)
        key = compute_run_key(record["flags"], defaults) if recompute else record.get("key", ("row", index))
        latest[key] = dict(record, key=key)
    return latest


def record_metric(record: Dict[str, Any], split: str, name: str) -> Optional[float]:
    """A record's ``split`` ``name`` metric as a float, or None."""
    value = (record.get(split) or {}).get(name)
    return float(value) if value is not None else None


class GridOutcome(NamedTuple):
    """What ``run_grid`` did. ``final_keys``/``tune_keys``: cell label -> run keys (one per seed / candidate);
    ``records``: run key -> latest record; ``tuned``: cell label -> chosen candidate (None: no tuning run succeeded);
    ``ran``, ``skipped``, ``failed`` (with failures kept without ``retry_failed``), ``interrupted``: run keys."""

    cells: List[Cell]
    final_keys: Dict[str, List[str]]
    tune_keys: Dict[str, List[str]]
    records: Dict[str, Dict[str, Any]]
    tuned: Dict[str, Optional[str]]
    ran: List[str]
    skipped: List[str]
    failed: List[str]
    interrupted: List[str]


def run_grid(
    cells: Sequence[Cell],
    seeds: Sequence[int],
    results_path: str,
    make_config: Callable[[Sequence[str]], Any],
    train_fn: Callable[[Any], Dict[str, Any]],
    candidates: Sequence[Cell] = (),
    tune_seed: int = 0,
    select_metric: str = "gauc",
    retry_failed: bool = True,
    dry_run: bool = False,
    stop_exceptions: Tuple[type, ...] = (),
    reuse_other_versions: bool = False,
) -> GridOutcome:
    """Runs (or skips) every run of a grid, cell by cell, recording each in ``results_path``.

    With ``candidates``, each cell first runs every candidate with ``tune_seed`` and its final runs (one per seed)
    use the best on validation ``select_metric``. ``make_config``: flag overrides -> ``TrainConfig`` (an error
    fails that run only); ``train_fn``: config -> summary (``din_jax.train.loop.train_and_evaluate``).
    ``stop_exceptions`` (and KeyboardInterrupt) stop the grid instead of failing one run. A finished run is skipped
    when ``reusable`` (or, with ``reuse_other_versions``, whatever code made it).
    """
    # One grid at a time per results file: two would run every configuration twice.
    lock = None if dry_run else ExclusiveLock(results_path + ".lock", "--results %s" % results_path).acquire()
    try:
        defaults = default_config_dict()
        version = code_version()
        if version.get("dirty"):
            logging.warning("the code differs from commit %s: these runs cannot be reused later", describe(version))
        latest = latest_by_key(load_records(results_path), defaults)
        outcome = GridOutcome(list(cells), {}, {}, {}, {}, [], [], [], [])

        def finish(key: str, record: Dict[str, Any], into: List[str]) -> str:
            append_record(results_path, record)
            latest[key] = outcome.records[key] = record
            into.append(key)
            return key

        def execute(spec: RunSpec) -> str:
            started = time.time()
            config_dict, config_error, digest = None, None, None
            try:
                config = make_config(spec.overrides)
                config_dict = _config_dict(config)
                key = compute_run_key(config_dict, defaults)
                digest = config_hash(config_dict)
            except Exception as error:  # noqa: BLE001 - a bad configuration fails this run only
                key = "config-" + hashlib.sha256(json.dumps(list(spec.overrides)).encode()).hexdigest()[:16]
                config_error = error
            base = {
                "key": key,
                "cell": spec.cell.label,
                "phase": spec.phase,
                "candidate": spec.candidate.label,
                "seed": spec.seed,
                "overrides": list(spec.overrides),
                "flags": config_dict,
                "config_hash": digest,
                "code": version,
            }
            status = latest[key]["status"] if key in latest else None
            if status in (OK, FAILED) and not reusable(latest[key], digest, version):
                if not reuse_other_versions:
                    status = None  # made by other code (or another configuration of this key): run again
                elif status == OK:
                    logging.warning(
                        "%s: reusing a record of code %s (this is %s)",
                        spec.describe(),
                        describe(latest[key].get("code")),
                        describe(version),
                    )
            if status == STARTED:
                logging.warning(
                    "%s: an earlier invocation died during this run (no end record); running it again", spec.describe()
                )
                outcome.interrupted.append(key)
            if status == OK or (status == FAILED and not retry_failed):
                outcome.skipped.append(key)
                outcome.records[key] = latest[key]
                if status == FAILED:
                    outcome.failed.append(key)
                logging.info("%s: %s earlier, skipped", spec.describe(), status)
                return key
            if dry_run:
                outcome.records[key] = dict(base, status="planned")
                logging.info("%s: would run (key %s)", spec.describe(), key)
                return key
            if config_error is not None:
                error = "%s: %s" % (type(config_error).__name__, config_error)
                logging.error("%s: invalid configuration: %s", spec.describe(), error)
                return finish(
                    key, dict(base, status=FAILED, error=error, traceback=None, time=_now(), wall_s=0.0), outcome.failed
                )
            append_record(results_path, dict(base, status=STARTED, time=_now()))
            logging.info("%s: running (key %s)", spec.describe(), key)
            try:
                summary = train_fn(config)
            except (KeyboardInterrupt, *stop_exceptions):
                raise
            except Exception as error:  # noqa: BLE001 - one failed run must not stop the grid
                record = dict(
                    base,
                    status=FAILED,
                    error="%s: %s" % (type(error).__name__, error),
                    traceback=traceback.format_exc(limit=8)[-4000:],
                    time=_now(),
                    wall_s=time.time() - started,
                )
                outcome.failed.append(key)
                logging.error("%s: failed: %s", spec.describe(), record["error"])
            else:
                record = dict(base, status=OK, time=_now(), wall_s=time.time() - started, **_summary_fields(summary))
                logging.info(
                    "%s: ok, validation %s %s, test gauc %s (%.0f s)",
                    spec.describe(),
                    select_metric,
                    _format_number(record_metric(record, "validation", select_metric)),
                    _format_number(record_metric(record, "test", "gauc")),
                    record["wall_s"],
                )
            return finish(key, record, outcome.ran)

        for cell in cells:
            chosen = NO_CANDIDATE
            if candidates:
                best_value, best_candidate = None, None
                keys = outcome.tune_keys[cell.label] = []
                for candidate in candidates:
                    keys.append(execute(RunSpec(cell, PHASE_TUNE, candidate, tune_seed)))
                    record = outcome.records[keys[-1]]
                    value = record_metric(record, "validation", select_metric) if record["status"] == OK else None
                    if is_better(select_metric, value, best_value):
                        best_value, best_candidate = value, candidate
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
    finally:
        if lock is not None:
            lock.release()


def _config_dict(config: Any) -> Dict[str, Any]:
    value = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return json.loads(json.dumps(value, default=json_default))


def _summary_fields(summary: Dict[str, Any]) -> Dict[str, Any]:
    def metrics(split):
        values = summary.get(split) or {}
        return {name: values.get(name) for name in ("gauc", "auc", "logloss", "accuracy", "samples") if name in values}

    fields = {
        name: summary.get(name)
        for name in ("best_step", "steps", "samples_per_s", "num_parameters", "platform", "replicas")
    }
    return dict(validation=metrics("validation"), test=metrics("test"), **fields)


def _format_number(value: Optional[float]) -> str:
    return "n/a" if value is None else "%.5f" % value


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")
