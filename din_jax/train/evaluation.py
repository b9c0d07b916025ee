"""Scoring whole splits with a pmapped prediction program; metrics on the host."""

import csv
import inspect
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from absl import logging

from din_jax import metrics as metrics_lib
from din_jax.checkpoint import CheckpointError
from din_jax.config import ConfigError, TrainConfig
from din_jax.data.batching import (
    gather_chunk,
    normalize_buckets,
    plan_chunks,
    plan_packed_prediction,
    plan_split_chunks,
    prefetch,
)
from din_jax.train.setup import load_source, load_variables_for_inference, vocabulary
from din_jax.train.step import NonFiniteLossError, make_p_predict_chunk, replicate, resolve_devices


def predict_split(
    p_predict: Callable,
    variables: Dict[str, Any],
    source: Any,
    split: str,
    devices: List[Any],
    micro_batch_size: int,
    device_iterations: int,
    max_seq_len: int,
    prefetch_depth: int = 2,
    timing: Optional[Dict[str, Any]] = None,
    length_buckets: Sequence[int] = (),
    batching: str = "padded",
) -> Dict[str, np.ndarray]:
    """``user``, ``label`` and float32 ``logits`` of every sample of a split, in its stored order.

    ``variables`` (``{'params', 'batch_stats'}``) are on the host. With ``length_buckets`` the samples are scored
    grouped by length, one program per bucket; ``batching`` ``packed``: in packed micro-batches (the same logits).
    With a ``timing`` dict every program shape is compiled first (adding to ``timing['compile_s']``) and each call's
    wall time, from dispatch to results on the host, is appended to ``timing['calls']`` as ``(seconds,
    micro_batches)``.
    """
    count = source.num_samples(split)
    replicated = replicate(variables, devices)
    bucketed = len(normalize_buckets(length_buckets, max_seq_len)) > 1
    order, shape = np.arange(count), (len(devices), device_iterations, micro_batch_size)
    if batching == "packed" and not bucketed:
        plan = plan_packed_prediction(order, source.history_lengths(split, max_seq_len), *shape, max_seq_len)
    elif bucketed:
        plan = plan_split_chunks(source, split, order, max_seq_len, length_buckets, *shape, drop_remainder=False)
    else:
        plan = plan_chunks(order, *shape, drop_remainder=False)
    seq_lens = plan.seq_lens or [max_seq_len] * len(plan.calls)

    def chunks():
        for indices, seq_len in zip(plan.calls, seq_lens):
            yield gather_chunk(source, split, indices, seq_len, positions=plan.positions)

    if timing is not None:
        timing.setdefault("calls", [])
        start = time.perf_counter()
        for k, seq_len in sorted({(indices.shape[1], t) for indices, t in zip(plan.calls, seq_lens)}):
            first = next(indices for indices, t in zip(plan.calls, seq_lens) if indices.shape[1] == k and t == seq_len)
            jax.device_get(p_predict(replicated, gather_chunk(source, split, first, seq_len, positions=plan.positions)))
        timing["compile_s"] = timing.get("compile_s", 0.0) + time.perf_counter() - start

    users, labels, logits, positions = [], [], [], []
    for indices, chunk, valid in zip(plan.calls, prefetch(chunks(), prefetch_depth), plan.valid):
        start = time.perf_counter()
        out = np.asarray(jax.device_get(p_predict(replicated, chunk)))
        if timing is not None:
            timing["calls"].append((time.perf_counter() - start, out.shape[1]))
        # (R, K, B) -> (K, R, B): back to the order of plan_chunks; packed: the real slots (any order).
        keep = slice(None, valid) if not plan.positions else indices.transpose(1, 0, 2).reshape(-1) >= 0
        logits.append(out.transpose(1, 0, 2).reshape(-1)[keep])
        users.append(chunk["user"].transpose(1, 0, 2).reshape(-1)[keep])
        labels.append(chunk["label"].transpose(1, 0, 2).reshape(-1)[keep])
        positions.append(indices.transpose(1, 0, 2).reshape(-1)[keep])
    if (bucketed or plan.positions) and positions:  # back to the stored order
        inverse = np.argsort(np.concatenate(positions), kind="stable")
        users, labels, logits = ([np.concatenate(parts)[inverse]] for parts in (users, labels, logits))
    return {
        "user": np.concatenate(users) if users else np.zeros((0,), np.int32),
        "label": np.concatenate(labels) if labels else np.zeros((0,), np.float32),
        "logits": np.concatenate(logits).astype(np.float32) if logits else np.zeros((0,), np.float32),
    }


def evaluate_split(p_predict, variables, source, split, devices, config: TrainConfig) -> Dict[str, float]:
    """GAUC, AUC, logloss and accuracy of a split (host-side metrics)."""
    sizes = (config.eval_micro_batch_size, config.device_iterations, config.max_seq_len, config.prefetch)
    buckets = getattr(config, "length_buckets", ())
    batching = getattr(config, "batching", "padded")
    out = predict_split(p_predict, variables, source, split, devices, *sizes, length_buckets=buckets, batching=batching)
    if not np.all(np.isfinite(out["logits"])):
        raise NonFiniteLossError("the model's %s predictions are not finite" % split)
    return metrics_lib.evaluate_predictions(out["user"], out["label"], out["logits"])


