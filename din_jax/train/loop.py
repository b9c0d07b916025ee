"""The training loop: train, select the best step on validation, score test once.

``Trainer.train`` runs epochs of host calls (``train_epoch``), evaluates, checkpoints, and ``finish`` scores test
with the selected step. Observers get ``method(record)`` for any of: ``on_train_begin``, ``on_epoch_begin``,
``on_train_call``, ``on_evaluation_begin``, ``on_predict_call``, ``on_evaluation``, ``on_checkpoint``,
``on_end(summary)``, ``on_close`` (always last); docs/WATCHING.md lists the records' fields. Resuming is exact:
the epoch order is a function of (seed, epoch) and a checkpoint records the position in the epoch.
"""

import contextlib
import dataclasses
import json
import time
from typing import Any, Dict, List, Optional, Sequence

import jax
import numpy as np
from absl import logging

from din_jax import checkpoint as ckpt
from din_jax.config import ConfigError, TrainConfig
from din_jax.data.batching import ChunkPlan, gather_chunk, history_negatives_rng, plan_epoch, prefetch
from din_jax.metrics import is_better
from din_jax.models import wants_history_negatives
from din_jax.train import run_dir
from din_jax.train.evaluation import evaluate_split, probe_attention
from din_jax.train.observers import Heartbeat
from din_jax.train.regularization import regularization_for
from din_jax.train.setup import create_programs, dataset_fingerprint, load_source, vocabulary
from din_jax.train.step import NonFiniteLossError, replicate, resolve_devices, unreplicate_to_host
from din_jax.train.stopping import (
    SignalHandlers,
    StopControl,
    TrainingAborted,
    TrainingInterrupted,
    divergence_warning,
    early_stop_message,
    halted_error,
    loss_scaling_hint,
)


