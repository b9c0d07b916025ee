"""Progress: a tqdm bar on a terminal, plain throttled lines on stderr otherwise.

Two kinds of work report progress: streams with a known size (bytes of a
file, entries of a list) through ``progress``, and vectorised steps made of a
few stages (``stages``). On a terminal with tqdm installed both draw a bar.
Without a terminal (a log file, CI) or without tqdm (the IPU lane, tqdm is in
the ``[watch]`` extra) they write a line to stderr at most every
``LOG_INTERVAL_S`` seconds while the work runs, and one closing line for work
that took at least ``LOG_MIN_S`` seconds, so a log shows where a long build
spends its time and a small build stays quiet.

``DATA_PREP_PROGRESS`` overrides the choice: ``bar``, ``log`` or ``off``.
"""

import contextlib
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, TextIO

try:
    from tqdm import tqdm as _tqdm
except ImportError:  # the IPU lane has no tqdm
    _tqdm = None

LOG_INTERVAL_S = 10.0
LOG_MIN_S = 1.0
_MODES = ("bar", "log", "off")


def _mode() -> str:
    chosen = os.environ.get("DATA_PREP_PROGRESS", "").strip().lower()
    if chosen in _MODES:
        return "log" if chosen == "bar" and _tqdm is None else chosen
    stream = sys.stderr
    on_terminal = stream is not None and hasattr(stream, "isatty") and stream.isatty()
    return "bar" if on_terminal and _tqdm is not None else "log"


def _amount(value: float, unit: str, unit_scale: bool) -> str:
    if not unit_scale:
        return f"{value:,.0f} {unit}"
    for prefix in ("", "k", "M", "G", "T"):
        if abs(value) < 1000 or prefix == "T":
            return f"{value:.0f} {prefix}{unit}" if not prefix else f"{value:.1f} {prefix}{unit}"
        value /= 1000.0
    return f"{value:.1f} {unit}"  # pragma: no cover


class LogProgress:
    """The part of tqdm's interface the pipeline uses, as throttled plain lines."""

    def __init__(
        self,
        iterable: Optional[Iterable[Any]] = None,
        total: Optional[float] = None,
        desc: str = "",
        unit: str = "it",
        unit_scale: bool = False,
        initial: float = 0,
        stream: Optional[TextIO] = None,
        interval: Optional[float] = None,
        min_seconds: Optional[float] = None,
        clock: Callable[[], float] = time.monotonic,
        **unused,
    ):
        del unused  # tqdm layout options (position, leave, ...) mean nothing here
        self._iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.unit, self.unit_scale = desc, unit, unit_scale
        self.n = initial
        self._stream = stream
        # Module defaults are read here, not bound at import, so a caller (or a test) can change them.
        self._interval = LOG_INTERVAL_S if interval is None else interval
        self._min_seconds = LOG_MIN_S if min_seconds is None else min_seconds
        self._clock = clock
        self._start = self._last = clock()
        self._postfix = ""
        self._closed = False

    def _write(self, text: str) -> None:
        stream = self._stream or sys.stderr
        if stream is None:
            return
        try:
            stream.write(f"[data_prep] {self.desc}: {text}\n")
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not stop a build
            pass

    def _describe(self) -> str:
        if self.unit == "stage" and self.total:
            return f"stage {min(int(self.n) + 1, int(self.total))} of {int(self.total)}" + (
                f" ({self._postfix})" if self._postfix else ""
            )
        done = _amount(self.n, self.unit, self.unit_scale)
        if self.total:
            text = f"{100.0 * self.n / self.total:.0f}% ({done} of {_amount(self.total, self.unit, self.unit_scale)})"
        else:
            text = done
        return text + (f", {self._postfix}" if self._postfix else "")

    def _maybe_log(self) -> None:
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self._write(f"{self._describe()} after {now - self._start:.0f} s")

    def __iter__(self) -> Iterator[Any]:
        for value in self._iterable if self._iterable is not None else ():
            yield value
            self.update(1)
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        self._maybe_log()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        del refresh
        self._postfix = text
        self._maybe_log()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        elapsed = self._clock() - self._start
        # Work cut short (an error on its way up) gets no closing line: the error is the news.
        finished = not self.total or self.n >= self.total
        if finished and elapsed >= self._min_seconds:
            amount = "" if self.unit == "stage" else ", " + _amount(self.n, self.unit, self.unit_scale)
            self._write(f"done{amount} in {elapsed:.1f} s")

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback) -> None:
        del value, traceback
        if kind is not None:
            self._closed = True
        self.close()


class _Off(LogProgress):
    def _write(self, text: str) -> None:
        del text


def progress(iterable: Optional[Iterable[Any]] = None, **kwargs):
    """Returns a tqdm bar on a terminal, else a ``LogProgress`` (same arguments as tqdm)."""
    mode = _mode()
    if mode == "bar":
        kwargs.setdefault("dynamic_ncols", True)
        kwargs.setdefault("leave", False)
        return _tqdm(iterable, **kwargs)
    return (_Off if mode == "off" else LogProgress)(iterable, **kwargs)


class Stages:
    """A step made of named stages (e.g. the vectorised passes of clean + remap).

    ``advance(name)`` marks the previous stage done and names the next one.
    """

    def __init__(self, desc: str, names: Sequence[str], **kwargs):
        self._bar = progress(total=len(names), desc=desc, unit="stage", **kwargs)
        self._started = False

    def advance(self, name: str) -> None:
        if self._started:
            self._bar.update(1)
        self._started = True
        self._bar.set_postfix_str(name)

    def close(self) -> None:
        if self._started:
            self._bar.update(1)
            self._started = False
        self._bar.close()

    def __enter__(self) -> "Stages":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None and isinstance(self._bar, LogProgress):
            self._bar.__exit__(kind, value, traceback)
            return
        self.close()


def stages(desc: str, names: Sequence[str], **kwargs) -> Stages:
    """Returns a ``Stages`` progress for a step of ``names`` (use as a context manager)."""
    return Stages(desc, names, **kwargs)


@contextlib.contextmanager
def stage(desc: str, name: str) -> Iterator[None]:
    """A step of one stage: ``stages(desc, [name])``, in that stage at once."""
    with stages(desc, [name]) as step:
        step.advance(name)
        yield
