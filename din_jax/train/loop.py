"""The training loop: train, select the best step on validation, report test once.

``Trainer`` owns the state and the programs; ``hooks`` observe it (logging,
TensorBoard, progress bars, ``din_jax.train.observers``): any object with some of the
methods below, each called as ``method(trainer, record)``:

- ``on_train_begin``: once, before the first call; ``record`` has ``step``,
  ``epoch``, ``epochs``, ``steps_per_epoch`` and ``resumed`` (the step of the
  checkpoint resumed from, or None).
- ``on_epoch_begin``: ``epoch``, ``steps`` (in the epoch), ``done`` (steps of
  it already trained, on resume), ``step``.
- ``on_train_call``: after each host call, when its metrics are on the host:
  ``epoch``, ``step``, ``loss``, ``losses`` (one per micro-batch),
  ``accuracy``, ``learning_rate``, ``samples_per_s``, ``includes_compilation``.
- ``on_evaluation_begin`` / ``on_predict_call``: ``split``, ``samples`` (the
  split's size, then each call's share) for progress bars.
- ``on_evaluation``: ``step``, ``epoch``, ``validation`` metrics; the
  variables evaluated are ``trainer.latest_variables``.
- ``on_checkpoint``: ``path``, ``step``, ``epoch``.
- ``on_end(trainer, summary)``.
- ``on_close``: ``step``; always last, also when training failed or was
  interrupted (``Trainer.train``): release files, close progress bars.

Training checkpoints (``<model_path>/checkpoints/step_N``) hold the whole
``TrainState`` (parameters, optimiser state, Dice statistics, dropout key,
step), the best variables so far, and in their JSON the epoch, the position in
it, the negative sampler's generator state, the evaluation history and the
best-so-far, so that ``resume`` continues exactly: the epoch order is a
function of ``(seed, epoch)``, the calls already done are skipped, and the
result equals that of a run that was never interrupted, bit for bit on CPU.
"""

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import numpy as np
from absl import logging

from din_jax import checkpoint as ckpt
from din_jax.config import ConfigError, TrainConfig, checkpoint_metadata
from din_jax.data.buckets import normalize_buckets, plan_split_chunks
from din_jax.data.pipeline import gather_chunk, plan_chunks, prefetch
from din_jax.fileio import json_default
from din_jax.metrics import is_better
from din_jax.train.evaluation import evaluate_split
from din_jax.train.observers import TENSORBOARD_DIR, TRAIN_LOG_FILE
from din_jax.train.optim import make_learning_rate_schedule, make_optimizer
from din_jax.train.regularization import regularization_for
from din_jax.train.setup import build_model_for, dataset_fingerprint, load_source, vocabulary
from din_jax.train.step import (
    NonFiniteLossError,
    create_train_state,
    make_p_predict_chunk,
    make_p_train_chunk,
    replicate,
    resolve_devices,
    unreplicate_to_host,
)

CHECKPOINTS_DIR = "checkpoints"
SUMMARY_FILE = "summary.json"

# Settings that must equal the checkpoint's for a resumed run to continue the
# same trajectory (the data order, the optimiser state's structure, ...).
# positions_per_pass splits each micro-batch's gradient into parts: the same
# sum in another order, so the parameters would differ in their last bits.
_RESUME_MUST_MATCH = ("seed", "micro_batch_size", "device_iterations", "optimizer", "clip_norm",
                      "resample_negatives", "select_metric", "use_synthetic_data", "mba_lambda", "l2",
                      "embedding_updates", "length_buckets", "positions_per_pass")
# Settings a resumed run may change, with a warning that it no longer
# reproduces an uninterrupted run.
# (--loss_scaling: lowering it is how a float16 run that overflowed goes on.)
_RESUME_MAY_CHANGE = ("learning_rate", "lr_schedule", "lr_decay_steps", "lr_decay_factor", "lr_file",
                      "loss_scaling")
# Settings that never touch the training trajectory but may round validation
# scores differently (another batch shape), and so perhaps pick another best
# step: allowed with a warning, since a resumed job may have less memory.
_RESUME_MAY_CHANGE_EVALUATION = ("eval_micro_batch_size",)


class TrainingInterrupted(Exception):
    """Training stopped early on request (a signal or ``Trainer.request_stop``).

    Attributes:
      step: the last step trained.
      checkpoint: the checkpoint holding it (None without ``model_path``).
      signum: the signal that asked for the stop, or None.
    """

    def __init__(self, message: str, step: int, checkpoint: Optional[str], signum: Optional[int] = None):
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint
        self.signum = signum


class TrainingAborted(TrainingInterrupted, KeyboardInterrupt):
    """A second signal stopped training at once, without a checkpoint.

    A ``TrainingInterrupted`` (so that a program reports it in one line and
    exits with 128 + the signal), and a ``KeyboardInterrupt`` as it was before,
    so that no ``except Exception`` swallows it.
    """


def _canonical(value: Any) -> Any:
    """JSON-normalised value (tuples as lists, numpy scalars as Python), for comparisons."""
    return json.loads(json.dumps(value, default=json_default))


