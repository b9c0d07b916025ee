"""Measures training or inference throughput per micro-batch size; writes results_<mode>.csv.

    python experiments/benchmark.py --mode train --optimizer sgd --micro_batch_sizes 32 \\
        --lengths uniform:1:100 --output_dir runs/benchmark
    python experiments/benchmark.py --mode infer --micro_batch_sizes 4096 --output_dir runs/benchmark

The model flags default to the configuration of docs/PERFORMANCE.md (item 32 +
category 32 + user 32, attention 80-40 sigmoid, MLP 200-80 PReLU) at the
Amazon Electronics vocabulary; --preset and every model flag of train.py
apply. Compilation is excluded from the timing and reported (compile_s); the
throughput is the median over --windows passes over the data pool
(din_jax/benchmark.py describes the method).
"""

import flag_defs
from absl import flags

from din_jax import benchmark
from din_jax.config import DATA_TYPES, EMBEDDING_UPDATES, OPTIMIZERS, ConfigError, resolve_model
from din_jax.data.dataset import DatasetError

flag_defs.define_model_flags()
flags.FLAGS.set_default("attention_size", 64)  # the defaults of docs/PERFORMANCE.md (resolve_model below)
flags.FLAGS.set_default("user_dim", 32)
flags.DEFINE_enum("mode", "train", list(benchmark.MODES), "Measure training or inference.")
flags.DEFINE_list("micro_batch_sizes", ["32"], "Micro-batch sizes (samples per device), one result row each.")
flags.DEFINE_integer("device_iterations", 0, "Micro-batches per host call; 0: about 2,048 samples per call.")
flags.DEFINE_integer("replicas", 1, "Data-parallel devices; 0 uses every local device.")
flags.DEFINE_enum("optimizer", "sgd", list(OPTIMIZERS), "Training optimiser.")
flags.DEFINE_float("learning_rate", None, "Learning rate (default 0.1; 0.001 for adam).")
flags.DEFINE_enum(
    "embedding_updates",
    "sparse",
    list(EMBEDDING_UPDATES),
    "sparse: update only the looked-up embedding rows (lazy Adam); dense: whole tables.",
)
flags.DEFINE_enum("data_type", "float32", list(DATA_TYPES), "Compute dtype (parameters stay float32).")
flags.DEFINE_string(
    "lengths",
    "uniform:1:100",
    "History lengths of the synthetic data: uniform:LO:HI, full:N or electronics (the Amazon "
    "Electronics training set's distribution).",
)
flags.DEFINE_string("dataset", None, "A dataset directory (data_prep/build.py) to use instead of synthetic data.")
flags.DEFINE_string("split", None, "Split of --dataset (default: train for --mode train, test for infer).")
flags.DEFINE_integer("samples", 0, "Synthetic pool size; one timed window is one pass over it (0: automatic).")
flags.DEFINE_integer("max_seq_len", 100, "Histories are cut to their last max_seq_len items.")
flags.DEFINE_enum(
    "batching",
    "auto",
    ["auto", "packed", "padded"],
    "packed: each micro-batch's histories end to end in one buffer (train.py's default); padded: "
    "padded to max_seq_len, or to --length_buckets; auto: packed unless the model reads each history as a row "
    "(dien, bst: padded).",
)
flags.DEFINE_integer("packed_positions", 0, "Packed buffer length; 0: from the pool's lengths (as train.py).")
flags.DEFINE_list(
    "length_buckets",
    [],
    "With --batching padded: history-length buckets, e.g. 4,8,16,32,64,100 (one compiled program "
    "each); empty: every batch padded to max_seq_len.",
)
flags.DEFINE_integer("windows", 5, "Timed windows; the median is reported.")
flags.DEFINE_integer(
    "positions_per_pass",
    4096,
    "History positions (rows x length) computed per pass inside a "
    "micro-batch (cache-sized parts of large batches; training: sparse updates); 0: the whole "
    "micro-batch at once.",
)
flags.DEFINE_integer("prefetch", 2, "Chunks prepared ahead by the background thread; 0: none.")
flags.DEFINE_integer("seed", 0, "Seed of the data, the order and the initialisation.")
flags.DEFINE_list(
    "vocabulary", ["192403", "63001", "801"], "Synthetic users,items,categories (default: Amazon Electronics)."
)
flags.DEFINE_string("output_dir", "runs/benchmark", "Where results_train.csv / results_infer.csv go.")
flags.DEFINE_bool("matmul", False, "Also measure the backend's float32 matrix-multiply rate.")
flags.DEFINE_bool(
    "fold_query",
    True,
    "DIN attention: fold the query into a per-sample key matrix (one product per position instead "
    "of two, for histories of 32+ positions); --nofold_query measures the plain split form.",
)
for _name in (
    "micro_batch_sizes",
    "device_iterations",
    "data_type",
    "max_seq_len",
    "length_buckets",
    "embedding_updates",
    "output_dir",
    "positions_per_pass",
    "learning_rate",
):
    flags.DEFINE_alias(_name.replace("_", "-"), _name)
flag_defs.define_aliases()
FLAGS = flags.FLAGS


def main(argv):
    try:
        flag_defs.import_user_modules()
        values = {name: FLAGS[name].value for name in benchmark.COMMAND_SETTINGS}
        model = resolve_model(
            FLAGS.preset, flag_defs.explicit_overrides(), defaults={"attention_size": 64, "user_dim": 32}
        )
        config = benchmark.make_config(values, *model)
        if FLAGS.matmul:
            for shape, rate in benchmark.measure_matmul_rates():
                print("float32 matmul %s: %.1f GFLOP/s" % (shape, rate))
        rows = benchmark.run_benchmark(config, log=print)
    except (ConfigError, DatasetError, ValueError) as error:
        flag_defs.fail("benchmark.py", error)
    path = benchmark.write_results(rows, FLAGS.output_dir, config.mode)
    print(benchmark.format_table(rows))
    print("results: %s" % path)


if __name__ == "__main__":
    flag_defs.run(main)
