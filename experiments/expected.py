"""Prints the figures to expect for a run, from a grid's committed table (docs/results/<grid>.csv).

    python experiments/expected.py --table docs/results/paper_beauty.csv --rows din+mba,base

`make train` runs it after training, so that the run's own validation and test GAUC stand next to the mean ± std
over seeds that docs/RESULTS.md reports for the same configuration, and BaseModel's.
"""

import csv

import flag_defs
from absl import flags

flags.DEFINE_string("table", None, "A grid's CSV table (experiments/ablate.py writes it beside the Markdown one).")
flags.DEFINE_list("rows", [], "The configurations (the table's labels) to print.")
FLAGS = flags.FLAGS


def main(argv):
    try:
        with open(FLAGS.table, encoding="utf-8") as handle:
            rows = {row["label"]: row for row in csv.DictReader(handle)}
    except (OSError, TypeError) as error:
        flag_defs.fail("expected.py", "--table %s: %s" % (FLAGS.table, getattr(error, "strerror", None) or error))
    missing = [label for label in FLAGS.rows if label not in rows]
    if missing:
        flag_defs.fail("expected.py", "--rows: %s not in %s (it has %s)" % (missing, FLAGS.table, sorted(rows)))
    print("expected (%s, mean ± std over seeds; docs/RESULTS.md):" % FLAGS.table)
    for label in FLAGS.rows:
        row = rows[label]
        values = [float(row[name]) for name in ("validation_gauc_mean", "validation_gauc_std")]
        values += [float(row[name]) for name in ("test_gauc_mean", "test_gauc_std")]
        print(
            "  %-14s validation gauc %.4f ± %.4f  test gauc %.4f ± %.4f  (%s)"
            % ((label,) + tuple(values) + (row["tuned"],))
        )


if __name__ == "__main__":
    flag_defs.run(main)
