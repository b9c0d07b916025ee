"""Optimisers and learning-rate schedules."""

import math
from typing import Any, Callable, List, Tuple

import optax

from din_jax.config import ConfigError, TrainConfig


def read_lr_file(path: str) -> List[Tuple[int, float]]:
    """Reads a learning-rate file: lines ``STEP LR`` (or ``STEP,LR``), ``#`` comments.

    From step STEP on, the rate is LR; the first entry must be step 0.
    """
    try:
        with open(path) as handle:
            lines = handle.readlines()
    except OSError as error:
        raise ConfigError("--lr_file %s: %s" % (path, error.strerror or error)) from None
    entries: List[Tuple[int, float]] = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.replace(",", " ").split()
        try:
            if len(parts) != 2:
                raise ValueError
            step, rate = int(parts[0]), float(parts[1])
        except ValueError:
            got = line.rstrip("\n")
            raise ConfigError("--lr_file %s, line %d: expected 'STEP LR', got %r" % (path, number, got)) from None
        if step < 0 or not rate > 0 or not math.isfinite(rate):
            raise ConfigError("--lr_file %s, line %d: need STEP >= 0 and a finite LR > 0" % (path, number))
        if entries and step <= entries[-1][0]:
            raise ConfigError("--lr_file %s, line %d: steps must increase" % (path, number))
        entries.append((step, rate))
    if not entries or entries[0][0] != 0:
        raise ConfigError("--lr_file %s: the first entry must be for step 0" % path)
    return entries


def make_learning_rate_schedule(config: TrainConfig) -> Callable[[Any], Any]:
    """The rate as a function of the step (micro-batch count).

    ``fixed``; ``file``: piecewise constant from ``--lr_file``; ``paper``: the authors' SGD schedule, the rate times
    ``lr_decay_factor`` from step ``lr_decay_steps`` on (1.0 -> 0.1 after 336,000 steps in their code).
    """
    if config.lr_schedule == "fixed":
        return optax.constant_schedule(config.learning_rate)
    if config.lr_schedule == "paper":
        return optax.piecewise_constant_schedule(
            config.learning_rate, {int(config.lr_decay_steps): float(config.lr_decay_factor)}
        )
    entries = read_lr_file(config.lr_file)
    scales, previous = {}, entries[0][1]
    for step, rate in entries[1:]:
        scales[step] = rate / previous
        previous = rate
    return optax.piecewise_constant_schedule(entries[0][1], scales)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """SGD, Adam or Adagrad on the schedule, after optional global-norm clipping."""
    schedule = make_learning_rate_schedule(config)
    if config.optimizer == "sgd":
        base = optax.sgd(schedule)
    elif config.optimizer == "adam":
        base = optax.adam(schedule)
    else:
        base = optax.adagrad(schedule)
    if config.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.clip_norm), base)
    return base
