"""Stopping a run cleanly: stop requests, signals, and one decision shared by every process.

A stop is asked for by a signal or ``StopControl.request_stop``; the loop acts on it between host calls, where
it can write a checkpoint. In a multi-process run every process must stop at the same call, or the others would
wait forever in the next gradient collective.
"""

import signal
import threading
from typing import Any, Callable, Dict, List, Optional

import jax
import numpy as np
from absl import logging

from din_jax.train.step import NonFiniteLossError


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


def early_stop_message(history: List[Dict[str, Any]], best_step: int, config: Any, step: int) -> Optional[str]:
    """Why training stops early, once ``config.early_stop_patience`` evaluations in a row have not beaten step
    ``best_step``'s validation metric; None before (or with a patience of 0)."""
    since = sum(1 for record in history if record["step"] > best_step)
    if config.early_stop_patience <= 0 or since < config.early_stop_patience:
        return None
    message = "early stop at step %d: %d evaluations without a better validation %s than step %d's"
    return message % (step, since, config.select_metric, best_step)


def halted_error(step: int, losses: np.ndarray, first: int, epoch: int, config: Any) -> NonFiniteLossError:
    """The error of a call whose program skipped the update of ``step`` and every later one (``guarded_update``):
    the state is that of ``step - 1``. ``losses``: the call's, of steps ``first + 1`` on."""
    loss = losses[step - first - 1]
    what = "training loss became %s" % loss if not np.isfinite(loss) else "the gradients became non-finite"
    message = "%s at step %d (epoch %d); lower --learning_rate or set --clip_norm%s"
    return NonFiniteLossError(message % (what, step, epoch, loss_scaling_hint(config, ", or ")), step - 1)


def loss_scaling_hint(config: Any, before: str) -> str:
    """With scaled float16 gradients an overflow is as likely a cause as a high learning rate."""
    scale = config.effective_loss_scaling()
    if config.data_type != "float16" or scale <= 1:
        return ""
    return "%slower --loss_scaling (now %g; float16 overflows above 65504)" % (before, scale)


# A call's mean training loss this far above chance (log 2 = 0.69 for balanced labels) means the run diverges.
DIVERGING_LOSS = 10.0


def divergence_warning(loss: float, step: int, warned: bool) -> bool:
    """Warns (once: ``warned``) when a finite training loss explodes; returns whether it has warned."""
    if warned or not loss > DIVERGING_LOSS:
        return warned
    logging.warning(
        "training loss %.3g at step %d, far above chance (0.69): the run is diverging; lower --learning_rate or "
        "set --clip_norm",
        loss,
        step,
    )
    return True
