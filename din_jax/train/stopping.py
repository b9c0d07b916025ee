"""Stopping a run cleanly: stop requests, signals, and one decision shared by every process.

A stop is asked for by a signal or ``StopControl.request_stop``; the loop acts on it between host calls, where
it can write a checkpoint. In a multi-process run every process must stop at the same call, or the others would
wait forever in the next gradient collective.
"""

import signal
import threading
from typing import Any, Callable, Dict, Optional

import jax
import numpy as np
from absl import logging


class TrainingInterrupted(Exception):
    """Training stopped early on request; ``step`` trained, ``checkpoint`` holding it (or None), ``signum``."""

    def __init__(self, message: str, step: int, checkpoint: Optional[str], signum: Optional[int] = None):
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint
        self.signum = signum


class TrainingAborted(TrainingInterrupted, KeyboardInterrupt):
    """A second signal stopped training at once, without a checkpoint.

    Also a ``KeyboardInterrupt``, so that no ``except Exception`` swallows it.
    """


class StopControl:
    """The run's stop request (``request``: reason and signal, or None) and its agreement across processes."""

    def __init__(self, num_local_devices: int, process_index: int, process_count: int):
        self.request: Optional[Dict[str, Any]] = None
        self._devices = num_local_devices
        self._process_index = process_index
        self._process_count = process_count
        self._p_sum = None

    def request_stop(self, reason: str = "a stop request", signum: Optional[int] = None) -> None:
        """Safe from a signal handler or another thread: it only sets a flag."""
        if self.request is None:
            self.request = {"reason": reason, "signum": signum}

    def agreed(self) -> bool:
        """Whether to stop at this call boundary; every process decides the same.

        With several processes, each contributes its request to a pmapped sum (the collective the train program
        already uses); a process that had none adopts the highest one's reason.
        """
        if self._process_count == 1:
            return self.request is not None
        if self._p_sum is None:
            self._p_sum = jax.pmap(lambda codes: jax.lax.psum(codes, "processes"), axis_name="processes")
        mine = self.request
        # (process + 1) * 256 + signal number in the process's own slot; psum gathers every process's (the IPU has
        # no pmax), and the highest code is the highest process that asked, with its signal.
        code = (self._process_index + 1) * 256 + (mine["signum"] or 0) if mine is not None else 0
        local = np.zeros((self._devices, self._process_count), np.int32)
        local[0, self._process_index] = code
        agreed = int(np.asarray(self._p_sum(local))[0].max())
        if not agreed:
            return False
        if mine is None:
            signum = agreed % 256 or None
            name = signal.Signals(signum).name if signum else "a stop request"
            self.request = {"reason": "%s to process %d" % (name, agreed // 256 - 1), "signum": signum}
        return True


class SignalHandlers:
    """SIGINT/SIGTERM ask ``control`` to stop; a second one raises ``abort(name, signum)`` at once.

    The previous handlers come back on exit. Nothing is installed outside the main thread, where Python cannot.
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, control: StopControl, abort: Callable[[str, int], BaseException]):
        self._control = control
        self._abort = abort
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        del frame
        name = signal.Signals(signum).name
        if self._control.request is not None:
            raise self._abort(name, signum)
        logging.warning(
            "%s received: stopping after the current call and saving a checkpoint (send it again to stop at once)", name
        )
        self._control.request_stop(name, signum)

    def __enter__(self) -> "SignalHandlers":
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                signum = getattr(signal, name)
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}
