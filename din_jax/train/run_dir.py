"""The run directory: what a fresh run replaces, and what a resumed run must find and match.

``<model_path>`` holds ``checkpoints/step_N`` (the whole TrainState and the loop's position), ``best/``,
``last/``, ``summary.json`` and the observers' files. A fresh run never deletes the checkpoints of an
unfinished run; a resumed one refuses, in one line naming every difference, a checkpoint of other data or
other settings that would change its trajectory.
"""

import json
import os
import shutil
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from absl import logging

from din_jax import checkpoint as ckpt
from din_jax.config import ConfigError, TrainConfig, checkpoint_metadata
from din_jax.fileio import ExclusiveLock, LockHeld, json_default
from din_jax.train.observers import TENSORBOARD_DIR, TRAIN_LOG_FILE

CHECKPOINTS_DIR = "checkpoints"
SUMMARY_FILE = "summary.json"

# Settings that must equal the checkpoint's for a resumed run to continue the same trajectory.
# positions_per_pass sums each micro-batch's gradient in another order: other last bits.
RESUME_MUST_MATCH = (
    "seed",
    "micro_batch_size",
    "device_iterations",
    "optimizer",
    "clip_norm",
    "resample_negatives",
    "select_metric",
    "use_synthetic_data",
    "mba_lambda",
    "l2",
    "embedding_updates",
    "length_buckets",
    "positions_per_pass",
    "batching",
    "packed_positions",
)
# May change, with a warning that the run no longer reproduces an uninterrupted one (--loss_scaling: lowering
# it is how a float16 run that overflowed goes on).
RESUME_MAY_CHANGE = ("learning_rate", "lr_schedule", "lr_decay_steps", "lr_decay_factor", "lr_file", "loss_scaling")
# Never touch training, but may round validation scores differently (another batch shape).
RESUME_MAY_CHANGE_EVALUATION = ("eval_micro_batch_size",)


def canonical(value: Any) -> Any:
    """JSON-normalised value (tuples as lists, numpy scalars as Python), for comparisons."""
    return json.loads(json.dumps(value, default=json_default))


LOCK_FILE = ".lock"


def lock(config: TrainConfig) -> Optional[ExclusiveLock]:
    """Holds ``<model_path>/.lock`` for this run; a second run into the same directory refuses at once.

    Raises:
      ConfigError: another live run holds it (the message names its pid, host and command).
    """
    if not config.model_path:
        return None
    try:
        return ExclusiveLock(
            os.path.join(config.model_path, LOCK_FILE), "--model_path %s" % config.model_path
        ).acquire()
    except LockHeld as error:
        raise ConfigError(str(error)) from None


def prepare(
    config: TrainConfig, is_chief: bool, held: Optional[ExclusiveLock] = None
) -> Tuple[Optional[str], List[str]]:
    """The checkpoint to resume from (or None), and the outputs of an earlier run that a fresh one replaces.

    Nothing is deleted here (``clear_previous_run`` does it once training begins), so that a start refused for
    another reason deletes nothing.

    Raises:
      ConfigError: a fresh run in a ``model_path`` that holds the checkpoints of an unfinished run.
    """
    if not config.model_path:
        return None, []
    root = os.path.join(config.model_path, CHECKPOINTS_DIR)
    if is_chief:
        ckpt.remove_temporaries(root)
        ckpt.remove_temporaries(config.model_path)
    existing = ckpt.list_step_checkpoints(root)
    if config.resume:
        # A step directory without its JSON (written last) is not a checkpoint; say so if it is newer than the one used.
        newest = existing[-1][0] if existing else -1
        broken = [path for step, path in ckpt.list_step_checkpoints(root, complete=False) if step > newest]
        if broken:
            logging.warning(
                "--resume: %s has no %s (incomplete or deleted): skipped; resuming from %s",
                broken[-1],
                ckpt.META_FILE,
                existing[-1][1] if existing else "scratch",
            )
        if existing:
            return existing[-1][1], []
        missing = not os.path.isdir(config.model_path) or (held is not None and held.created_folder)
        where = "%s (it does not exist)" % config.model_path if missing else root
        logging.warning("--resume: no checkpoint under %s; starting from scratch", where)
        return None, []
    if not is_chief:
        return None, []  # the chief alone manages the directory (and would race with us)
    if existing:
        finished_steps = -1
        try:
            with open(os.path.join(config.model_path, SUMMARY_FILE)) as handle:
                finished_steps = int(json.load(handle).get("steps", -1))
        except (OSError, ValueError, TypeError, AttributeError):
            pass
        if finished_steps < existing[-1][0]:
            raise ConfigError(
                "--model_path %s holds the checkpoints of an unfinished run (newest: step %d): "
                "pass --resume to continue it, or delete %s to start again" % (config.model_path, existing[-1][0], root)
            )
    return None, previous_run_outputs(config.model_path)