class Trainer:
    """One training run of a TrainConfig on a data source.

    Args:
      config: the run's settings (validated here). With ``resume``, the state
        is restored from the newest checkpoint under
        ``<model_path>/checkpoints`` (a fresh start when there is none).
      source: a ``Dataset`` or ``SyntheticDataset``; loaded from the config
        when None.
      hooks: observers (see the module docstring).

    Raises:
      ConfigError: invalid settings, or a fresh run in a ``model_path`` that
        holds the checkpoints of an unfinished run.
      CheckpointError: the checkpoint to resume from is corrupt or does not
        match the model flags, the data or the training settings.
    """

    def __init__(self, config: TrainConfig, source: Any = None, hooks: Sequence[Any] = ()):
        self.config = config.validate()
        self.source = source if source is not None else load_source(config)
        self.hooks = list(hooks)
        self.vocab = vocabulary(self.source)
        self.data_fingerprint = dataset_fingerprint(self.source)
        self.devices = resolve_devices(config.replicas)
        self.process_index = jax.process_index()
        self.process_count = jax.process_count()
        self._p_stop_code = None  # see _stop_agreed
        if self.process_count > 1 and config.replicas:
            raise ConfigError("--replicas must be 0 (every device) in a multi-process run")
        # Multi-process: the train program spans every process's devices
        # (pmap's default); each process feeds its own slice of each step.
        self.train_devices = None if self.process_count > 1 else self.devices
        self.replicas = len(self.devices) * self.process_count
        self.global_batch = self.replicas * config.micro_batch_size

        splits = self.source.split_names()
        if "train" not in splits:
            raise ConfigError("dataset %s has no training samples" % getattr(self.source, "path", "(synthetic)"))
        self.has_validation = "validation" in splits
        self.has_test = "test" in splits
        if not self.has_validation:
            logging.warning("the dataset has no validation split: the last step is kept (no model selection)")
        self.num_train = self.source.num_samples("train")
        if self.num_train < self.global_batch:
            raise ConfigError("the training split has %d samples, fewer than one global micro-batch (%d replicas x %d)"
                              % (self.num_train, self.replicas, config.micro_batch_size))

        self.step = 0
        self.epoch = 0
        self.history: List[Dict[str, Any]] = []
        self.best: Dict[str, Any] = {"value": None, "step": 0, "validation": None, "variables": None}
        self.throughput = {"samples": 0, "seconds": 0.0, "samples_all": 0, "seconds_all": 0.0}
        self.latest_variables: Optional[Dict[str, Any]] = None
        self.last_checkpoint: Optional[str] = None
        self._last_checkpoint_step: Optional[int] = None
        self.resumed_from: List[int] = []
        self.steps_per_epoch = (self.num_train // self.global_batch)
        self._compiled_shapes = set()
        self._negatives_rng = np.random.default_rng(config.seed)
        self._epoch_rng_state: Optional[Dict[str, Any]] = None
        self._epoch_calls_done = 0
        self._epoch_calls_total = 0
        self._resume_call: Optional[int] = None
        self._next_eval = config.eval_every if config.eval_every > 0 else None
        self._next_checkpoint = config.checkpoint_every if config.checkpoint_every > 0 else None
        self._stop_request: Optional[Dict[str, Any]] = None
        self._began = False
        self._finishing = False
        self._previous_run: List[str] = []
        self._quiet_calls = any(getattr(hook, "replaces_call_log", False) for hook in self.hooks)
        self.checkpoint_root = os.path.join(config.model_path, CHECKPOINTS_DIR) if config.model_path else None

        # Checked before anything is compiled, so that a bad checkpoint fails fast.
        resume_from = self._prepare_run_directory()
        checkpoint = self._load_resumable(resume_from) if resume_from is not None else None

        self.model = build_model_for(config, self.vocab)
        self.eval_model = build_model_for(config, self.vocab, axis_name=None)
        self.schedule = make_learning_rate_schedule(config)
        host_state = create_train_state(self.model, self._make_optimizer(), config.seed, config.max_seq_len)
        self.num_parameters = sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(host_state.params))
        if checkpoint is not None:
            host_state = self._restore(resume_from, checkpoint, host_state)
        self.state = replicate(host_state, self.train_devices)
        self.p_train = make_p_train_chunk(self.model, self.train_devices, donate=config.donate,
                                          regularization=regularization_for(config, self.source),
                                          embedding_updates=config.embedding_updates,
                                          positions_per_pass=config.positions_per_pass,
                                          loss_scale=config.effective_loss_scaling())
        self.p_predict = make_p_predict_chunk(self.eval_model, self.devices, positions_per_pass=config.positions_per_pass)
        logging.info("model %s %s, %d parameters, %d replica(s) on %s, train %d samples, global micro-batch %d",
                     config.model, json.dumps(config.model_config, default=str), self.num_parameters,
                     self.replicas, self.devices[0].platform, self.num_train, self.global_batch)

    def _make_optimizer(self):
        """The optax optimiser, or the sparse-update one (``--embedding_updates sparse``)."""
        if self.config.embedding_updates == "sparse":
            from din_jax.train.sparse_step import make_sparse_optimizer

            return make_sparse_optimizer(self.model, self.config)
        return make_optimizer(self.config)

    # -- hooks ---------------------------------------------------------------

    def _notify(self, event: str, record: Dict[str, Any]) -> None:
        for hook in self.hooks:
            method = getattr(hook, event, None)
            if method is not None:
                method(self, record)

    @property
    def is_chief(self) -> bool:
        """Process 0 writes checkpoints and summaries."""
        return self.process_index == 0

    @property
    def item_category(self) -> Optional[np.ndarray]:
        """The data's item -> category map (saved with every checkpoint, for ranking)."""
        value = getattr(self.source, "item_category", None)
        return None if value is None else np.asarray(value, dtype=np.int32)

    # -- stopping ------------------------------------------------------------

    def request_stop(self, reason: str = "a stop request", signum: Optional[int] = None) -> None:
        """Asks the loop to save a checkpoint and raise ``TrainingInterrupted`` after the current call.

        Safe to call from a signal handler or another thread: it only sets a flag.
        """
        if self._stop_request is None:
            self._stop_request = {"reason": reason, "signum": signum}

    def _stop(self, during: Optional[str] = None) -> None:
        request = self._stop_request
        path = self.last_checkpoint if self._checkpointed_at_step() else self.save_train_checkpoint()
        if path:
            where = "checkpoint %s; continue with --resume" % path
        elif self.checkpoint_root and not self.is_chief:
            where = "process 0 writes checkpoint %s; continue with --resume" % ckpt.step_checkpoint_dir(
                self.checkpoint_root, self.step)
        else:
            where = "nothing saved (no --model_path)"
        raise TrainingInterrupted("training stopped by %s at step %d (epoch %d%s): %s"
                                  % (request["reason"], self.step, self.epoch, ", " + during if during else "", where),
                                  self.step, path, request["signum"])

    def _abort(self, reason: str, signum: Optional[int]) -> TrainingAborted:
        """The exception a second stop request raises at once (from a signal handler)."""
        if self.last_checkpoint:
            where = ("nothing saved after checkpoint %s (step %d); continue with --resume"
                     % (self.last_checkpoint, self._last_checkpoint_step))
        elif self.checkpoint_root:
            where = "no checkpoint was written"
        else:
            where = "nothing saved (no --model_path)"
        return TrainingAborted("training stopped at once by a second %s near step %d (epoch %d): %s"
                               % (reason, self.step, self.epoch, where), self.step, self.last_checkpoint, signum)

    def _stop_agreed(self) -> bool:
        """Whether to stop at this call boundary: every process decides the same.

        One process of a multi-process run may get a signal (Ctrl-C in its
        terminal), or all may get one but at different calls; a process that
        stopped alone would leave the others waiting in the next call's
        gradient collective forever. So at each boundary the processes gather
        their requests (one number per device, only when there are several processes)
        and all stop if any asked, at the same step, with the chief writing
        the checkpoint.
        """
        if self.process_count == 1:
            return self._stop_request is not None
        if self._p_stop_code is None:
            # A pmapped max over every device of every process: the collective
            # the train program itself uses, so it runs wherever training does.
            self._p_stop_code = jax.pmap(lambda code: jax.lax.pmax(code, "processes"), axis_name="processes")
        mine = self._stop_request
        # The highest process that asked, with its signal: (process + 1) * 256 + signal number.
        code = (self.process_index + 1) * 256 + (mine["signum"] or 0) if mine is not None else 0
        local = np.zeros((len(self.devices),), np.int32)
        local[0] = code
        agreed = int(np.asarray(self._p_stop_code(local))[0])
        if not agreed:
            return False
        if mine is None:
            signum = agreed % 256 or None
            name = signal.Signals(signum).name if signum else "a stop request"
            self._stop_request = {"reason": "%s to process %d" % (name, agreed // 256 - 1), "signum": signum}
        return True

    def _stop_if_requested(self, during: str) -> None:
        """Outside the training loop (``finish``): stops at once, the newest checkpoint being at this step."""
        if self._stop_request is not None:
            self._stop(during)

    def _checkpointed_at_step(self) -> bool:
        return self.last_checkpoint is not None and self._last_checkpoint_step == self.step

    def handle_signals(self) -> "_SignalHandlers":
        """A context manager under which SIGINT and SIGTERM call ``request_stop``.

        A second signal raises ``TrainingAborted`` (a ``KeyboardInterrupt``) at
        once (checkpoints are written atomically, so the previous one stays
        good).
        The previous handlers are restored on exit. Does nothing outside the
        main thread, where Python cannot install handlers.
        """
        return _SignalHandlers(self)

    # -- training ------------------------------------------------------------

    def _epoch_plan(self, epoch: int):
        order = np.random.default_rng([self.config.seed, epoch]).permutation(self.num_train)
        if len(normalize_buckets(self.config.length_buckets, self.config.max_seq_len)) > 1:
            plan = plan_split_chunks(self.source, "train", order, self.config.max_seq_len, self.config.length_buckets,
                                     self.replicas, self.config.device_iterations, self.config.micro_batch_size,
                                     drop_remainder=True, shuffle_seed=[self.config.seed, epoch])
        else:
            plan = plan_chunks(order, self.replicas, self.config.device_iterations, self.config.micro_batch_size,
                               drop_remainder=True)
        if self.process_count > 1:
            local = len(self.devices)
            lo = self.process_index * local
            plan = plan._replace(calls=[c[lo:lo + local] for c in plan.calls])
        return plan

    def train(self, handle_signals: bool = True) -> Dict[str, Any]:
        """Trains up to ``config.epochs`` epochs (from where a resumed run stopped), then ``finish``.

        Raises:
          TrainingInterrupted: after a signal or ``request_stop``, once the
            checkpoint is written; also during ``finish``, before the summary.
          TrainingAborted: a second signal, at once, without a checkpoint.
          NonFiniteLossError: the loss became NaN or Inf (checkpoints written
            before stay; none is written after).
        """
        # Around finish() and on_close too: the test evaluation may take
        # minutes, and a signal there must stop as cleanly as one in training.
        with self.handle_signals() if handle_signals else contextlib.nullcontext():
            try:
                self._begin()
                while self.epoch < self.config.epochs:
                    self.train_epoch()
                return self.finish()
            finally:
                self._notify("on_close", {"step": self.step})

    def _begin(self) -> None:
        if self._began:
            return
        self._began = True
        self._clear_previous_run()
        self._notify("on_train_begin", {
            "step": self.step, "epoch": self.epoch, "epochs": self.config.epochs,
            "steps_per_epoch": self.steps_per_epoch,
            "resumed": self.resumed_from[-1] if self.resumed_from else None,
        })

    def train_epoch(self) -> None:
        """One pass over the training split, evaluating every ``eval_every`` steps.

        After a restore, the first call continues the interrupted epoch.
        """
        self._begin()
        self.epoch += 1
        config = self.config
        start_call, self._resume_call = (self._resume_call or 0), None
        plan = self._epoch_plan(self.epoch)
        self._epoch_calls_total = len(plan.calls)
        self._epoch_calls_done = start_call
        remaining = plan.calls[start_call:]
        # The generator state before this epoch's draw: a checkpoint taken
        # inside the epoch restores it and draws the same negatives again.
        self._epoch_rng_state = self._negatives_rng.bit_generator.state
        samples = None
        if config.resample_negatives and remaining:
            samples = self.source.resample_negatives(self._negatives_rng)
        done = sum(int(c.shape[1]) for c in plan.calls[:start_call])
        self._notify("on_epoch_begin", {"epoch": self.epoch, "steps": sum(int(c.shape[1]) for c in plan.calls),
                                        "done": done, "step": self.step})

        seq_lens = (plan.seq_lens or [config.max_seq_len] * len(plan.calls))[start_call:]

        def chunks():
            for indices, seq_len in zip(remaining, seq_lens):  # seq_len: the call's length bucket
                yield gather_chunk(self.source, "train", indices, seq_len, samples=samples)

        # The call in flight: its metrics are fetched only after the next call
        # is dispatched, so the host never stalls the device.
        pending: Optional[Dict[str, Any]] = None
        self._last_done = time.perf_counter()
        for call, (indices, chunk) in enumerate(zip(remaining, prefetch(chunks(), config.prefetch)), start_call):
            k = indices.shape[1]
            shape = (k, int(chunk["hist_item"].shape[-1]))
            self.state, chunk_metrics = self.p_train(self.state, chunk)
            self.step += k
            self._epoch_calls_done = call + 1
            if pending is not None:
                self._drain(pending)
            # The first call of each shape compiles: keep it out of the throughput.
            pending = {"metrics": chunk_metrics, "step": self.step, "samples": k * self.global_batch,
                       "call": call, "compiles": shape not in self._compiled_shapes, "epoch": self.epoch}
            self._compiled_shapes.add(shape)
            if self._next_eval is not None and self.step >= self._next_eval:
                self._drain(pending)
                pending = None
                self.evaluate()
                self._last_done = time.perf_counter()
                while self._next_eval <= self.step:
                    self._next_eval += config.eval_every
            if call + 1 == len(plan.calls):
                break  # the end of the epoch checkpoints and stops below
            due = self._next_checkpoint is not None and self.step >= self._next_checkpoint
            stop = self._stop_agreed()
            if due or stop:
                if pending is not None:
                    self._drain(pending)  # never checkpoint a call whose loss was not checked
                    pending = None
                if due:
                    self.save_train_checkpoint()
                if stop:
                    self._stop()
                self._last_done = time.perf_counter()
        if pending is not None:
            self._drain(pending)
        if not self.history or self.history[-1]["step"] != self.step:
            self.evaluate()
        if not self._checkpointed_at_step():
            self.save_train_checkpoint()
        if self._stop_agreed():
            self._stop()

    def _drain(self, pending: Dict[str, Any]) -> None:
        metrics_host = jax.device_get(pending["metrics"])  # waits for that call
        now = time.perf_counter()
        elapsed, self._last_done = now - self._last_done, now
        if not pending["compiles"]:
            self.throughput["samples"] += pending["samples"]
            self.throughput["seconds"] += elapsed
        # The fallback when every call compiled (an epoch shorter than one call).
        self.throughput["samples_all"] += pending["samples"]
        self.throughput["seconds_all"] += elapsed
        losses = np.asarray(metrics_host["loss"])[0]
        if not np.all(np.isfinite(losses)):
            first_bad = int(np.argmax(~np.isfinite(losses)))
            raise NonFiniteLossError(
                "training loss became %s at step %d (epoch %d); lower --learning_rate or set --clip_norm%s; %s"
                % (losses[first_bad], pending["step"] - len(losses) + first_bad + 1, pending["epoch"],
                   self._loss_scaling_hint(", or "), self._last_good_checkpoint_text()))
        record = {
            "epoch": pending["epoch"],
            "step": pending["step"],
            "loss": float(np.mean(losses)),
            "losses": losses,
            "accuracy": float(np.mean(np.asarray(metrics_host["accuracy"])[0])),
            # The rate of the call's last update: update n (counted from 0) uses schedule(n).
            "learning_rate": float(self.schedule(pending["step"] - 1)),
            "samples_per_s": pending["samples"] / elapsed if elapsed > 0 else float("nan"),
            "includes_compilation": pending["compiles"],
        }
        if pending["call"] % self.config.log_every == 0 and not self._quiet_calls:
            logging.info("epoch %d step %d loss %.5f accuracy %.4f lr %.4g samples/s %.0f%s",
                         record["epoch"], record["step"], record["loss"], record["accuracy"],
                         record["learning_rate"], record["samples_per_s"],
                         " (includes compilation)" if record["includes_compilation"] else "")
        self._notify("on_train_call", record)

    def _loss_scaling_hint(self, before: str) -> str:
        """With scaled float16 gradients an overflow is as likely a cause as a high learning rate."""
        scale = self.config.effective_loss_scaling()
        if self.config.data_type != "float16" or scale <= 1:
            return ""
        return "%slower --loss_scaling (now %g; float16 overflows above 65504)" % (before, scale)

    def _last_good_checkpoint_text(self) -> str:
        if self.last_checkpoint:
            return "the last good checkpoint is %s (step %d)" % (self.last_checkpoint, self._last_checkpoint_step)
        if self.checkpoint_root:
            return "no checkpoint was written before"
        return "no checkpoints (no --model_path)"

    # -- evaluation and selection --------------------------------------------

    def host_variables(self) -> Dict[str, Any]:
        """The current ``params`` and ``batch_stats`` as host arrays."""
        host_state = unreplicate_to_host(self.state)
        return {"params": host_state.params, "batch_stats": host_state.batch_stats}

    def _predict_program(self, split: str) -> Callable:
        """``p_predict`` that also tells the hooks about each call (for progress bars)."""

        def p_predict(variables, chunk):
            if self._finishing:
                self._stop_if_requested("during the final test evaluation")
            out = self.p_predict(variables, chunk)
            self._notify("on_predict_call", {"split": split, "samples": int(np.size(chunk["label"]))})
            return out

        return p_predict

    def _evaluate_split(self, variables: Dict[str, Any], split: str) -> Dict[str, Any]:
        self._notify("on_evaluation_begin", {"split": split, "samples": self.source.num_samples(split),
                                             "step": self.step})
        return evaluate_split(self._predict_program(split), variables, self.source, split, self.devices,
                              self.config)

    def _save_variables(self, name: str, tree: Any, extra: Optional[Dict[str, Any]] = None) -> str:
        arrays = {"item_category": self.item_category} if self.item_category is not None else None
        return ckpt.save_checkpoint(os.path.join(self.config.model_path, name), tree,
                                    checkpoint_metadata(self.config, self.vocab, self.step, extra,
                                                        data_fingerprint=self.data_fingerprint), arrays=arrays)

    def evaluate(self) -> Dict[str, Any]:
        """Scores the validation split and keeps the best step (and its checkpoint)."""
        variables = self.host_variables()
        self.latest_variables = variables
        record: Dict[str, Any] = {"step": self.step, "epoch": self.epoch}
        if self.has_validation:
            result = self._evaluate_split(variables, "validation")
            record["validation"] = result
            logging.info("epoch %d step %d validation gauc %.5f auc %.5f logloss %.5f",
                         self.epoch, self.step, result["gauc"], result["auc"], result["logloss"])
            if is_better(self.config.select_metric, result[self.config.select_metric], self.best["value"]):
                self.best.update(value=result[self.config.select_metric], step=self.step, validation=result,
                                 variables=variables)
                if self.config.model_path and self.is_chief:
                    self._save_variables("best", variables, {"validation": result})
        else:
            self.best.update(step=self.step, variables=variables)
        self.history.append(record)
        self._notify("on_evaluation", record)
        return record

    # -- checkpoints and resuming --------------------------------------------

    def save_train_checkpoint(self) -> Optional[str]:
        """Writes ``<model_path>/checkpoints/step_<step>`` and keeps the newest ``keep_checkpoints``.

        Call it between host calls, once the last call's loss was checked.

        Returns:
          The checkpoint directory, or None (no ``model_path``, or not the
          chief process).

        Raises:
          NonFiniteLossError: a parameter is NaN or Inf (the last update
            diverged); nothing is written, the previous checkpoints stay.
        """
        if not self.checkpoint_root or not self.is_chief:
            return None
        host_state = unreplicate_to_host(self.state)
        for leaf in jax.tree_util.tree_leaves((host_state.params, host_state.batch_stats)):
            if not np.all(np.isfinite(np.asarray(leaf))):
                raise NonFiniteLossError("the parameters became non-finite by step %d (epoch %d)%s; %s"
                                         % (self.step, self.epoch, self._loss_scaling_hint("; "),
                                            self._last_good_checkpoint_text()))
        tree: Dict[str, Any] = {"state": host_state}
        if self.best["variables"] is not None:
            tree["best"] = self.best["variables"]
        complete = self._epoch_calls_done >= self._epoch_calls_total
        train_meta = {
            "epoch": self.epoch,
            "epoch_calls_done": self._epoch_calls_done,
            "epoch_complete": bool(complete),
            # Inside an epoch: the state before its negatives were drawn (drawn
            # again on resume); at its end: the state after.
            "negatives_rng": self._negatives_rng.bit_generator.state if complete else self._epoch_rng_state,
            "history": self.history,
            "best": {"value": self.best["value"], "step": self.best["step"], "validation": self.best["validation"]},
            "next_eval": self._next_eval,
            "throughput": self.throughput,
            "replicas": self.replicas,
            "num_train": self.num_train,
            "resumed_from": self.resumed_from,
            "config": self.config.to_dict(),
        }
        arrays = {"item_category": self.item_category} if self.item_category is not None else None
        path = ckpt.save_checkpoint(ckpt.step_checkpoint_dir(self.checkpoint_root, self.step), tree,
                                    checkpoint_metadata(self.config, self.vocab, self.step, {"train": train_meta},
                                                        data_fingerprint=self.data_fingerprint),
                                    arrays=arrays)
        ckpt.prune_step_checkpoints(self.checkpoint_root, self.config.keep_checkpoints)
        self.last_checkpoint, self._last_checkpoint_step = path, self.step
        if self._next_checkpoint is not None:
            every = self.config.checkpoint_every
            self._next_checkpoint = (self.step // every + 1) * every
        logging.info("checkpoint %s", path)
        self._notify("on_checkpoint", {"path": path, "step": self.step, "epoch": self.epoch})
        return path

    def _prepare_run_directory(self) -> Optional[str]:
        """The checkpoint to resume from, if any; notes what a fresh run replaces.

        A fresh run replaces a finished run (its summary.json counts at least
        the steps of its newest checkpoint), or outputs without checkpoints;
        the checkpoints of an unfinished run are never removed. The removal
        itself waits for ``_begin`` (``_clear_previous_run``), so that a
        start refused for other reasons deletes nothing.
        """
        root = self.checkpoint_root
        if root is None:
            return None
        if self.is_chief:
            ckpt.remove_temporaries(root)
            ckpt.remove_temporaries(self.config.model_path)
        existing = ckpt.list_step_checkpoints(root)
        if self.config.resume:
            if existing:
                return existing[-1][1]
            where = root if os.path.isdir(self.config.model_path) else "%s (it does not exist)" % self.config.model_path
            logging.warning("--resume: no checkpoint under %s; starting from scratch", where)
            return None
        if not self.is_chief:
            return None  # the chief alone manages the directory (and would race with us)
        if existing:
            finished_steps = -1
            try:
                with open(os.path.join(self.config.model_path, SUMMARY_FILE)) as handle:
                    finished_steps = int(json.load(handle).get("steps", -1))
            except (OSError, ValueError, TypeError, AttributeError):
                pass
            if finished_steps < existing[-1][0]:
                raise ConfigError("--model_path %s holds the checkpoints of an unfinished run (newest: step %d): "
                                  "pass --resume to continue it, or delete %s to start again"
                                  % (self.config.model_path, existing[-1][0], root))
        self._previous_run = self._previous_run_outputs()
        return None

    def _previous_run_outputs(self) -> List[str]:
        """What an earlier run left in ``model_path`` that a fresh run must not leave beside its own outputs.

        A stale ``best/`` would be scored by infer.py and ``Predictor`` as if
        it were this run's (this run writes one only when validation improves,
        and none without a validation split); stale figures, events and log
        lines would be mistaken for this run's too. ``plots/`` and the event
        files go only when the directory holds a run's checkpoint or summary,
        so that a directory of other files is never emptied.
        """
        model_path = self.config.model_path
        outputs = []
        for name in ("best", "last"):
            if os.path.isfile(os.path.join(model_path, name, ckpt.META_FILE)):
                outputs.append(os.path.join(model_path, name))
        for name in (CHECKPOINTS_DIR, SUMMARY_FILE):
            if os.path.exists(os.path.join(model_path, name)):
                outputs.append(os.path.join(model_path, name))
        if not outputs:
            return []
        for name in ("plots", TRAIN_LOG_FILE, TRAIN_LOG_FILE + ".tmp"):
            if os.path.exists(os.path.join(model_path, name)):
                outputs.append(os.path.join(model_path, name))
        events = os.path.join(model_path, TENSORBOARD_DIR)
        if os.path.isdir(events):
            outputs.extend(os.path.join(events, name) for name in sorted(os.listdir(events))
                           if name.startswith("events.out.tfevents"))
        return outputs

    def _clear_previous_run(self) -> None:
        outputs, self._previous_run = self._previous_run, []
        if not outputs:
            return
        logging.info("starting a new run in %s: removing the outputs of the run before it (%s)",
                     self.config.model_path, ", ".join(os.path.relpath(p, self.config.model_path) for p in outputs))
        # The summary goes first: without it a half-cleared directory never
        # passes for a finished run.
        for path in sorted(outputs, key=lambda p: os.path.basename(p) != SUMMARY_FILE):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.remove(path)

    def _load_resumable(self, path: str):
        """The verified arrays and metadata of the checkpoint to resume from, checked against this run."""
        try:
            flat, meta = ckpt.load_checkpoint(path)
        except ckpt.CheckpointError as error:
            older = [step for step, p in ckpt.list_step_checkpoints(self.checkpoint_root) if p != path]
            hint = ("; delete it to resume from the previous one (step %d)" % older[-1]) if older else ""
            raise ckpt.CheckpointError("%s%s" % (error, hint)) from None
        train_meta = meta.get("train")
        if not isinstance(train_meta, dict):
            raise ckpt.CheckpointError("checkpoint %s is not a training checkpoint (no 'train' section)" % path)
        self._check_resumable(path, meta, train_meta)
        return flat, meta

    def _restore(self, path: str, checkpoint, host_state: Any) -> Any:
        """Restores the state and the loop's position from a training checkpoint."""
        flat, meta = checkpoint
        train_meta = meta["train"]
        source = "checkpoint %s" % path
        state = ckpt.restore_tree(host_state, flat, prefix="state", source=source)
        if any(key.startswith("best/") for key in flat):
            template = {"params": host_state.params, "batch_stats": host_state.batch_stats}
            self.best["variables"] = {
                "params": ckpt.restore_tree(template["params"], flat, prefix="best/params", source=source),
                "batch_stats": ckpt.restore_tree(template["batch_stats"], flat, prefix="best/batch_stats",
                                                 source=source),
            }
        best = train_meta["best"]
        self.best.update(value=best["value"], step=best["step"], validation=best["validation"])
        self.history = list(train_meta["history"])
        stored = train_meta["throughput"]
        self.throughput = {"samples": int(stored["samples"]), "seconds": float(stored["seconds"]),
                           "samples_all": int(stored.get("samples_all", 0)),
                           "seconds_all": float(stored.get("seconds_all", 0.0))}
        self.step = int(meta["step"])
        if int(np.asarray(state.step)) != self.step:
            raise ckpt.CheckpointError("checkpoint %s is inconsistent: its state is at step %d, its metadata says %d"
                                       % (path, int(np.asarray(state.step)), self.step))
        self._negatives_rng.bit_generator.state = train_meta["negatives_rng"]
        epoch = int(train_meta["epoch"])
        if train_meta["epoch_complete"]:
            self.epoch = epoch
        else:
            self.epoch = epoch - 1  # train_epoch counts it again and skips the calls done
            self._resume_call = int(train_meta["epoch_calls_done"])
        if self.config.eval_every > 0:
            self._next_eval = (self.step // self.config.eval_every + 1) * self.config.eval_every
        if self.config.checkpoint_every > 0:
            self._next_checkpoint = (self.step // self.config.checkpoint_every + 1) * self.config.checkpoint_every
        self.last_checkpoint, self._last_checkpoint_step = path, self.step
        self.resumed_from = list(train_meta.get("resumed_from", [])) + [self.step]
        logging.info("resuming from %s: step %d, epoch %d%s", path, self.step, epoch,
                     " (complete)" if train_meta["epoch_complete"] else
                     ", call %d" % int(train_meta["epoch_calls_done"]))
        return state

    def _check_resumable(self, path: str, meta: Dict[str, Any], train_meta: Dict[str, Any]) -> None:
        """Raises one CheckpointError naming every setting that differs from the checkpoint's."""
        config = self.config
        problems: List[str] = []
        if _canonical(meta.get("vocabulary")) != _canonical(self.vocab):
            problems.append("it was trained on data with vocabulary %s but this dataset has %s"
                            % (meta.get("vocabulary"), self.vocab))
        stored_fingerprint = meta.get("data_fingerprint")
        if stored_fingerprint is not None and self.data_fingerprint is not None \
                and stored_fingerprint != self.data_fingerprint:
            problems.append("it was trained on another dataset (meta.json fingerprint %s, this one's %s: other "
                            "source files, build settings or split sizes)"
                            % (str(stored_fingerprint)[:12], self.data_fingerprint[:12]))
        if int(train_meta.get("num_train", self.num_train)) != self.num_train:
            problems.append("it was trained on %d training samples but this dataset has %d"
                            % (int(train_meta["num_train"]), self.num_train))
        mine = {"model": config.model, "max_seq_len": config.max_seq_len, "data_type": config.data_type}
        for name, value in mine.items():
            if _canonical(meta.get(name)) != _canonical(value):
                problems.append("--%s is %r here but %r in the checkpoint" % (name, value, meta.get(name)))
        stored_model = _canonical(meta.get("model_config") or {})
        here_model = _canonical(config.model_config)
        for name in sorted(set(stored_model) | set(here_model)):
            if stored_model.get(name) != here_model.get(name):
                problems.append("model setting %s is %r here but %r in the checkpoint"
                                % (name, here_model.get(name), stored_model.get(name)))
        stored = train_meta.get("config", {})
        names = list(_RESUME_MUST_MATCH) + (["synthetic_samples"] if config.use_synthetic_data else [])
        for name in names:
            here = _canonical(getattr(config, name, None))
            if name in stored and _canonical(stored[name]) != here:
                problems.append("--%s is %r here but %r in the checkpoint" % (name, here, stored[name]))
        if int(train_meta.get("replicas", self.replicas)) != self.replicas:
            problems.append("%d replica(s) here but %d in the checkpoint (the global batch would change)"
                            % (self.replicas, int(train_meta["replicas"])))
        if problems:
            raise ckpt.CheckpointError("checkpoint %s cannot be resumed with these settings and data: %s"
                                       % (path, "; ".join(problems)))
        for names, consequence in ((_RESUME_MAY_CHANGE, "the run will differ from an uninterrupted one"),
                                   (_RESUME_MAY_CHANGE_EVALUATION,
                                    "training is unchanged, but validation scores may differ in their last digits "
                                    "from an uninterrupted run (and so, rarely, the best step)")):
            for name in names:
                if name in stored and _canonical(stored[name]) != _canonical(getattr(config, name)):
                    logging.warning("resuming with --%s %r instead of the checkpoint's %r: %s",
                                    name, getattr(config, name), stored[name], consequence)

    # -- the end -------------------------------------------------------------

    def finish(self) -> Dict[str, Any]:
        """Saves the last state, scores test once with the selected step, writes the summary.

        Raises:
          TrainingInterrupted: a stop was requested before the summary was
            written (no summary: ``--resume`` runs ``finish`` again; a
            fresh run refuses to replace the unfinished one).
        """
        config = self.config
        self._finishing = True
        if config.model_path and self.is_chief:
            self._save_variables("last", unreplicate_to_host(self.state))
        self._stop_if_requested("before the final test evaluation")
        test_metrics = None
        if self.has_test:
            if self.best["variables"] is None:  # no epoch was trained
                self.best["variables"] = self.host_variables()
            test_metrics = self._evaluate_split(self.best["variables"], "test")
            logging.info("test (step %d, selected on validation %s): gauc %.5f auc %.5f logloss %.5f",
                         self.best["step"], config.select_metric, test_metrics["gauc"], test_metrics["auc"],
                         test_metrics["logloss"])
        seconds = self.throughput["seconds"]
        with_compilation = seconds <= 0 < self.throughput["seconds_all"]
        if with_compilation:
            rate = self.throughput["samples_all"] / self.throughput["seconds_all"]
        else:
            rate = self.throughput["samples"] / seconds if seconds > 0 else None
        summary = {
            "validation": self.best["validation"],
            "test": test_metrics,
            "best_step": self.best["step"],
            "steps": self.step,
            "samples_per_s": rate,
            "samples_per_s_includes_compilation": with_compilation,
            "replicas": self.replicas,
            "processes": self.process_count,
            "platform": self.devices[0].platform,
            "num_parameters": self.num_parameters,
            "history": self.history,
            "flags": config.to_dict(),
            "vocabulary": self.vocab,
            "resumed_from": self.resumed_from,
        }
        if config.model_path and self.is_chief:
            os.makedirs(config.model_path, exist_ok=True)
            path = os.path.join(config.model_path, SUMMARY_FILE)
            with open(path + ".tmp", "w") as handle:
                json.dump(summary, handle, indent=2, default=json_default)
            os.replace(path + ".tmp", path)
        if self._stop_request is not None:
            # Only the summary was left to write: stopping now would make the
            # finished run look unfinished.
            logging.warning("%s arrived after the test evaluation: the run is complete",
                            self._stop_request["reason"])
        self._notify("on_end", summary)
        return summary


class _SignalHandlers:
    """Installs SIGINT/SIGTERM handlers that ask a Trainer to stop; restores the old ones on exit."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, trainer: Trainer):
        self._trainer = trainer
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        del frame
        name = signal.Signals(signum).name
        if self._trainer._stop_request is not None:
            raise self._trainer._abort(name, signum)
        logging.warning("%s received: stopping after the current call and saving a checkpoint "
                        "(send it again to stop at once)", name)
        self._trainer.request_stop(name, signum)

    def __enter__(self) -> "_SignalHandlers":
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in self.SIGNALS:
            signum = getattr(signal, name)
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}


def train_and_evaluate(config: TrainConfig, source: Any = None, hooks: Sequence[Any] = (),
                       handle_signals: bool = True) -> Dict[str, Any]:
    """Trains for ``config.epochs``, selects the best step on validation, reports test once.

    Writes ``<model_path>/best`` (the selected checkpoint), ``<model_path>/last``,
    ``<model_path>/summary.json`` and the training checkpoints
    ``<model_path>/checkpoints/step_N`` when ``model_path`` is set; with
    ``config.resume`` it continues from the newest of those.

    Args:
      handle_signals: SIGINT/SIGTERM save a checkpoint and raise
        ``TrainingInterrupted`` (main thread only).

    Returns:
      The summary: ``validation`` and ``test`` metrics of the best step,
      ``best_step``, ``samples_per_s``, ``history`` of evaluations, ``flags``.
    """
    return Trainer(config, source, hooks).train(handle_signals=handle_signals)