class Trainer:
    """One training run of a config on a ``Dataset`` (loaded from the config when None), watched by ``hooks``.

    Raises ConfigError for invalid settings or a fresh run over an unfinished one, CheckpointError for a
    checkpoint to resume from that is corrupt or does not match the settings or the data.
    """

    def __init__(self, config: TrainConfig, source: Any = None, hooks: Sequence[Any] = ()):
        self.source = source if source is not None else load_source(config.validate())
        if config.resample_negatives is None:  # the default: on where the data allows it
            config = dataclasses.replace(config, resample_negatives=self.source.can_resample_negatives())
        self.config = config = config.validate()
        self.hooks = list(hooks)
        self.vocab = vocabulary(self.source)
        self.history_negatives = wants_history_negatives(config.model, config.model_config)  # DIEN's auxiliary loss
        self.data_fingerprint = dataset_fingerprint(self.source)
        self.devices = resolve_devices(config.replicas)
        self.process_index = jax.process_index()
        self.process_count = jax.process_count()
        if self.process_count > 1 and config.replicas:
            raise ConfigError("--replicas must be 0 (every device) in a multi-process run")
        # Multi-process: the train program spans every process's devices; each feeds its slice of each step.
        self.train_devices = None if self.process_count > 1 else self.devices
        self.replicas = len(self.devices) * self.process_count
        self.global_batch = self.replicas * config.micro_batch_size

        splits = self.source.split_names()
        if "train" not in splits:
            raise ConfigError("dataset %s has no training samples" % (self.source.path or "(in memory)"))
        self.has_validation = "validation" in splits
        self.has_test = "test" in splits
        if not self.has_validation:
            logging.warning("the dataset has no validation split: the last step is kept (no model selection)")
        self.num_train = self.source.num_samples("train")
        if self.num_train < self.global_batch:
            message = "the training split has %d samples, fewer than one global micro-batch (%d replicas x %d)"
            raise ConfigError(message % (self.num_train, self.replicas, config.micro_batch_size))

        self.step = self.epoch = 0
        self.history: List[Dict[str, Any]] = []
        self.best: Dict[str, Any] = {"value": None, "step": 0, "validation": None, "variables": None}
        self.throughput = {"samples": 0, "seconds": 0.0, "samples_all": 0, "seconds_all": 0.0}
        self.latest_variables: Optional[Dict[str, Any]] = None
        self.stopped: Optional[Dict[str, Any]] = None
        self.resumed_from: List[int] = []
        self.steps_per_epoch = self.num_train // self.global_batch
        self._compiled_shapes = set()
        self._negatives_rng = np.random.default_rng(config.seed)
        self._epoch_rng_state: Optional[Dict[str, Any]] = None
        self._epoch_calls_done = self._epoch_calls_total = 0
        self._resume_call: Optional[int] = None
        self._next_eval = config.eval_every if config.eval_every > 0 else None
        self._next_checkpoint = config.checkpoint_every if config.checkpoint_every > 0 else None
        self.stopper = StopControl(len(self.devices), self.process_index, self.process_count)
        self._began = self._finishing = False
        self._attention_probe, self.heartbeat, self._diverging = None, Heartbeat(), False
        self._quiet_calls = any(getattr(hook, "replaces_call_log", False) for hook in self.hooks)
        self.checkpoints = run_dir.Checkpoints(config, self.vocab, self.data_fingerprint, self.source.item_category)

        # One run per run directory: the lock comes before anything there is read or removed.
        self._lock = run_dir.lock(config) if self.is_chief else None
        try:
            self._setup()
        except BaseException:
            self.release()
            raise

    def _setup(self) -> None:
        """Checks the run directory (before anything is compiled, so a bad checkpoint fails fast), then builds."""
        config = self.config
        resume_from, self._previous_run = run_dir.prepare(config, self.is_chief, self._lock)
        if resume_from is not None:
            flat, meta = run_dir.load_resumable(resume_from, self.checkpoints.root)
            run_dir.check_resumable(
                resume_from, meta, config, self.vocab, self.data_fingerprint, self.num_train, self.replicas
            )

        programs = create_programs(
            config, self.vocab, self.train_devices, self.devices, regularization_for(config, self.source)
        )
        self.model, self.eval_model, host_state, self.p_train, self.p_predict, self.schedule = programs
        self.num_parameters = sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(host_state.params))
        if resume_from is not None:
            host_state = self._restore(resume_from, flat, meta, host_state)
        self.state = replicate(host_state, self.train_devices)
        fields = json.dumps(config.model_config, default=str)
        logging.info("model %s %s, %d parameters", config.model, fields, self.num_parameters)
        where = "%d replica(s) on %s" % (self.replicas, self.devices[0].platform)
        logging.info("%s, train %d samples, global micro-batch %d", where, self.num_train, self.global_batch)

    def release(self) -> None:
        """Releases the run directory and stops the heartbeat (``train`` does both at its end)."""
        self.heartbeat.stop()
        if self._lock is not None:
            self._lock.release()

    # -- hooks ---------------------------------------------------------------

    def _notify(self, event: str, record: Dict[str, Any]) -> None:
        for hook in self.hooks:
            method = getattr(hook, event, None)
            if method is not None:
                method(record)

    @property
    def is_chief(self) -> bool:
        """Process 0 writes checkpoints and summaries."""
        return self.process_index == 0

    # -- stopping ------------------------------------------------------------

    def request_stop(self, reason: str = "a stop request", signum: Optional[int] = None) -> None:
        """Asks the loop to save a checkpoint and raise ``TrainingInterrupted`` after the current call (thread-safe)."""
        self.stopper.request_stop(reason, signum)

    def _stop(self, during: Optional[str] = None) -> None:
        request = self.stopper.request
        path = self.checkpoints.last if self.checkpoints.at(self.step) else self.save_train_checkpoint()
        where = "nothing saved (no --model_path)"
        if path or self.checkpoints.root:
            written = path or ckpt.step_checkpoint_dir(self.checkpoints.root, self.step)
            where = "%scheckpoint %s; continue with --resume" % ("" if path else "process 0 writes ", written)
        during = ", " + during if during else ""
        message = "training stopped by %s at step %d (epoch %d%s): %s"
        raise TrainingInterrupted(
            message % (request["reason"], self.step, self.epoch, during, where), self.step, path, request["signum"]
        )

    def _abort(self, reason: str, signum: Optional[int]) -> TrainingAborted:
        """The exception a second stop request raises at once (from a signal handler)."""
        last = self.checkpoints.last
        where = "nothing saved (no --model_path)"
        if last:
            where = "nothing saved after checkpoint %s (step %d); continue with --resume" % (
                last,
                self.checkpoints.last_step,
            )
        elif self.checkpoints.root:
            where = "no checkpoint was written"
        message = "training stopped at once by a second %s near step %d (epoch %d): %s"
        return TrainingAborted(message % (reason, self.step, self.epoch, where), self.step, last, signum)

    def _stop_if_requested(self, during: str) -> None:
        """Outside the training loop (``finish``): stops at once, the newest checkpoint being at this step."""
        if self.stopper.request is not None:
            self._stop(during)

    def handle_signals(self) -> SignalHandlers:
        """SIGINT and SIGTERM call ``request_stop``; a second one raises ``TrainingAborted`` at once."""
        return SignalHandlers(self.stopper, self._abort)

    # -- training ------------------------------------------------------------

    def _epoch_plan(self, epoch: int) -> ChunkPlan:
        plan = plan_epoch(self.source, self.config, epoch, self.replicas)
        if self.process_count > 1:  # this process's slice of every call
            lo = self.process_index * len(self.devices)
            plan = plan._replace(calls=[c[lo : lo + len(self.devices)] for c in plan.calls])
        return plan

    def train(self, handle_signals: bool = True) -> Dict[str, Any]:
        """Trains the remaining epochs, then ``finish``.

        Raises TrainingInterrupted after a stop request (checkpoint written), TrainingAborted on a second signal. A
        non-finite step or early stopping ends training early (the summary's ``stopped``).
        """
        # Around finish() too: a signal during the test evaluation must stop as cleanly as one in training.
        with self.handle_signals() if handle_signals else contextlib.nullcontext():
            try:
                self._begin()
                try:
                    while self.epoch < self.config.epochs and not self._out_of_patience():
                        self.train_epoch()
                except NonFiniteLossError as error:
                    self._halt(error)
                return self.finish()
            finally:
                self._notify("on_close", {"step": self.step})
                self.release()

    def _begin(self) -> None:
        if self._began:
            return
        self._began = True
        self.heartbeat.start()
        outputs, self._previous_run = self._previous_run, []
        run_dir.clear_previous_run(self.config.model_path, outputs)
        record = dict(step=self.step, epoch=self.epoch, epochs=self.config.epochs, chief=self.is_chief)
        record.update(steps_per_epoch=self.steps_per_epoch, resumed=(self.resumed_from or [None])[-1])
        record.update(
            config=self.config.to_dict(), validation=self.history[-1].get("validation") if self.history else None
        )
        self._notify("on_train_begin", record)

    def train_epoch(self) -> None:
        """One pass over the training split (after a restore, the rest of the interrupted one)."""
        self._begin()
        self.epoch += 1
        config = self.config
        start_call, self._resume_call = (self._resume_call or 0), None
        plan = self._epoch_plan(self.epoch)
        self._epoch_calls_total = len(plan.calls)
        self._epoch_calls_done = start_call
        remaining = plan.calls[start_call:]
        # The generator state before this epoch's draw: a checkpoint inside the epoch draws the same negatives.
        self._epoch_rng_state = self._negatives_rng.bit_generator.state
        samples = None
        if config.resample_negatives and remaining:
            samples = self.source.resample_negatives(self._negatives_rng)
        done = sum(int(c.shape[1]) for c in plan.calls[:start_call])
        steps = sum(int(c.shape[1]) for c in plan.calls)
        record = {"epoch": self.epoch, "steps": steps, "done": done, "step": self.step, "deferred": plan.deferred}
        self._notify("on_epoch_begin", dict(record, positions=plan.positions))

        seq_lens = (plan.seq_lens or [config.max_seq_len] * len(plan.calls))[start_call:]

        def chunks():  # seq_len: the call's length bucket
            for call, (indices, seq_len) in enumerate(zip(remaining, seq_lens), start_call):
                rng = history_negatives_rng(config, self.epoch, call) if self.history_negatives else None
                yield gather_chunk(self.source, "train", indices, seq_len, samples, plan.positions, rng)

        # A call's metrics are fetched only after the next call is dispatched: the host never stalls the device.
        pending: Optional[Dict[str, Any]] = None
        self._last_done = time.perf_counter()
        for call, (indices, chunk) in enumerate(zip(remaining, prefetch(chunks(), config.prefetch)), start_call):
            k = indices.shape[1]
            shape = (k, int(chunk["hist_item"].shape[-1]))
            # The first call of each shape compiles: keep it out of the throughput.
            compiles = shape not in self._compiled_shapes
            doing = "compiling the train program, then running" if compiles else "running"
            self.heartbeat.set(
                "epoch %d: %s call %d of %d (%d steps)" % (self.epoch, doing, call + 1, len(plan.calls), k)
            )
            self.state, metrics = self.p_train(self.state, chunk)
            self.step += k
            self._epoch_calls_done = call + 1
            if pending is not None:
                self._drain(pending)
            pending = dict(metrics=metrics, step=self.step, samples=plan.valid[call], call=call, epoch=self.epoch)
            pending["compiles"] = compiles
            self._compiled_shapes.add(shape)
            if self._next_eval is not None and self.step >= self._next_eval:
                self._drain(pending)
                pending = None
                self.evaluate()
                self._last_done = time.perf_counter()
                while self._next_eval <= self.step:
                    self._next_eval += config.eval_every
                if self._out_of_patience():
                    break
            if call + 1 == len(plan.calls):
                break  # the end of the epoch checkpoints and stops below
            due = self._next_checkpoint is not None and self.step >= self._next_checkpoint
            stop = self.stopper.agreed()
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
        self.heartbeat.set(None)
        if not self.history or self.history[-1]["step"] != self.step:
            self.evaluate()
        if not self.checkpoints.at(self.step):
            self.save_train_checkpoint()
        if self.stopper.agreed():
            self._stop()

    def _out_of_patience(self) -> bool:
        """Whether ``early_stop_patience`` evaluations in a row have not beaten the best (``stopped`` then says so)."""
        message = self.has_validation and early_stop_message(self.history, self.best["step"], self.config, self.step)
        if message and self.stopped is None:
            self.stopped = {"reason": "early_stop", "step": self.step, "message": message}
            logging.info(message)
        return bool(message)

    def _halt(self, error: NonFiniteLossError) -> None:
        """Ends training at the last good step (the state the program kept), validated; ``finish`` then scores test."""
        if error.good < 0:
            raise error
        logging.error("%s; the state of step %d is kept, and test is scored with the best step", error, error.good)
        self.step, self.stopped = error.good, {"reason": "non-finite", "step": error.good + 1, "message": str(error)}
        try:
            self.evaluate() if not self.history or self.history[-1]["step"] != self.step else None
        except NonFiniteLossError as predictions:
            logging.warning("%s with the state of step %d: it cannot be selected", predictions, self.step)

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
        halted = np.asarray(metrics_host["halted_at"])[0]
        if np.any(halted > 0):
            first = pending["step"] - len(losses)  # the call's steps are first + 1 ... pending["step"]
            raise halted_error(int(halted[halted > 0][0]), losses, first, pending["epoch"], self.config)
        self._diverging = divergence_warning(float(np.mean(losses)), pending["step"], self._diverging)
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
            values = [record[key] for key in ("epoch", "step", "loss", "accuracy", "learning_rate", "samples_per_s")]
            compiled = " (includes compilation)" if record["includes_compilation"] else ""
            logging.info("epoch %d step %d loss %.5f accuracy %.4f lr %.4g samples/s %.0f%s", *values, compiled)
        self._notify("on_train_call", record)

    def host_variables(self) -> Dict[str, Any]:
        """The current ``params`` and ``batch_stats`` as host arrays."""
        host_state = unreplicate_to_host(self.state)
        return {"params": host_state.params, "batch_stats": host_state.batch_stats}

    def _evaluate_split(self, variables: Dict[str, Any], split: str) -> Dict[str, Any]:
        """Metrics of a split, telling the observers of each call (for progress bars)."""

        def p_predict(variables, chunk):
            if self._finishing:
                self._stop_if_requested("during the final test evaluation")
            out = self.p_predict(variables, chunk)
            self._notify("on_predict_call", {"split": split, "samples": int(np.size(chunk["label"]))})
            return out

        samples = self.source.num_samples(split)
        self.heartbeat.set("step %d: scoring the %s split (%d samples)" % (self.step, split, samples))
        self._notify("on_evaluation_begin", {"split": split, "samples": samples, "step": self.step})
        result = evaluate_split(p_predict, variables, self.source, split, self.devices, self.config)
        self.heartbeat.set(None)
        return result

    def evaluate(self) -> Dict[str, Any]:
        """Scores the validation split and keeps the best step (and its checkpoint)."""
        variables = self.host_variables()
        self.latest_variables = variables
        record: Dict[str, Any] = {"step": self.step, "epoch": self.epoch}
        if self.has_validation:
            result = self._evaluate_split(variables, "validation")
            record["validation"] = result
            scores = [result[name] for name in ("gauc", "auc", "logloss")]
            logging.info("epoch %d step %d validation gauc %.5f auc %.5f logloss %.5f", self.epoch, self.step, *scores)
            if is_better(self.config.select_metric, result[self.config.select_metric], self.best["value"]):
                self.best.update(
                    value=result[self.config.select_metric], step=self.step, validation=result, variables=variables
                )
                if self.config.model_path and self.is_chief:
                    self.checkpoints.save("best", variables, self.step, {"validation": result})
        else:
            self.best.update(step=self.step, variables=variables)
        self.history.append(record)
        self._notify("on_evaluation", dict(record, attention=probe_attention(self, variables)))
        return record

    # -- checkpoints and resuming --------------------------------------------

    def save_train_checkpoint(self) -> Optional[str]:
        """Writes ``checkpoints/step_<step>`` (between calls, once the last loss was checked); keeps the newest.

        Returns the directory, or None without ``model_path`` or off the chief. Raises NonFiniteLossError, writing
        nothing, when a parameter is NaN or Inf.
        """
        if not self.checkpoints.root or not self.is_chief:
            return None
        host_state = unreplicate_to_host(self.state)
        for leaf in jax.tree_util.tree_leaves((host_state.params, host_state.batch_stats)):
            if not np.all(np.isfinite(np.asarray(leaf))):
                message = "the parameters became non-finite by step %d (epoch %d)%s; %s"
                hint = loss_scaling_hint(self.config, "; ")
                raise NonFiniteLossError(message % (self.step, self.epoch, hint, self.checkpoints.last_good()))
        tree: Dict[str, Any] = {"state": host_state}
        if self.best["variables"] is not None:
            tree["best"] = self.best["variables"]
        train_meta = run_dir.position_meta(self)
        path = self.checkpoints.save_step(tree, self.step, train_meta)
        if self._next_checkpoint is not None:
            every = self.config.checkpoint_every
            self._next_checkpoint = (self.step // every + 1) * every
        logging.info("checkpoint %s", path)
        self._notify("on_checkpoint", {"path": path, "step": self.step, "epoch": self.epoch})
        return path

    def _restore(self, path: str, flat: Dict[str, np.ndarray], meta: Dict[str, Any], host_state: Any) -> Any:
        """The checkpoint's state; the loop's position, history and best step from its metadata."""
        return run_dir.restore_position(self, path, flat, meta, host_state)

    # -- the end -------------------------------------------------------------

    def finish(self) -> Dict[str, Any]:
        """Saves the last state, scores test once with the selected step, writes the summary.

        A stop requested before the summary is written raises TrainingInterrupted (``--resume`` finishes).
        """
        config = self.config
        self._finishing = True
        if config.model_path and self.is_chief:
            self.checkpoints.save("last", unreplicate_to_host(self.state), self.step)
        self._stop_if_requested("before the final test evaluation")
        test_metrics = None
        if self.has_test:
            if self.best["variables"] is None and self.stopped is None:  # no epoch was trained
                self.best["variables"] = self.host_variables()
            if self.best["variables"] is None:
                logging.warning("no step had finite predictions: test is not scored")
            else:
                test_metrics = self._evaluate_split(self.best["variables"], "test")
                scores = [test_metrics[name] for name in ("gauc", "auc", "logloss")]
                message = "test (step %d, selected on validation %s): gauc %.5f auc %.5f logloss %.5f"
                logging.info(message, self.best["step"], config.select_metric, *scores)
        seconds = self.throughput["seconds"]
        with_compilation = seconds <= 0 < self.throughput["seconds_all"]
        if with_compilation:
            rate = self.throughput["samples_all"] / self.throughput["seconds_all"]
        else:
            rate = self.throughput["samples"] / seconds if seconds > 0 else None
        summary = dict(validation=self.best["validation"], test=test_metrics, best_step=self.best["step"])
        summary.update(steps=self.step, samples_per_s=rate, samples_per_s_includes_compilation=with_compilation)
        summary.update(replicas=self.replicas, processes=self.process_count, platform=self.devices[0].platform)
        summary.update(num_parameters=self.num_parameters, history=self.history, flags=config.to_dict())
        summary.update(vocabulary=self.vocab, resumed_from=self.resumed_from, stopped=self.stopped)
        if config.model_path and self.is_chief:
            run_dir.write_summary(config.model_path, summary)
        if self.stopper.request is not None:
            # Only the summary was left: stopping now would make the finished run look unfinished.
            logging.warning("%s arrived after the test evaluation: the run is complete", self.stopper.request["reason"])
        self._notify("on_end", summary)
        return summary


def train_and_evaluate(
    config: TrainConfig, source: Any = None, hooks: Sequence[Any] = (), handle_signals: bool = True
) -> Dict[str, Any]:
    """Trains for ``config.epochs``, selects the best step on validation, scores test once: config in, summary out.

    With ``model_path`` writes ``best/`` (the selected checkpoint), ``last/``, ``summary.json`` and training
    checkpoints ``checkpoints/step_N``; ``config.resume`` continues from the newest. ``handle_signals``:
    SIGINT/SIGTERM save a checkpoint and raise ``TrainingInterrupted``.

    Returns:
      The summary: ``validation`` and ``test`` metrics of the best step, ``best_step``, ``steps``,
      ``samples_per_s``, ``history`` of evaluations, ``flags`` (the resolved config).
    """
    return Trainer(config, source, hooks).train(handle_signals=handle_signals)
