r"""Figures of runs: training curves, attention over one user's history, ablation bars.

    experiments/make_figures.sh      # runs/figures: trains on Grocery, then runs this
    python experiments/plot.py --runs runs/synthetic --out_dir figures
    python experiments/plot.py --runs runs/din,runs/base --labels DIN,BaseModel \
        --ablation_results runs/ablation/results.jsonl --out_dir figures

Writes into --out_dir (default <first run>/plots):
  training_curves.png  loss and validation GAUC against steps of every run;
  attention.png        the attention weights of one user's history against
                       several candidates, from the first run's best
                       checkpoint (models with attention only);
  ablation.png         mean test GAUC ± std over seeds per configuration,
                       from the ablation harness's JSON-lines results.
"""

import os

import flag_defs
from absl import app, flags, logging

from din_jax.ablation import format_versions, load_records

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", [], "Run directories of train.py (summary.json, train_log.jsonl, best/).")
flags.DEFINE_list("labels", [], "Legend labels of --runs (default: their directory names).")
flags.DEFINE_string("metric", "gauc", "Validation metric of the training curves.")
flags.DEFINE_bool("attention", True, "Draw the attention figure of the first run (or --attention_run).")
flags.DEFINE_string("attention_run", None, "Run (or checkpoint) directory of the attention figure.")
flags.DEFINE_integer(
    "attention_sample",
    None,
    "Sample index (in the test split) whose history is shown; default: the first with 6-16 items "
    "of 3 or more categories.",
)
flags.DEFINE_enum(
    "attention_scale",
    "auto",
    ["auto", "global", "rows"],
    "Colours of the attention figure: one scale for all cells (global), each candidate's row from "
    "its smallest to its largest weight magnitude (rows), or rows when the rows differ from each "
    "other much more than within themselves (auto).",
)
flags.DEFINE_string("ablation_results", None, "JSON-lines results of experiments/ablate.py to chart.")
flags.DEFINE_string("ablation_metric", "gauc", "Metric of the ablation chart.")
flags.DEFINE_string("ablation_split", "test", "Split of the ablation chart's metric.")
flags.DEFINE_string("out_dir", None, "Where the PNGs go (default: <first run>/plots, or ./plots).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    try:
        from din_jax import plots
    except ImportError as error:
        flag_defs.fail("plot.py", ImportError("plotting needs matplotlib (pip install matplotlib): %s" % error))
    if not FLAGS.runs and not FLAGS.ablation_results and not FLAGS.attention_run:
        raise app.UsageError("give --runs, --attention_run and/or --ablation_results")
    out_dir = FLAGS.out_dir or (os.path.join(FLAGS.runs[0], "plots") if FLAGS.runs else "plots")
    written = []
    try:
        if FLAGS.runs:
            written.append(
                plots.plot_training_curves(
                    FLAGS.runs,
                    os.path.join(out_dir, "training_curves.png"),
                    labels=FLAGS.labels or None,
                    metric=FLAGS.metric,
                )
            )
        attention_run = FLAGS.attention_run or (FLAGS.runs[0] if FLAGS.runs else None)
        if FLAGS.attention and attention_run:
            path = plots.write_attention_figure(
                attention_run,
                os.path.join(out_dir, "attention.png"),
                sample=FLAGS.attention_sample,
                scale=FLAGS.attention_scale,
            )
            if path:
                written.append(path)
        if FLAGS.ablation_results:
            records = load_records(FLAGS.ablation_results, strict=True)
            versions = format_versions(records)
            if versions.startswith("Code versions:"):
                logging.warning("%s: %s", FLAGS.ablation_results, versions)
            written.append(
                plots.plot_ablation(
                    records,
                    os.path.join(out_dir, "ablation.png"),
                    metric=FLAGS.ablation_metric,
                    split=FLAGS.ablation_split,
                    note=versions,
                )
            )
    except plots.SampleOutOfRangeError as error:
        flag_defs.fail(
            "plot.py",
            "--attention_sample %d is out of range: the %s split of %s has samples 0 to %d"
            % (error.sample, error.split, attention_run, error.size - 1),
        )
    except (OSError, ValueError) as error:
        flag_defs.fail("plot.py", error)
    for path in written:
        print(path)


if __name__ == "__main__":
    flag_defs.run(main)
