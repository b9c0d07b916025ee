"""Runs an ablation grid on one dataset: every configuration tuned alike, then trained once per seed.

    python experiments/ablate.py --flagfile experiments/configs/paper_grocery.flags

The grid is the product of ``--variant`` (named sets of flags) and the axes
``--grid_models``, ``--grid_attentions``, ``--grid_activations`` and
``--grid_regularizers`` (each optional); every other flag is the base
configuration of every run (the train.py flags). Each configuration first
runs every ``--tune`` candidate with ``--tune_seed`` and keeps the best on
validation, then runs once per ``--seeds`` with it. Every run appends one
JSON line to ``--results`` (default runs/ablation/results.jsonl), naming the
code version; re-running skips the runs finished by the same code with the
same configuration (``--reuse_other_versions`` relaxes that). Writes
``--report``.md / .csv / .png (mean ± std over seeds, RelaImpr against
``--baseline``). ``--import_module`` loads Python files or modules first, to
register one's own attention, activation or model (see docs/RESULTS.md).
"""

import dataclasses
import os
import sys
from typing import Any, Dict

import flag_defs
import jax
from absl import flags, logging

from din_jax import ablation
from din_jax.config import ConfigError, resolve_config
from din_jax.fileio import LockHeld
from din_jax.train.loop import TrainingInterrupted, train_and_evaluate

flag_defs.define_model_flags()
flag_defs.define_run_flags(micro_batch_size=32, epochs=2)
flags.DEFINE_multi_string("variant", [], "A named configuration, 'NAME: --flag=value --flag=value' (repeatable).")
flags.DEFINE_list("grid_models", [], "Grid axis: model names (din_jax.models.MODELS).")
flags.DEFINE_list("grid_attentions", [], "Grid axis: attention names (din, din_softmax, dot, mean, sum, ...).")
flags.DEFINE_list("grid_activations", [], "Grid axis: MLP activations (sigmoid, relu, prelu, dice, ...).")
flags.DEFINE_list("grid_regularizers", [], "Grid axis: none, mba[=lambda], l2[=coefficient], dropout[=rate].")
flags.DEFINE_list("seeds", ["1", "2", "3"], "Seeds of the final runs of every configuration.")
flags.DEFINE_multi_string(
    "tune",
    [],
    "A tuning candidate, 'LABEL: --flag=value ...' (repeatable); every "
    "configuration runs each with --tune_seed and keeps the best on validation.",
)
flags.DEFINE_integer("tune_seed", 0, "Seed of the tuning runs.")
flags.DEFINE_string(
    "results", "runs/ablation/results.jsonl", "JSON-lines results file (appended to; shared between grids)."
)
flags.DEFINE_string("report", None, "Output prefix of the tables and chart (default: --results without .jsonl).")
flags.DEFINE_string("baseline", "base", "Configuration label that RelaImpr is measured against.")
flags.DEFINE_string("highlight", None, "Configuration label to compare against every other one in the report.")
flags.DEFINE_string("title", None, "Chart title.")
flags.DEFINE_bool("retry_failed", True, "Run again the runs that failed in an earlier invocation.")
flags.DEFINE_bool("dry_run", False, "List the runs (and which are done) without training.")
flags.DEFINE_bool(
    "reuse_other_versions",
    False,
    "Reuse finished runs recorded by other code versions (or a dirty tree) too, with a warning; by "
    "default a run is reused only when its commit and whole configuration match.",
)
flag_defs.define_aliases()
FLAGS = flags.FLAGS


def build_cells():
    variants = [ablation.parse_labelled_overrides(text) for text in FLAGS.variant]
    return ablation.expand_grid(
        variants, FLAGS.grid_models, FLAGS.grid_attentions, FLAGS.grid_activations, FLAGS.grid_regularizers
    )


def make_config_factory(base: Dict[str, Any]):
    """Overrides (flag words) -> TrainConfig: the base flags with the overrides on top (a later flag wins)."""

    def make_config(words):
        overrides = dict(base, **flag_defs.parse_flag_words(words))
        preset = overrides.pop("preset", FLAGS.preset)
        # The runs keep no checkpoints: the results file is the record.
        return dataclasses.replace(resolve_config(preset, overrides, flag_defs.command_defaults()), model_path=None)

    return make_config


def main(argv):
    try:
        if not FLAGS.results:
            raise ConfigError("--results: give a FILE.jsonl")
        flag_defs.import_user_modules()
        cells = build_cells()
        candidates = [ablation.parse_labelled_overrides(text) for text in FLAGS.tune]
        seeds = [int(seed) for seed in FLAGS.seeds]
        make_config = make_config_factory(flag_defs.explicit_overrides())
        make_config(())  # fail early on a bad base configuration
    except (ConfigError, ValueError) as error:
        flag_defs.fail("ablate.py", error)
    report = FLAGS.report or os.path.splitext(FLAGS.results)[0]
    baseline, highlight, title, dry_run = FLAGS.baseline, FLAGS.highlight, FLAGS.title, FLAGS.dry_run
    logging.info(
        "grid: %d configuration(s) x (%d tuning candidate(s) + %d seed(s))", len(cells), len(candidates), len(seeds)
    )
    try:
        options = dict(candidates=candidates, tune_seed=FLAGS.tune_seed, select_metric=FLAGS.select_metric)
        options.update(retry_failed=FLAGS.retry_failed, dry_run=dry_run, stop_exceptions=(TrainingInterrupted,))
        options.update(reuse_other_versions=FLAGS.reuse_other_versions)
        outcome = ablation.run_grid(cells, seeds, FLAGS.results, make_config, _train, **options)
    except LockHeld as error:
        flag_defs.fail("ablate.py", error)
    if dry_run:
        print(
            "%d run(s) to do, %d done"
            % (sum(1 for r in outcome.records.values() if r["status"] == "planned"), len(set(outcome.skipped)))
        )
        return
    paths = ablation.write_reports(outcome, report, baseline=baseline, title=title or "", highlight=highlight)
    with open(paths["markdown"], encoding="utf-8") as handle:
        print(handle.read())
    print(
        "ran %d, skipped %d (done earlier), failed %d, interrupted earlier %d; wrote %s"
        % (
            len(outcome.ran),
            len(outcome.skipped),
            len(set(outcome.failed)),
            len(outcome.interrupted),
            ", ".join(sorted(paths.values())),
        )
    )
    if outcome.failed:
        sys.exit(1)


def _train(config):
    summary = train_and_evaluate(config)
    clear = getattr(jax, "clear_caches", None)
    if clear is not None:
        clear()  # one compiled program per run: do not let them pile up over a long grid
    return summary


if __name__ == "__main__":
    flag_defs.run(main)
