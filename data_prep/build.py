r"""Builds a din_jax dataset directory from any supported source (one command).

  python data_prep/build.py --format FORMAT --input PATH [--meta PATH] --output DIR \
      [--max_seq_len 100] [--seed 1234] [--overwrite] [--strict]

Formats: amazon (raw review + metadata files), din (the authors' dataset.pkl
or its CSV export), dien (the DIEN / Graphcore folder), interactions (a
CSV/TSV/Parquet table), sequences (one line per user + item attributes
JSON), remapped (the output of remap.py). See docs/DATA.md.
"""

import os
import sys

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.builder import build_dataset, summarize  # noqa: E402
from data_prep.cli import require_flags, run_app, run_safely  # noqa: E402
from data_prep.importers.common import BuildOptions  # noqa: E402
from data_prep.report import BuildReport  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("format", None, "Source format: amazon, din, dien, interactions, sequences or remapped.")
flags.DEFINE_string(
    "input",
    None,
    "Main input: review file, dataset.pkl / CSV folder, DIEN folder, table, sequence file or remap.py directory.",
)
flags.DEFINE_string("meta", None, "Item metadata: Amazon metadata file, item table, attributes JSON or DIEN item-info.")
flags.DEFINE_string("output", None, "Dataset directory to create.")
flags.DEFINE_string("name", None, "Dataset name for meta.json (default: the output folder name).")
flags.DEFINE_integer("max_seq_len", 100, "History length the frequency arrays count (batches cut to the last T).")
flags.DEFINE_integer("seed", 1234, "Seed of the negatives and of the validation users.")
flags.DEFINE_bool("overwrite", False, "Replace an existing dataset directory (atomically).")
flags.DEFINE_bool("strict", False, "Fail at the first malformed input line instead of counting it.")
flags.DEFINE_bool(
    "authors_split",
    False,
    "Protocol formats: the DIN authors' split (train b2..b(n-1), test bn, "
    "no validation) instead of train b2..b(n-2), validation b(n-1), test bn.",
)
flags.DEFINE_enum(
    "din_validation",
    "users",
    ["users", "last", "none"],
    "din/dien formats: validation = a fraction of training users (users), each user's last "
    "training position pair (last), or none.",
)
flags.DEFINE_float("validation_users", 0.1, "din/dien formats: fraction of training users moved to validation.")
flags.DEFINE_integer("users", 0, "din CSV: user vocabulary size (default: largest user id + 1).")
flags.DEFINE_string("user_col", "user_id", "interactions: user column.")
flags.DEFINE_string("item_col", "item_id", "interactions: item column (also in the --meta item table).")
flags.DEFINE_string("category_col", "category", "interactions: category column (input or --meta table; '' = none).")
flags.DEFINE_string("time_col", "time", "interactions: time column (numbers or dates; '' = file order).")
flags.DEFINE_string("sep", "", "interactions: field separator (default: detected; tab, comma, ;, | or a space).")
flags.DEFINE_string(
    "columns",
    "",
    "interactions: the column names of a headerless input table, e.g. user_id,item_id,category,event,time.",
)
flags.DEFINE_string(
    "category_sep",
    "",
    "interactions: split category cells holding several values ('Action Comedy' with ' ', 'a|b' with '|'); "
    "--category_rule picks one.",
)
flags.DEFINE_enum(
    "category_rule",
    "last",
    ["last", "first"],
    "sequences: which attribute of an item is its category (last = deepest category); interactions with "
    "--category_sep (or list cells of Parquet): which of a cell's values.",
)
flags.DEFINE_string(
    "keep_rows",
    "",
    "interactions: COLUMN=V1,V2: keep only the rows whose COLUMN is one of the values (e.g. event=buy).",
)
flags.DEFINE_enum(
    "repeats",
    "keep",
    ["keep", "first"],
    "interactions: keep every interaction, or only a user's first with each item (drops repeat consumption).",
)
flags.DEFINE_integer("workers", 2, "amazon: processes reading the two files (1 = one after the other).")


def main(argv):
    def work():
        require_flags(format=FLAGS.format, input=FLAGS.input, output=FLAGS.output)
        options = BuildOptions(
            format=FLAGS.format,
            input=FLAGS.input,
            meta=FLAGS.meta,
            seed=FLAGS.seed,
            max_seq_len=FLAGS.max_seq_len,
            protocol="authors" if FLAGS.authors_split else "validation",
            validation_users=FLAGS.validation_users,
            din_validation=FLAGS.din_validation,
            users=FLAGS.users,
            user_col=FLAGS.user_col,
            item_col=FLAGS.item_col,
            category_col=FLAGS.category_col,
            time_col=FLAGS.time_col,
            sep=FLAGS.sep,
            category_rule=FLAGS.category_rule,
            workers=FLAGS.workers,
            columns=FLAGS.columns,
            category_sep=FLAGS.category_sep,
            keep_rows=FLAGS.keep_rows,
            repeats=FLAGS.repeats,
        )
        report = BuildReport(strict=FLAGS.strict)
        meta = build_dataset(
            options, FLAGS.output, overwrite=FLAGS.overwrite, strict=FLAGS.strict, name=FLAGS.name, report=report
        )
        print("\n".join(summarize(meta, report)))

    run_safely("build.py", work)


if __name__ == "__main__":
    run_app(main)