def previous_run_outputs(model_path: str) -> List[str]:
    """What an earlier run left that a fresh run must not leave beside its own outputs.

    A stale ``best/`` would be scored as this run's; stale figures, events and log lines would be mistaken for
    its own. ``plots/`` and event files go only when the directory holds a run's checkpoint or summary, so that
    a directory of other files is never emptied.
    """
    outputs = [
        os.path.join(model_path, name)
        for name in ("best", "last")
        if os.path.isfile(os.path.join(model_path, name, ckpt.META_FILE))
    ]
    outputs += [
        os.path.join(model_path, name)
        for name in (CHECKPOINTS_DIR, SUMMARY_FILE)
        if os.path.exists(os.path.join(model_path, name))
    ]
    if not outputs:
        return []
    outputs += [
        os.path.join(model_path, name)
        for name in ("plots", TRAIN_LOG_FILE, TRAIN_LOG_FILE + ".tmp")
        if os.path.exists(os.path.join(model_path, name))
    ]
    events = os.path.join(model_path, TENSORBOARD_DIR)
    if os.path.isdir(events):
        outputs.extend(
            os.path.join(events, name) for name in sorted(os.listdir(events)) if name.startswith("events.out.tfevents")
        )
    return outputs


def clear_previous_run(model_path: str, outputs: List[str]) -> None:
    if not outputs:
        return
    logging.info(
        "starting a new run in %s: removing the outputs of the run before it (%s)",
        model_path,
        ", ".join(os.path.relpath(p, model_path) for p in outputs),
    )
    # The summary goes first: without it a half-cleared directory never passes for a finished run.
    for path in sorted(outputs, key=lambda p: os.path.basename(p) != SUMMARY_FILE):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)


class Checkpoints:
    """Writes a run's checkpoints (``checkpoints/step_N``, ``best``, ``last``) and remembers the newest step one.

    Each holds the run's metadata (``config.checkpoint_metadata``) and the item -> category map (for ranking).
    """

    def __init__(self, config: TrainConfig, vocab: Dict[str, int], fingerprint: Optional[str], item_category):
        self.config, self.vocab, self.fingerprint = config, vocab, fingerprint
        self.arrays = {"item_category": np.asarray(item_category, np.int32)}
        self.root = os.path.join(config.model_path, CHECKPOINTS_DIR) if config.model_path else None
        self.last: Optional[str] = None
        self.last_step: Optional[int] = None

    def save(self, name: str, tree: Any, step: int, extra: Optional[Dict[str, Any]] = None) -> str:
        """``<model_path>/<name>``, replaced atomically."""
        return self._write(os.path.join(self.config.model_path, name), tree, step, extra)

    def save_step(self, tree: Any, step: int, train_meta: Dict[str, Any]) -> str:
        """A training checkpoint ``checkpoints/step_<step>``; keeps the newest ``keep_checkpoints``."""
        path = self._write(ckpt.step_checkpoint_dir(self.root, step), tree, step, {"train": train_meta})
        ckpt.prune_step_checkpoints(self.root, self.config.keep_checkpoints)
        self.last, self.last_step = path, step
        return path

    def _write(self, directory: str, tree: Any, step: int, extra: Optional[Dict[str, Any]]) -> str:
        meta = checkpoint_metadata(self.config, self.vocab, step, extra, self.fingerprint)
        return ckpt.save_checkpoint(directory, tree, meta, arrays=self.arrays)

    def at(self, step: int) -> bool:
        """Whether the newest training checkpoint holds ``step``."""
        return self.last is not None and self.last_step == step

    def last_good(self) -> str:
        """Where a failed run can go on from, in words."""
        if self.last:
            return "the last good checkpoint is %s (step %d)" % (self.last, self.last_step)
        return "no checkpoint was written before" if self.root else "no checkpoints (no --model_path)"


