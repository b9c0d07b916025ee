"""Scores a split with a trained checkpoint; prints throughput, latency and metrics.

    python experiments/infer.py --model_path runs/amazon_sample

The model, its sizes and the dataset come from the checkpoint's metadata;
flags given explicitly override them (a model flag that changes a shape is
reported as a mismatch with the checkpoint). From the ``best`` checkpoint the
test metrics equal those train.py reported.

    python experiments/infer.py --model_path runs/synthetic --rank_candidates requests.jsonl --top_k 5

ranks candidate items for users instead: one JSON object per line in,
``{"history": [item, ...], "candidates": [item, ...], "user": id, "id": any}``,
one JSON object per line out (stdout or --rank_output),
``{"line": n, "id": ..., "user": id, "ranking": [{"item": i, "score": p}, ...]}``
(docs/WATCHING.md).
"""

import csv
import json
import os
import sys

import flag_defs
import numpy as np
from absl import flags

from din_jax import metrics as metrics_lib
from din_jax.checkpoint import CheckpointError, read_metadata
from din_jax.config import ConfigError, TrainConfig, config_from_checkpoint
from din_jax.data.dataset import DatasetError
from din_jax.inference import Predictor, read_rank_requests, resolve_checkpoint_dir
from din_jax.train.evaluation import predict_split
from din_jax.train.observers import ProgressHook
from din_jax.train.setup import load_source, load_variables_for_inference, vocabulary
from din_jax.train.step import make_p_predict_chunk, resolve_devices

flag_defs.define_model_flags()
flag_defs.define_run_flags(micro_batch_size=128, epochs=1)
flags.DEFINE_enum("checkpoint", "best", ["best", "last"], "Which checkpoint of --model_path to load.")
flags.DEFINE_string("split", "test", "Split to score.")
flags.DEFINE_string("predictions_file", None, "Write one CSV row per sample: index,user,label,logit,probability.")
flags.DEFINE_string("rank_candidates", None,
                    "Rank candidates instead of scoring a split: a JSON-lines file of "
                    "{\"history\": [item, ...], \"candidates\": [item, ...], \"user\": id, \"id\": any} "
                    "(docs/WATCHING.md).")
flags.DEFINE_integer("top_k", 10, "With --rank_candidates: how many candidates to return per line.")
flags.DEFINE_string("rank_output", None, "With --rank_candidates: write the rankings here instead of stdout.")
flags.DEFINE_enum("progress", "auto", ["auto", "bar", "log", "none"],
                  "Progress of the scoring: bar (tqdm), log (a line every --progress_seconds), auto (bar when stderr "
                  "is a terminal, else log), none.")
flags.DEFINE_float("progress_seconds", 30.0, "Seconds between progress lines of --progress log.")
flag_defs.define_aliases()
FLAGS = flags.FLAGS


def _config(meta) -> TrainConfig:
    """The checkpoint's settings, the flags given explicitly winning; this command's batch settings always."""
    overrides = dict(flag_defs.explicit_overrides(), preset=FLAGS.preset)
    for name in ("micro_batch_size", "device_iterations", "replicas", "prefetch"):
        overrides[name] = FLAGS[name].value
    return config_from_checkpoint(meta, overrides).validate()


def _write_predictions(path, out):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "user", "label", "logit", "probability"])
        probabilities = 1.0 / (1.0 + np.exp(-out["logits"].astype(np.float64)))
        for i in range(len(out["logits"])):
            writer.writerow([i, int(out["user"][i]), int(out["label"][i]), "%.7g" % out["logits"][i], "%.7g" % probabilities[i]])
    os.replace(tmp, path)


def _rank_candidates(path: str) -> None:
    """Ranks the candidates of every line of --rank_candidates with the checkpoint at ``path``."""
    if FLAGS.top_k < 1:
        raise ConfigError("--top_k must be >= 1, got %d" % FLAGS.top_k)
    predictor = Predictor.from_checkpoint(path)
    requests = read_rank_requests(FLAGS.rank_candidates, predictor)
    lines = []
    for request in requests:
        ranking = predictor.rank(request.history, request.candidates, k=FLAGS.top_k, user=request.user or 0)
        row = {"line": request.line}
        if request.id is not None:
            row["id"] = request.id
        row["user"] = request.user
        row["ranking"] = [{"item": item, "score": score} for item, score in ranking]
        lines.append(json.dumps(row))
    text = "\n".join(lines) + "\n"
    if FLAGS.rank_output:
        with open(FLAGS.rank_output + ".tmp", "w") as handle:
            handle.write(text)
        os.replace(FLAGS.rank_output + ".tmp", FLAGS.rank_output)
        sys.stderr.write("ranked %d request(s) with %s: %s\n" % (len(requests), path, FLAGS.rank_output))
    else:
        sys.stdout.write(text)