def model_returns_attention(model) -> bool:
    """Whether a model's ``__call__`` takes ``return_attention`` (DIN does; the baselines do not)."""
    try:
        return "return_attention" in inspect.signature(type(model).__call__).parameters
    except (TypeError, ValueError):
        return False


def probe_attention(trainer: Any, variables: Dict[str, Any]) -> Optional[Any]:
    """A ``Trainer``'s attention-probe weights when an observer wants them and the model has them (else None)."""
    wanting = [hook for hook in trainer.hooks if getattr(hook, "wants_attention", False)]
    if trainer._attention_probe is None and wanting and trainer.is_chief:  # observers write on the chief only
        where = ("validation" if trainer.has_validation else "train", trainer.config.max_seq_len)
        samples = getattr(wanting[0], "attention_samples", 256)
        returns = model_returns_attention(trainer.eval_model)
        trainer._attention_probe = returns and AttentionProbe(trainer.eval_model, trainer.source, *where, samples)
        if not trainer._attention_probe:
            logging.info("model %s returns no attention weights: no attention histograms", trainer.config.model)
    return trainer._attention_probe(variables) if trainer._attention_probe else None


class AttentionProbe:
    """The attention weights of a fixed batch (the first ``samples`` of a split), for the observers' histograms."""

    def __init__(self, model, source: Any, split: str, max_seq_len: int, samples: int = 256):
        self.batch = source.gather(split, np.arange(min(samples, source.num_samples(split))), max_seq_len)
        self._weights = jax.jit(lambda v, b: model.apply(v, b, train=False, return_attention=True)[1])

    def __call__(self, variables: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
        """``(valid_BxT, weights_BxT)``: the real history positions, and the weights (zero elsewhere)."""
        weights_BxT = np.asarray(self._weights(variables, self.batch), np.float32)
        valid_BxT = np.arange(weights_BxT.shape[1])[None, :] < self.batch["hist_len"][:, None]
        return valid_BxT, np.where(valid_BxT, weights_BxT, 0.0)


def score_checkpoint(
    path: str, meta: Dict[str, Any], config: TrainConfig, split: str, passes: int = 1, progress: Any = None
) -> Dict[str, Any]:
    """Scores a split with a checkpoint as training did (``config_from_checkpoint``): predictions and timing.

    Args:
      passes: times the split is scored (throughput over several passes; compilation only in the first).
      progress: an observer told ``on_evaluation_begin``, ``on_predict_call`` and ``on_close``.

    Returns:
      ``out`` (user, label, logits), ``metrics``, ``timing`` (``compile_s``, ``calls``) and ``devices``.
    """
    source = load_source(config)
    vocab = vocabulary(source)
    trained = meta.get("vocabulary", vocab)
    if trained != vocab:
        raise CheckpointError(
            "checkpoint %s was trained with vocabulary %s but the dataset has %s" % (path, trained, vocab)
        )
    if split not in source.split_names():
        raise ConfigError("--split %s: the dataset has splits %s" % (split, source.split_names()))
    model, variables = load_variables_for_inference(path, config, vocab)
    devices = resolve_devices(config.replicas)
    scored = make_p_predict_chunk(model, devices)

    def p_predict(variables_, chunk):
        out_ = scored(variables_, chunk)
        if progress is not None:
            progress.on_predict_call({"split": split, "samples": int(np.size(chunk["label"]))})
        return out_

    timing: Dict[str, Any] = {}
    for _ in range(passes):
        if progress is not None:
            progress.on_evaluation_begin({"split": split, "samples": source.num_samples(split)})
        out = predict_split(
            p_predict,
            variables,
            source,
            split,
            devices,
            config.micro_batch_size,
            config.device_iterations,
            config.max_seq_len,
            config.prefetch,
            timing=timing if not timing else {"calls": timing["calls"], "compile_s": 0.0},
            length_buckets=config.length_buckets,
            batching=config.batching,
        )
    if progress is not None:
        progress.on_close({})
    metrics = metrics_lib.evaluate_predictions(out["user"], out["label"], out["logits"])
    return {"out": out, "metrics": metrics, "timing": timing, "devices": devices}


def write_predictions(path: str, out: Dict[str, np.ndarray]) -> None:
    """One CSV row per sample (index, user, label, logit, probability), replaced atomically."""
    probabilities = 1.0 / (1.0 + np.exp(-out["logits"].astype(np.float64)))
    with open(path + ".tmp", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "user", "label", "logit", "probability"])
        for i in range(len(out["logits"])):
            writer.writerow(
                [i, int(out["user"][i]), int(out["label"][i]), "%.7g" % out["logits"][i], "%.7g" % probabilities[i]]
            )
    os.replace(path + ".tmp", path)