def write_summary(model_path: str, summary: Dict[str, Any]) -> None:
    """``summary.json``, replaced atomically: its presence marks a finished run."""
    os.makedirs(model_path, exist_ok=True)
    path = os.path.join(model_path, SUMMARY_FILE)
    with open(path + ".tmp", "w") as handle:
        json.dump(summary, handle, indent=2, default=json_default)
    os.replace(path + ".tmp", path)


def load_resumable(path: str, root: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """The verified arrays and metadata of a training checkpoint; a corrupt one names the older to fall back to."""
    try:
        flat, meta = ckpt.load_checkpoint(path)
        for name in meta.get("arrays") or {}:  # the arrays saved beside the state (item_category.npy) too
            ckpt.load_array(path, name, meta)
    except ckpt.CheckpointError as error:
        older = [step for step, p in ckpt.list_step_checkpoints(root) if p != path]
        hint = ("; delete it to resume from the previous one (step %d)" % older[-1]) if older else ""
        raise ckpt.CheckpointError("%s%s" % (error, hint)) from None
    if not isinstance(meta.get("train"), dict):
        raise ckpt.CheckpointError("checkpoint %s is not a training checkpoint (no 'train' section)" % path)
    return flat, meta


def check_resumable(
    path: str,
    meta: Dict[str, Any],
    config: TrainConfig,
    vocab: Dict[str, int],
    fingerprint: Optional[str],
    num_train: int,
    replicas: int,
) -> None:
    """Raises one CheckpointError naming every setting that differs from the checkpoint's; warns of the rest."""
    train_meta = meta["train"]
    problems: List[str] = []
    if canonical(meta.get("vocabulary")) != canonical(vocab):
        problems.append(
            "it was trained on data with vocabulary %s but this dataset has %s" % (meta.get("vocabulary"), vocab)
        )
    stored_fingerprint = meta.get("data_fingerprint")
    if stored_fingerprint is not None and fingerprint is not None and stored_fingerprint != fingerprint:
        problems.append(
            "it was trained on another dataset (meta.json fingerprint %s, this one's %s: other "
            "source files, build settings or split sizes)" % (str(stored_fingerprint)[:12], fingerprint[:12])
        )
    if int(train_meta.get("num_train", num_train)) != num_train:
        problems.append(
            "it was trained on %d training samples but this dataset has %d" % (int(train_meta["num_train"]), num_train)
        )
    for name, value in (("model", config.model), ("max_seq_len", config.max_seq_len), ("data_type", config.data_type)):
        if canonical(meta.get(name)) != canonical(value):
            problems.append("--%s is %r here but %r in the checkpoint" % (name, value, meta.get(name)))
    stored_model, here_model = canonical(meta.get("model_config") or {}), canonical(config.model_config)
    for name in sorted(set(stored_model) | set(here_model)):
        if stored_model.get(name) != here_model.get(name):
            problems.append(
                "model setting %s is %r here but %r in the checkpoint"
                % (name, here_model.get(name), stored_model.get(name))
            )
    stored = train_meta.get("config", {})
    for name in RESUME_MUST_MATCH + (("synthetic_samples",) if config.use_synthetic_data else ()):
        here = canonical(getattr(config, name, None))
        if name in stored and canonical(stored[name]) != here:
            problems.append("--%s is %r here but %r in the checkpoint" % (name, here, stored[name]))
    if int(train_meta.get("replicas", replicas)) != replicas:
        problems.append(
            "%d replica(s) here but %d in the checkpoint (the global batch would change)"
            % (replicas, int(train_meta["replicas"]))
        )
    if problems:
        raise ckpt.CheckpointError(
            "checkpoint %s cannot be resumed with these settings and data: %s" % (path, "; ".join(problems))
        )
    for names, consequence in (
        (RESUME_MAY_CHANGE, "the run will differ from an uninterrupted one"),
        (
            RESUME_MAY_CHANGE_EVALUATION,
            "training is unchanged, but validation scores may differ in their last digits "
            "from an uninterrupted run (and so, rarely, the best step)",
        ),
    ):
        for name in names:
            if name in stored and canonical(stored[name]) != canonical(getattr(config, name)):
                logging.warning(
                    "resuming with --%s %r instead of the checkpoint's %r: %s",
                    name,
                    getattr(config, name),
                    stored[name],
                    consequence,
                )


def restore_state(path: str, flat: Dict[str, np.ndarray], meta: Dict[str, Any], host_state: Any):
    """The TrainState and the best variables (or None) of a training checkpoint, shaped like ``host_state``."""
    source = "checkpoint %s" % path
    # Checkpoints of versions before the step's NaN guard have no halted_at (a checkpoint is never of a halted run).
    flat = dict({"state/halted_at": np.zeros((), np.int32)}, **flat)
    state = ckpt.restore_tree(host_state, flat, prefix="state", source=source)
    if int(np.asarray(state.step)) != int(meta["step"]):
        raise ckpt.CheckpointError(
            "checkpoint %s is inconsistent: its state is at step %d, its metadata says %d"
            % (path, int(np.asarray(state.step)), int(meta["step"]))
        )
    best = None
    if any(key.startswith("best/") for key in flat):
        best = {
            name: ckpt.restore_tree(getattr(host_state, name), flat, prefix="best/" + name, source=source)
            for name in ("params", "batch_stats")
        }
    return state, best


def position_meta(trainer: Any) -> Dict[str, Any]:
    """The ``train`` metadata of a training checkpoint: where a ``Trainer`` is, what it selected, what it measured."""
    complete = trainer._epoch_calls_done >= trainer._epoch_calls_total
    best = {key: trainer.best[key] for key in ("value", "step", "validation")}
    meta = dict(epoch=trainer.epoch, epoch_calls_done=trainer._epoch_calls_done, epoch_complete=bool(complete))
    # Inside an epoch: the state before its negatives were drawn (drawn again on resume).
    rng = trainer._negatives_rng.bit_generator.state if complete else trainer._epoch_rng_state
    meta.update(negatives_rng=rng, history=trainer.history, best=best, next_eval=trainer._next_eval)
    meta.update(throughput=trainer.throughput, replicas=trainer.replicas, num_train=trainer.num_train)
    meta.update(resumed_from=trainer.resumed_from, config=trainer.config.to_dict())
    return meta


def restore_position(trainer: Any, path: str, flat: Dict[str, np.ndarray], meta: Dict[str, Any], host_state: Any):
    """Puts a ``Trainer`` where the checkpoint was (``position_meta``'s inverse); returns the checkpoint's state."""
    state, trainer.best["variables"] = restore_state(path, flat, meta, host_state)
    train_meta = meta["train"]
    best = train_meta["best"]
    trainer.best.update(value=best["value"], step=best["step"], validation=best["validation"])
    trainer.history = list(train_meta["history"])
    stored = train_meta["throughput"]
    trainer.throughput = {
        key: kind(stored.get(key, 0))
        for key, kind in (("samples", int), ("seconds", float), ("samples_all", int), ("seconds_all", float))
    }
    trainer.step = step = int(meta["step"])
    trainer._negatives_rng.bit_generator.state = train_meta["negatives_rng"]
    epoch, calls_done = int(train_meta["epoch"]), int(train_meta["epoch_calls_done"])
    # An unfinished epoch is counted again by train_epoch, which skips the calls done.
    trainer.epoch, trainer._resume_call = (epoch, None) if train_meta["epoch_complete"] else (epoch - 1, calls_done)
    every = trainer.config.eval_every, trainer.config.checkpoint_every
    trainer._next_eval = (step // every[0] + 1) * every[0] if every[0] > 0 else None
    trainer._next_checkpoint = (step // every[1] + 1) * every[1] if every[1] > 0 else None
    trainer.checkpoints.last, trainer.checkpoints.last_step = path, step
    trainer.resumed_from = list(train_meta.get("resumed_from", [])) + [step]
    where = " (complete)" if train_meta["epoch_complete"] else ", call %d" % calls_done
    logging.info("resuming from %s: step %d, epoch %d%s", path, step, epoch, where)
    return state
