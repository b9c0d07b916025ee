"""Trains a model, keeps the best step on validation, reports test once.

    python experiments/train.py --flagfile experiments/configs/amazon_sample.flags

Writes <model_path>/best (the selected checkpoint), <model_path>/last,
<model_path>/summary.json, training checkpoints <model_path>/checkpoints/step_N
(--checkpoint_every, --keep_checkpoints), TensorBoard events in
<model_path>/tensorboard and <model_path>/train_log.jsonl. SIGINT or SIGTERM
saves a checkpoint and exits with status 128 + the signal number; --resume
continues from the newest checkpoint exactly (docs/WATCHING.md).
"""

import json
import os
import sys

import flag_defs
from absl import logging

from din_jax.checkpoint import CheckpointError
from din_jax.config import ConfigError
from din_jax.data.dataset import DatasetError
from din_jax.train import observers as hooks_lib
from din_jax.train.loop import TrainingAborted, TrainingInterrupted, train_and_evaluate
from din_jax.train.step import NonFiniteLossError

flag_defs.define_model_flags()
flag_defs.define_run_flags(micro_batch_size=32, epochs=2)
flag_defs.define_checkpoint_flags()
flag_defs.define_watch_flags()
flag_defs.define_aliases()
FLAGS = flag_defs.FLAGS


def _row(name, metrics):
    if not metrics:
        return "%-10s (none)" % name
    # GAUC skips users with one class only; how many users it rests on says how much it can be trusted.
    return "%-10s gauc %.5f  auc %.5f  logloss %.5f  (%d samples; gauc over %d users)" % (
        name,
        metrics["gauc"],
        metrics["auc"],
        metrics["logloss"],
        metrics["samples"],
        metrics.get("gauc_users", 0),
    )


def _exit_alone(code: int) -> None:
    """Exits, in a multi-process run without waiting for the other processes.

    The JAX runtime's shutdown at exit waits for every process; after a stop
    at once, or when another process is gone, it would wait forever.
    """
    if FLAGS.num_processes <= 1:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv):
    try:
        flag_defs.import_user_modules()
        flag_defs.initialize_distributed()
        config = flag_defs.build_train_config()
        flag_defs.check_output_dir("model_path", config.model_path)
        hooks = hooks_lib.make_hooks(
            config,
            progress=FLAGS.progress,
            progress_seconds=FLAGS.progress_seconds,
            tensorboard=FLAGS.tensorboard,
            attention_histograms=FLAGS.attention_histograms,
            train_log=FLAGS.train_log,
        )
        summary = train_and_evaluate(config, hooks=hooks)
    except TrainingAborted as stop:
        sys.stderr.write("train.py: %s\n" % stop)
        _exit_alone(128 + stop.signum if stop.signum else 1)
    except TrainingInterrupted as stop:
        sys.stderr.write("train.py: %s\n" % stop)
        sys.exit(128 + stop.signum if stop.signum else 1)
    except KeyboardInterrupt:
        # A second Ctrl-C while the first one's checkpoint is being written.
        sys.stderr.write("train.py: interrupted again: stopped without waiting for the checkpoint\n")
        _exit_alone(130)
    except (ConfigError, DatasetError, CheckpointError, NonFiniteLossError, ValueError, OSError) as error:
        flag_defs.fail("train.py", error)
    except RuntimeError as error:
        if FLAGS.num_processes <= 1:
            raise
        # What the others see when one process of a multi-process run is gone:
        # the next collective fails (e.g. "Gloo all-reduce failed: Connection closed by peer").
        sys.stderr.write(
            "train.py: error: process %d: a collective with the other processes failed (%s); another "
            "process stopped or died; restart every process with --resume to continue from the newest "
            "checkpoint\n" % (FLAGS.process_id, str(error).strip().splitlines()[0][:300])
        )
        _exit_alone(1)
    if not config.model_path:
        logging.warning("no --model_path given: nothing was saved")
    rate = summary["samples_per_s"]
    print(
        "best step %d of %d (selected on validation %s); training throughput %s samples/s%s"
        % (
            summary["best_step"],
            summary["steps"],
            config.select_metric,
            "%.0f" % rate if rate else "n/a",
            " (includes compilation: every call compiled a new program)"
            if summary.get("samples_per_s_includes_compilation")
            else "",
        )
    )
    print(_row("validation", summary["validation"]))
    print(_row("test", summary["test"]))
    if config.model_path:
        print("summary: %s" % json.dumps({"model_path": config.model_path, "best_step": summary["best_step"]}))
    stopped = summary.get("stopped") or {}
    if stopped.get("reason") == "early_stop":
        print("stopped early: %s" % stopped["message"])
    if FLAGS.plots and config.model_path:
        try:
            from din_jax import plots
        except ImportError as error:
            logging.warning("--plots needs matplotlib: %s", error)
        else:
            for path in plots.write_run_figures(config.model_path):
                print("figure: %s" % path)
    if stopped.get("reason") == "non-finite":
        # The results above are those of the best step before it; the exit status says the run did not finish.
        scored = "test was scored with step %d" % summary["best_step"] if summary["test"] else "no step was scored"
        sys.stderr.write("train.py: error: %s; %s\n" % (stopped["message"], scored))
        sys.exit(1)


if __name__ == "__main__":
    flag_defs.run(main)
