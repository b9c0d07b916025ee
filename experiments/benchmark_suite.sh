#!/usr/bin/env bash
# The measurements of docs/PERFORMANCE.md: the four target configurations, an
# Electronics-sized epoch, and every optimisation switched off one at a time.
#
#   experiments/benchmark_suite.sh [OUTPUT_DIR] [PYTHON]
#
# Each run writes OUTPUT_DIR/<name>/results_<mode>.csv (din_jax/benchmark.py
# describes the method) and its log; OUTPUT_DIR/summary.csv collects one row
# per run. Takes about 20 minutes on a 2-core CPU. Set SUITE_ONLY="name1 name2"
# to run a subset.
set -euo pipefail

if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
  exit 0
fi

OUT=${1:-docs/results/performance}
PYTHON=${2:-.venv/bin/python}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"

run() {
  local name=$1; shift
  if [[ -n "${SUITE_ONLY:-}" && " ${SUITE_ONLY} " != *" ${name} "* ]]; then return; fi
  echo "=== $name: $* ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a))"
  "$PYTHON" experiments/benchmark.py --output_dir "$OUT/$name" "$@" 2>&1 | tee "$OUT/$name/log.txt" | grep -v "^  window"
}
mkdir_all() { local dir; for dir in "$@"; do mkdir -p "$OUT/$dir"; done; }

TRAIN32="--mode train --optimizer sgd --micro_batch_sizes 32 --lengths uniform:1:100"
ADAM1024="--mode train --optimizer adam --micro_batch_sizes 1024 --lengths uniform:1:100"
INFER4096="--mode infer --micro_batch_sizes 4096 --lengths uniform:1:100"
ELECTRONICS="--mode train --optimizer sgd --micro_batch_sizes 32 --lengths electronics"
# Slow variants time fewer samples.
SMALL="--samples 32768 --windows 3"
W3="--samples 131072 --windows 3"

mkdir_all matmul train_sgd_32 train_adam_1024 infer_4096 train_sgd_32_electronics electronics_epoch \
  train_sgd_32_sizes infer_sizes \
  ablate_train_all_off ablate_train_padded ablate_train_buckets ablate_train_padded_no_fold ablate_train_no_split \
  ablate_train_dense ablate_train_k1 ablate_train_no_prefetch ablate_adam_dense ablate_adam_padded \
  ablate_adam_padded_no_passes ablate_adam_buckets ablate_infer_padded ablate_infer_padded_no_passes \
  ablate_infer_padded_no_fold ablate_infer_buckets ablate_infer_bfloat16 ablate_infer_float16 \
  ablate_electronics_padded ablate_electronics_buckets ablate_electronics_p90

# The machine's matrix-multiply rates (printed in the log).
run matmul --mode infer --micro_batch_sizes 4096 --matmul --samples 8192 --windows 1

# The DIN family's models side by side (docs/PERFORMANCE.md "DIEN, BST and multi-head attention"): each batching as
# train.py picks it (packed for din and din+mha, padded for dien and bst).
for spec in "din:--model din" "mha:--model din --attention mha" "dien:--model dien" "bst:--model bst"; do
  model=${spec%%:*}; flags=${spec#*:}
  mkdir_all "model_${model}_train_sgd_32" "model_${model}_train_adam_1024" "model_${model}_infer_4096" \
    "model_${model}_electronics"
  run "model_${model}_train_sgd_32" $TRAIN32 $SMALL $flags
  run "model_${model}_train_adam_1024" $ADAM1024 $SMALL $flags
  run "model_${model}_infer_4096" $INFER4096 $SMALL $flags
  run "model_${model}_electronics" $ELECTRONICS $SMALL $flags
done

# The targets.
run train_sgd_32 $TRAIN32
run train_adam_1024 $ADAM1024
run infer_4096 $INFER4096
run train_sgd_32_electronics $ELECTRONICS
# One epoch of an Electronics-sized training set (2,608,764 samples), and its peak memory.
run electronics_epoch $ELECTRONICS --samples 2608764 --windows 1

# Batch sizes.
run train_sgd_32_sizes --mode train --optimizer sgd --micro_batch_sizes 128,512 --lengths uniform:1:100 --windows 3
run infer_sizes --mode infer --micro_batch_sizes 128,1024 --lengths uniform:1:100 --windows 3

# One optimisation off at a time (train, micro-batch 32, SGD, uniform 1..100).
# Padded batches are the reference (the same batches as packed); length buckets change what is learned
# (docs/RESULTS.md) and are measured only as what they used to buy.
BUCKETS="--batching padded --length_buckets 4,8,16,24,32,40,50,60,70,80,90,100"
run ablate_train_all_off $TRAIN32 --nosplit_attention --embedding_updates dense --batching padded \
  --device_iterations 1 --prefetch 0 --samples 8192 --windows 3
run ablate_train_padded $TRAIN32 --batching padded $W3
run ablate_train_buckets $TRAIN32 $BUCKETS $W3
run ablate_train_padded_no_fold $TRAIN32 --batching padded --nofold_query $W3
run ablate_train_no_split $TRAIN32 --nosplit_attention $W3
run ablate_train_dense $TRAIN32 --embedding_updates dense $SMALL
run ablate_train_k1 $TRAIN32 --device_iterations 1 $SMALL
run ablate_train_no_prefetch $TRAIN32 --prefetch 0 $W3
# Train, micro-batch 1024, Adam.
run ablate_adam_dense $ADAM1024 --embedding_updates dense $SMALL
run ablate_adam_padded $ADAM1024 --batching padded $W3
run ablate_adam_padded_no_passes $ADAM1024 --batching padded --positions_per_pass 0 $W3
run ablate_adam_buckets $ADAM1024 $BUCKETS $W3
# Inference, batch 4096.
run ablate_infer_padded $INFER4096 --batching padded $W3
run ablate_infer_padded_no_passes $INFER4096 --batching padded --positions_per_pass 0 $W3
run ablate_infer_padded_no_fold $INFER4096 --batching padded --nofold_query $W3
run ablate_infer_buckets $INFER4096 $BUCKETS $W3
run ablate_infer_bfloat16 $INFER4096 --data_type bfloat16 $W3
run ablate_infer_float16 $INFER4096 --data_type float16 $W3
# Electronics lengths: padded, buckets, and packed with the buffer at the 90th percentile (more deferrals).
run ablate_electronics_padded $ELECTRONICS --batching padded $W3
run ablate_electronics_buckets $ELECTRONICS $BUCKETS $W3
run ablate_electronics_p90 $ELECTRONICS --packed_positions 376 $W3

# One row per run.
"$PYTHON" - "$OUT" <<'EOF'
import csv, glob, os, sys
out = sys.argv[1]
rows = []
for path in sorted(glob.glob(os.path.join(out, "*", "results_*.csv"))):
    for row in csv.DictReader(open(path)):
        row["run"] = os.path.basename(os.path.dirname(path))
        rows.append(row)
if rows:
    columns = ["run"] + [c for c in rows[0] if c != "run"]
    with open(os.path.join(out, "summary.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print("summary: %s (%d rows)" % (os.path.join(out, "summary.csv"), len(rows)))
EOF
