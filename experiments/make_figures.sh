#!/usr/bin/env bash
# Draws docs/figures/*.png from real data, from scratch, in a few minutes on a
# 2-core CPU:
#   1. builds Amazon Grocery 5-core into build/grocery (when not built yet);
#   2. trains DIN and BaseModel on it for 3 epochs (the model and optimiser
#      settings of experiments/configs/grocery_base.flags, at the learning
#      rate tuned for both in docs/RESULTS.md), into runs/figures/{din,base};
#   3. draws the training curves of both runs and DIN's attention over one
#      test user's history against several candidates. (The ablation charts
#      are the grids' own: docs/results/<grid>.png, drawn with their tables.)
#
#   experiments/make_figures.sh                 # or: make figures (into runs/figures)
#   OUT=docs/figures experiments/make_figures.sh  # or: make docs-figures
#
# Environment: PYTHON (default .venv/bin/python, else python3), DATA
# (build/grocery), RUNS (runs/figures), OUT (runs/figures), EPOCHS (3),
# ATTENTION_SAMPLE (test sample whose history is shown; default: the first
# with 6 to 16 history items of 3 or more categories). Extra arguments go to
# both train.py runs.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DATA=${DATA:-build/grocery}
RUNS=${RUNS:-runs/figures}
OUT=${OUT:-runs/figures}
EPOCHS=${EPOCHS:-3}
SHARED=${SHARED:-data/amazon_grocery_5core}

if [ ! -f "$DATA/meta.json" ]; then
    "$PYTHON" data_prep/build.py --format interactions --input "$SHARED/train.csv" \
        --meta "$SHARED/item_meta.csv" --category_col i_category --output "$DATA"
fi

# 0.01 is the rate docs/RESULTS.md's tuning chose for both models on Grocery.
# An epoch is 304 micro-batches of 512 = 16 host calls of 19; evaluating every
# 4 calls puts 4 evenly spaced points per epoch on the validation curves.
common=(--dataset="$DATA" --max_seq_len=30 --attention_size=32 --attention_hidden=80,40 --mlp_hidden=80,40
        --activation=prelu --optimizer=adam --learning_rate=0.01 --micro_batch_size=512
        --eval_micro_batch_size=2048 --device_iterations=19 --eval_every=76 --epochs="$EPOCHS"
        --resample_negatives --select_metric=gauc --checkpoint_every=0 --log_every=1000 --seed=1
        --progress=log --progress_seconds=15)

for model in din base; do
    # A rerun starts over rather than refusing (or resuming) a previous one.
    rm -rf "${RUNS:?}/$model"
    echo "== training $model into $RUNS/$model" >&2
    "$PYTHON" experiments/train.py "${common[@]}" --model="$model" --model_path="$RUNS/$model" "$@"
done

attention=()
if [ -n "${ATTENTION_SAMPLE:-}" ]; then attention=(--attention_sample="$ATTENTION_SAMPLE"); fi
written=$("$PYTHON" experiments/plot.py --runs="$RUNS/din,$RUNS/base" --labels="DIN,BaseModel" \
    --attention_run="$RUNS/din" ${attention[@]+"${attention[@]}"} --out_dir="$OUT")
echo "$written"
# plot.py skips a figure it cannot draw with a warning (right for train.py
# --plots); here every figure is the point.
for name in training_curves attention; do
    if ! grep -qxF "$OUT/$name.png" <<<"$written"; then
        echo "make_figures.sh: error: $OUT/$name.png was not drawn (see the warnings above)" >&2
        exit 1
    fi
done
