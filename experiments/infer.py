"""Scores a split with a trained checkpoint (throughput, latency, metrics), or ranks candidates.

    python experiments/infer.py --model_path runs/amazon_sample
    python experiments/infer.py --model_path runs/synthetic --rank_candidates requests.jsonl --top_k 5

The model, its sizes and the dataset come from the checkpoint; flags given explicitly override them. From
``best`` the test metrics equal those train.py reported. Rank requests: docs/WATCHING.md.
"""

import os
import sys

import flag_defs
from absl import flags

from din_jax.checkpoint import CheckpointError, read_metadata
from din_jax.config import ConfigError, TrainConfig, config_from_checkpoint
from din_jax.data.dataset import DatasetError
from din_jax.inference import Predictor, resolve_checkpoint_dir
from din_jax.rank_requests import rank_requests, read_rank_requests
from din_jax.train.evaluation import score_checkpoint, write_predictions
from din_jax.train.observers import ProgressHook

flag_defs.define_model_flags()
flag_defs.define_run_flags(micro_batch_size=128, epochs=1)
flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which checkpoint of --model_path to load.")
flags.DEFINE_string("split", "test", "Split to score.")
flags.DEFINE_string("predictions_file", None, "Write one CSV row per sample: index,user,label,logit,probability.")
flags.DEFINE_string(
    "rank_candidates",
    None,
    "Rank candidates instead of scoring a split: a JSON-lines file of "
    '{"history": [item, ...], "candidates": [item, ...], "user": id, "id": any} '
    "(docs/WATCHING.md).",
)
flags.DEFINE_integer("top_k", 10, "With --rank_candidates: how many candidates to return per line.")
flags.DEFINE_string("rank_output", None, "With --rank_candidates: write the rankings here instead of stdout.")
flags.DEFINE_enum(
    "rank_ids",
    "internal",
    ["internal", "raw"],
    "With --rank_candidates: the ids of the requests and rankings: internal (0 .. n-1) or raw (the dataset's own, "
    "e.g. ASINs, through its id maps; --dataset names the dataset when the checkpoint's path does not).",
)
flags.DEFINE_enum(
    "progress",
    "auto",
    ["auto", "bar", "log", "none"],
    "Progress of the scoring: bar (tqdm), log (a line every --progress_seconds), auto (bar when stderr "
    "is a terminal, else log), none.",
)
flags.DEFINE_float("progress_seconds", 30.0, "Seconds between progress lines of --progress log.")
flag_defs.define_aliases()
FLAGS = flags.FLAGS


def _config(meta) -> TrainConfig:
    """The checkpoint's settings, the flags given explicitly winning; this command's batch settings always."""
    overrides = dict(flag_defs.explicit_overrides(), preset=FLAGS.preset)
    for name in ("micro_batch_size", "device_iterations", "replicas", "prefetch"):
        overrides[name] = FLAGS[name].value
    return config_from_checkpoint(meta, overrides).validate()


def _rank_candidates(path: str) -> None:
    """Ranks the candidates of every line of --rank_candidates with the checkpoint at ``path``."""
    if FLAGS.top_k < 1:
        raise ConfigError("--top_k must be >= 1, got %d" % FLAGS.top_k)
    predictor = Predictor.from_checkpoint(path)
    if FLAGS.dataset:
        predictor.dataset = FLAGS.dataset
    raw = FLAGS.rank_ids == "raw"
    requests = read_rank_requests(FLAGS.rank_candidates, predictor, raw_ids=raw)
    text = "\n".join(rank_requests(predictor, requests, FLAGS.top_k, raw_ids=raw)) + "\n"
    if not FLAGS.rank_output:
        sys.stdout.write(text)
        return
    with open(FLAGS.rank_output + ".tmp", "w") as handle:
        handle.write(text)
    os.replace(FLAGS.rank_output + ".tmp", FLAGS.rank_output)
    sys.stderr.write("ranked %d request(s) with %s: %s\n" % (len(requests), path, FLAGS.rank_output))


def main(argv):
    try:
        flag_defs.import_user_modules()
        for flag in ("predictions_file", "rank_output"):
            flag_defs.check_output_file(flag, FLAGS[flag].value)
        if not FLAGS.model_path:
            raise ConfigError("--model_path is required (a run directory of train.py or a checkpoint directory)")
        if FLAGS.rank_candidates:
            return _rank_candidates(resolve_checkpoint_dir(FLAGS.model_path, FLAGS.checkpoint))
        if FLAGS.epochs < 1:
            raise ConfigError("--epochs must be >= 1")
        path = resolve_checkpoint_dir(FLAGS.model_path, FLAGS.checkpoint)
        meta = read_metadata(path)
        config = _config(meta)
        progress = ProgressHook(FLAGS.progress, FLAGS.progress_seconds) if FLAGS.progress != "none" else None
        scored = score_checkpoint(path, meta, config, FLAGS.split, FLAGS.epochs, progress)
        if FLAGS.predictions_file:
            write_predictions(FLAGS.predictions_file, scored["out"])
    except (ConfigError, DatasetError, CheckpointError, ValueError, OSError) as error:
        flag_defs.fail("infer.py", error)
    out, timing, devices, result = scored["out"], scored["timing"], scored["devices"], scored["metrics"]
    seconds = sum(t for t, _ in timing["calls"])
    micro_batches = sum(k for _, k in timing["calls"]) * len(devices)
    samples = len(out["logits"]) * FLAGS.epochs  # real samples: padding is not throughput
    print(
        "checkpoint %s (step %s), split %s, %d samples, %d replica(s) on %s, %s"
        % (path, meta.get("step"), FLAGS.split, len(out["logits"]), len(devices), devices[0].platform, config.data_type)
    )
    print(
        "compilation %.2f s; throughput %.0f samples/s; latency %.3f ms per micro-batch of %d (over %d call(s))"
        % (
            timing["compile_s"],
            samples / seconds,
            1000.0 * seconds * len(devices) / micro_batches,
            config.micro_batch_size,
            len(timing["calls"]),
        )
    )
    print(
        "%s gauc %.5f  auc %.5f  logloss %.5f  accuracy %.4f"
        % (FLAGS.split, result["gauc"], result["auc"], result["logloss"], result["accuracy"])
    )
    if FLAGS.predictions_file:
        print("predictions: %s" % FLAGS.predictions_file)


if __name__ == "__main__":
    flag_defs.run(main)
