"""Observers of a training run: progress display, TensorBoard events, a JSON-lines log of every call.

Observers receive records of the loop's events (listed in ``din_jax.train.loop``), never the loop itself; each
implements the events it needs. Optional packages stay optional: without tqdm the progress display is log lines,
without tensorboardX there are no events.
"""

import json
import math
import os
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from absl import logging

from din_jax.fileio import json_default

try:
    from tqdm import tqdm as _tqdm

    # No monitor thread: our bars refresh on every update, and a daemon thread alive at interpreter shutdown can abort
    # Python 3.8.
    _tqdm.monitor_interval = 0
except ImportError:  # the IPU lane has no tqdm
    _tqdm = None

try:
    from tensorboardX import SummaryWriter as _SummaryWriter
except ImportError:  # the IPU lane has no tensorboardX
    _SummaryWriter = None

TRAIN_LOG_FILE = "train_log.jsonl"
TENSORBOARD_DIR = "tensorboard"
PROGRESS_MODES = ("auto", "bar", "log", "none")
_METRICS = ("gauc", "auc", "logloss", "accuracy")


def tqdm_available() -> bool:
    return _tqdm is not None


def tensorboard_available() -> bool:
    return _SummaryWriter is not None


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return "%d:%02d:%02d" % (hours, rest // 60, rest % 60)


class _BarSafeStream:
    """A stderr stand-in that writes through ``tqdm.write``, so log lines never tear a progress bar."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if text:
            _tqdm.write(text, file=self._stream, end="")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class Heartbeat:
    """Says what the loop is doing whenever it has been silent for ``every`` seconds: a compile, a long host call of
    many device iterations, a large evaluation. A daemon thread; ``set`` names the current activity (None: idle,
    silent), ``stop`` ends it."""

    def __init__(self, every: float = 10.0):
        self.every = every
        self.activity: Optional[str] = None
        self.since = self._said = time.perf_counter()
        self._done = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def set(self, activity: Optional[str]) -> None:
        self.activity, self.since = activity, time.perf_counter()

    def start(self) -> "Heartbeat":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._done.set()

    def _run(self) -> None:
        while not self._done.wait(min(1.0, self.every)):
            # A daemon thread writing to stderr while the interpreter shuts down aborts it (Python 3.8: "could not
            # acquire lock for <stderr> at interpreter shutdown"): once the main thread is gone, say nothing more.
            if sys.is_finalizing() or not threading.main_thread().is_alive():
                return
            now, activity = time.perf_counter(), self.activity
            if activity and now - max(self.since, self._said) >= self.every:
                self._said = now
                logging.info("%s: %.0f s so far", activity, now - self.since)


class ProgressHook:
    """Progress of training and evaluation: tqdm bars on a terminal, log lines elsewhere (docs/WATCHING.md).

    ``mode``: ``bar``, ``log`` (at most one line every ``seconds``), ``none``, or ``auto`` (bar when ``stream``,
    stderr by default, is a terminal and tqdm is installed). While bars are shown, log lines go through
    ``tqdm.write`` and the trainer's per-call lines are left out (``replaces_call_log``). Scoring outside training
    (``experiments/infer.py``) calls ``on_evaluation_begin``, ``on_predict_call`` and ``on_close`` alone.
    """

    def __init__(self, mode: str = "auto", seconds: float = 30.0, stream=None):
        if mode not in PROGRESS_MODES:
            raise ValueError("progress mode %r; choose from %s" % (mode, list(PROGRESS_MODES)))
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
            mode = "bar" if is_tty and _tqdm is not None else "log"
        if mode == "bar" and _tqdm is None:
            logging.warning("--progress bar needs tqdm (pip install tqdm); showing log lines instead")
            mode = "log"
        self.mode = mode
        self.seconds = float(seconds)
        self._epoch_bar = self._eval_bar = None
        self._saved_streams: Optional[Dict[str, Any]] = None
        self._epochs = self._steps_per_epoch = self._epoch_first_step = self._epoch_steps = self._start_step = 0
        self._start_time = self._loss = self._samples_per_s = self._validation = None
        self._last_line = 0.0
        self._evaluation: Optional[Dict[str, Any]] = None

    @property
    def replaces_call_log(self) -> bool:
        return self.mode == "bar"

    def _postfix(self) -> str:
        parts = []
        if self._samples_per_s is not None:
            parts.append("%.0f samples/s" % self._samples_per_s)
        if self._loss is not None:
            parts.append("loss %.4f" % self._loss)
        if self._validation is not None:
            parts.append("val gauc %.4f" % self._validation)
        return ", ".join(parts)

    def on_train_begin(self, record: Dict[str, Any]) -> None:
        self._epochs = record["epochs"]
        self._steps_per_epoch = record["steps_per_epoch"]
        self._start_time = time.perf_counter()
        self._start_step = record["step"]
        self._last_line = self._start_time
        if record.get("validation"):
            self._validation = record["validation"]["gauc"]
        if self.mode == "bar" and self.stream is sys.stderr and self._saved_streams is None:
            # absl's handler keeps its own reference to stderr: route both.
            handler = getattr(logging.get_absl_handler(), "python_handler", None)
            self._saved_streams = {"sys": sys.stderr, "handler": getattr(handler, "stream", None)}
            sys.stderr = _BarSafeStream(self.stream)
            if handler is not None and self._saved_streams["handler"] is self.stream:
                handler.stream = sys.stderr

    def on_epoch_begin(self, record: Dict[str, Any]) -> None:
        self._epoch_first_step = record["step"] - record["done"]
        self._epoch_steps = record["steps"]
        if self.mode != "bar":
            return
        self._close_bar("_epoch_bar")
        desc = "epoch %d/%d" % (record["epoch"], self._epochs)
        options = dict(unit="step", file=self.stream, desc=desc, dynamic_ncols=True, leave=True, smoothing=0.1)
        self._epoch_bar = _tqdm(total=record["steps"], initial=record["done"], **options)
        self._epoch_bar.set_postfix_str(self._postfix(), refresh=False)

    def on_train_call(self, record: Dict[str, Any]) -> None:
        self._loss = record["loss"]
        if not record["includes_compilation"]:
            self._samples_per_s = record["samples_per_s"]
        if self.mode == "bar" and self._epoch_bar is not None:
            self._epoch_bar.set_postfix_str(self._postfix(), refresh=False)
            self._epoch_bar.update(len(record["losses"]))
        elif self.mode == "log":
            self._maybe_log_line(record["step"], record["epoch"])

    def _maybe_log_line(self, step: int, epoch: int, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_line < self.seconds:
            return
        self._last_line = now
        total = self._epochs * self._steps_per_epoch
        done = step - self._start_step
        rate = done / (now - self._start_time) if now > self._start_time else 0.0
        eta = (total - step) / rate if rate > 0 else float("nan")
        percent = int(100 * (step - self._epoch_first_step) / max(self._epoch_steps, 1))
        line = "progress: epoch %d/%d %d%% (step %d of about %d), ETA %s; %s"
        eta = _format_duration(eta)
        logging.info(line, epoch, self._epochs, percent, step, total, eta, self._postfix() or "starting")

    def on_evaluation_begin(self, record: Dict[str, Any]) -> None:
        if self.mode == "log":
            now = time.perf_counter()
            self._evaluation = dict(split=record["split"], total=int(record["samples"]), done=0, start=now)
            self._evaluation["step"] = record.get("step")
            if self._start_time is None:
                # Scoring on its own (no training): the first line after ``seconds``, so a short one stays silent.
                self._last_line = now
            return
        if self.mode != "bar":
            return
        self._close_bar("_eval_bar")
        position = 1 if self._epoch_bar is not None else 0
        options = dict(unit="sample", file=self.stream, dynamic_ncols=True, leave=False, position=position)
        self._eval_bar = _tqdm(total=record["samples"], desc=record["split"], **options)

    def on_predict_call(self, record: Dict[str, Any]) -> None:
        bar = self._eval_bar
        if bar is not None:
            bar.update(max(0, min(record["samples"], bar.total - bar.n)))
        elif self._evaluation is not None:
            self._maybe_log_evaluation_line(record["samples"])

    def _maybe_log_evaluation_line(self, samples: int) -> None:
        evaluation = self._evaluation
        # Padding of the last micro-batches (and a caller's compile-only calls) would count past the split's size.
        evaluation["done"] = min(evaluation["done"] + int(samples), evaluation["total"])
        now = time.perf_counter()
        if now - self._last_line < self.seconds:
            return
        self._last_line = now
        done, total = evaluation["done"], evaluation["total"]
        elapsed = now - evaluation["start"]
        rate = done / elapsed if elapsed > 0 else float("nan")
        eta = (total - done) / rate if rate > 0 else float("nan")
        at_step = " (step %d)" % evaluation["step"] if evaluation["step"] is not None else ""
        percent, eta = int(100 * done / max(total, 1)), _format_duration(eta)
        line = "progress: %s%s %d%% (%d of %d samples), ETA %s; %.0f samples/s"
        logging.info(line, evaluation["split"], at_step, percent, done, total, eta, rate)

    def on_evaluation(self, record: Dict[str, Any]) -> None:
        self._evaluation = None
        self._close_bar("_eval_bar")
        if "validation" in record:
            self._validation = record["validation"]["gauc"]
        if self._epoch_bar is not None:
            self._epoch_bar.set_postfix_str(self._postfix())

    def on_end(self, summary: Dict[str, Any]) -> None:
        self._evaluation = None
        self._close_bar("_eval_bar")

    def _close_bar(self, name: str) -> None:
        bar = getattr(self, name)
        if bar is not None:
            bar.close()
            setattr(self, name, None)

    def on_close(self, record: Dict[str, Any]) -> None:
        self._evaluation = None
        self._close_bar("_eval_bar")
        self._close_bar("_epoch_bar")
        if self._saved_streams is not None:
            handler = getattr(logging.get_absl_handler(), "python_handler", None)
            if handler is not None and handler.stream is sys.stderr:
                handler.stream = self._saved_streams["handler"]
            sys.stderr = self._saved_streams["sys"]
            self._saved_streams = None


class TensorBoardHook:
    """TensorBoard events in ``logdir``, written with tensorboardX (no TensorFlow needed); tags: docs/WATCHING.md.

    A fresh run removes the directory's old event files; a resumed run hides the events after the checkpoint it
    resumed from (``purge_step``).
    """

    def __init__(self, logdir: str, attention_histograms: bool = True, attention_samples: int = 256):
        if _SummaryWriter is None:
            raise ImportError("TensorBoard events need tensorboardX (pip install tensorboardX)")
        self.logdir = logdir
        # The loop then adds the weights of the first attention_samples samples to evaluation records.
        self.wants_attention = attention_histograms
        self.attention_samples = attention_samples
        self.writer = None
        self._chief = True
        self._config: Optional[Dict[str, Any]] = None

    def _open(self, resumed: Optional[int]) -> None:
        if self.writer is not None or not self._chief:
            return
        os.makedirs(self.logdir, exist_ok=True)
        if resumed is None:
            for name in os.listdir(self.logdir):
                if name.startswith("events.out.tfevents."):
                    os.remove(os.path.join(self.logdir, name))
        self.writer = _SummaryWriter(self.logdir, purge_step=(resumed + 1) if resumed else None, flush_secs=30)
        if resumed is None and self._config is not None:
            text = json.dumps(self._config, indent=2, sort_keys=True, default=str)
            self.writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)

    def on_train_begin(self, record: Dict[str, Any]) -> None:
        self._chief, self._config = record.get("chief", True), record.get("config")
        self._open(record["resumed"])

    def on_train_call(self, record: Dict[str, Any]) -> None:
        self._open(None)
        if self.writer is None:
            return
        step = record["step"]
        self.writer.add_scalar("train/loss", record["loss"], step)
        self.writer.add_scalar("train/accuracy", record["accuracy"], step)
        self.writer.add_scalar("train/learning_rate", record["learning_rate"], step)
        if not record["includes_compilation"] and math.isfinite(record["samples_per_s"]):
            self.writer.add_scalar("train/samples_per_s", record["samples_per_s"], step)

    def on_evaluation(self, record: Dict[str, Any]) -> None:
        self._open(None)
        if self.writer is None:
            return
        for name in _METRICS:
            value = (record.get("validation") or {}).get(name)
            if value is not None:
                self.writer.add_scalar("validation/" + name, value, record["step"])
        if record.get("attention") is not None:
            valid_BxT, weights_BxT = record["attention"]
            self.writer.add_histogram("attention/weights", weights_BxT[valid_BxT], record["step"])
            self.writer.add_histogram("attention/weight_sum", weights_BxT.sum(axis=1), record["step"])

    def on_checkpoint(self, record: Dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.flush()

    def on_end(self, summary: Dict[str, Any]) -> None:
        self._open(None)
        if self.writer is None:
            return
        for name in _METRICS:
            value = (summary.get("test") or {}).get(name)
            if value is not None:
                self.writer.add_scalar("test/" + name, value, summary["steps"])
        self.writer.add_scalar("best/step", summary["best_step"], summary["steps"])
        self.writer.flush()

    def on_close(self, record: Dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class TrainLogHook:
    """Appends one JSON line per event to ``path``, flushed as written (rows: docs/WATCHING.md).

    A fresh run starts the file again; a resumed run drops the rows after the step it resumed from (they are trained
    again) and the ``end`` row of the run it continues, so the log reads as that of one uninterrupted run.
    """

    def __init__(self, path: str):
        self.path = path
        self._handle = None
        self._chief = True

    def _open(self, resumed: Optional[int]) -> None:
        if self._handle is not None or not self._chief:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        kept: List[str] = []
        if resumed is not None and os.path.isfile(self.path):
            with open(self.path) as handle:
                for line in handle:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue  # a line cut short by a kill
                    if isinstance(row, dict) and int(row.get("step", 0)) <= resumed and row.get("event") != "end":
                        kept.append(line if line.endswith("\n") else line + "\n")
        with open(self.path + ".tmp", "w") as handle:
            handle.writelines(kept)
        os.replace(self.path + ".tmp", self.path)
        self._handle = open(self.path, "a")

    def _write(self, row: Dict[str, Any]) -> None:
        self._open(None)
        if self._handle is None:
            return
        self._handle.write(json.dumps(row, default=json_default) + "\n")
        self._handle.flush()

    def on_train_begin(self, record: Dict[str, Any]) -> None:
        self._chief = record.get("chief", True)
        self._open(record["resumed"])

    def on_epoch_begin(self, record: Dict[str, Any]) -> None:
        if record["done"] == 0:  # a resumed epoch was logged when it began
            keys = ("step", "epoch", "steps", "positions", "deferred")
            self._write(dict(event="epoch", time=time.time(), **{key: record.get(key) for key in keys}))

    def on_train_call(self, record: Dict[str, Any]) -> None:
        keys = ("step", "epoch", "loss", "accuracy", "learning_rate", "samples_per_s", "includes_compilation")
        row = {key: record[key] for key in keys}
        row["steps"] = len(record["losses"])
        row["time"] = time.time()
        self._write(dict(event="train", **row))

    def on_evaluation(self, record: Dict[str, Any]) -> None:
        row = {key: value for key, value in record.items() if key != "attention"}
        self._write(dict(event="evaluation", time=time.time(), **row))

    def on_checkpoint(self, record: Dict[str, Any]) -> None:
        self._write({"event": "checkpoint", "step": record["step"], "epoch": record["epoch"], "path": record["path"]})

    def on_end(self, summary: Dict[str, Any]) -> None:
        row = {"event": "end", "step": summary["steps"], "best_step": summary["best_step"]}
        self._write(dict(row, validation=summary["validation"], test=summary["test"]))

    def on_close(self, record: Dict[str, Any]) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_train_log(path: str) -> List[Dict[str, Any]]:
    """The rows of a train_log.jsonl (a line cut short by a kill is skipped)."""
    rows = []
    with open(path) as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def make_hooks(
    config, progress="auto", progress_seconds=30.0, tensorboard=True, attention_histograms=True, train_log=True
) -> List[Any]:
    """The usual hooks of a run: progress display, and with ``config.model_path`` TensorBoard and the train log."""
    hooks: List[Any] = []
    if progress != "none":
        hooks.append(ProgressHook(progress, progress_seconds))
    if config.model_path and tensorboard:
        if tensorboard_available():
            hooks.append(TensorBoardHook(os.path.join(config.model_path, TENSORBOARD_DIR), attention_histograms))
        else:
            logging.warning(
                "tensorboardX is not installed: no TensorBoard events (pip install tensorboardX, "
                "or pass --notensorboard)"
            )
    if config.model_path and train_log:
        hooks.append(TrainLogHook(os.path.join(config.model_path, TRAIN_LOG_FILE)))
    return hooks