def _check_writable(flag: str) -> None:
    """Fails before any scoring when an output file's folder cannot take it."""
    path = FLAGS[flag].value
    if not path:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ConfigError("--%s %s is a directory; give a file name" % (flag, path))
    if not os.path.isdir(folder):
        raise ConfigError("--%s %s: the folder %s does not exist" % (flag, path, folder))
    if not os.access(folder, os.W_OK):
        raise ConfigError("--%s %s: the folder %s is not writable" % (flag, path, folder))


def main(argv):
    try:
        flag_defs.import_user_modules()
        _check_writable("predictions_file")
        _check_writable("rank_output")
    except ConfigError as error:
        flag_defs.fail("infer.py", error)
    if FLAGS.rank_candidates:
        try:
            if not FLAGS.model_path:
                raise ConfigError("--model_path is required (a run directory of train.py or a checkpoint directory)")
            _rank_candidates(resolve_checkpoint_dir(FLAGS.model_path, FLAGS.checkpoint))
        except (ConfigError, CheckpointError, ValueError, OSError) as error:
            flag_defs.fail("infer.py", error)
        return
    try:
        if not FLAGS.model_path:
            raise ConfigError("--model_path is required (a run directory of train.py or a checkpoint directory)")
        if FLAGS.epochs < 1:
            raise ConfigError("--epochs must be >= 1")
        path = resolve_checkpoint_dir(FLAGS.model_path, FLAGS.checkpoint)
        meta = read_metadata(path)
        config = _config(meta)
        source = load_source(config)
        vocab = vocabulary(source)
        trained = meta.get("vocabulary", vocab)
        if trained != vocab:
            raise CheckpointError("checkpoint %s was trained with vocabulary %s but the dataset has %s" % (path, trained, vocab))
        if FLAGS.split not in source.split_names():
            raise ConfigError("--split %s: the dataset has splits %s" % (FLAGS.split, source.split_names()))
        model, variables = load_variables_for_inference(path, config, vocab)
        devices = resolve_devices(config.replicas)
        scored = make_p_predict_chunk(model, devices)
        progress = ProgressHook(FLAGS.progress, FLAGS.progress_seconds) if FLAGS.progress != "none" else None

        def p_predict(variables_, chunk):
            out_ = scored(variables_, chunk)
            if progress is not None:
                progress.on_predict_call({"split": FLAGS.split, "samples": int(np.size(chunk["label"]))})
            return out_

        timing = {}
        for _ in range(FLAGS.epochs):
            if progress is not None:
                progress.on_evaluation_begin({"split": FLAGS.split, "samples": source.num_samples(FLAGS.split)})
            out = predict_split(p_predict, variables, source, FLAGS.split, devices, config.micro_batch_size,
                                config.device_iterations, config.max_seq_len, config.prefetch,
                                timing=timing if not timing else {"calls": timing["calls"], "compile_s": 0.0},
                                length_buckets=config.length_buckets)
        if progress is not None:
            progress.on_close({})
        result = metrics_lib.evaluate_predictions(out["user"], out["label"], out["logits"])
    except (ConfigError, DatasetError, CheckpointError, ValueError, OSError) as error:
        flag_defs.fail("infer.py", error)

    seconds = sum(t for t, _ in timing["calls"])
    micro_batches = sum(k for _, k in timing["calls"]) * len(devices)
    # Real samples only: the padding that fills the last micro-batches is not throughput.
    samples = len(out["logits"]) * FLAGS.epochs
    print("checkpoint %s (step %s), split %s, %d samples, %d replica(s) on %s, %s"
          % (path, meta.get("step"), FLAGS.split, len(out["logits"]), len(devices), devices[0].platform, config.data_type))
    print("compilation %.2f s; throughput %.0f samples/s; latency %.3f ms per micro-batch of %d (over %d call(s))"
          % (timing["compile_s"], samples / seconds, 1000.0 * seconds * len(devices) / micro_batches,
             config.micro_batch_size, len(timing["calls"])))
    print("%s gauc %.5f  auc %.5f  logloss %.5f  accuracy %.4f" % (
        FLAGS.split, result["gauc"], result["auc"], result["logloss"], result["accuracy"]))
    if FLAGS.predictions_file:
        try:
            _write_predictions(FLAGS.predictions_file, out)
        except OSError as error:
            flag_defs.fail("infer.py", error)
        print("predictions: %s" % FLAGS.predictions_file)


if __name__ == "__main__":
    flag_defs.run(main)
