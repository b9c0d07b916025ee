"""The train state and the compiled programs (train step, prediction).

The hot path is one pmapped program per host call, ``train_chunk(state, chunk)`` with a chunk of shape
``(devices, device_iterations, micro_batch, ...)``: it ``lax.scan``s over the micro-batches (Graphcore's device
iterations), averages gradients and Dice statistics over devices with ``lax.pmean``/``psum`` and donates the state.
That keeps the IPU, which has no eager mode, on one compiled program, and costs nothing elsewhere.
"""

import os
from typing import Any, Callable, Dict, List, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from din_jax.config import ConfigError
from din_jax.layers import LOSSES
from din_jax.train.regularization import Regularization, add_regularization_gradients

AXIS_NAME = "batch"
BATCH_KEYS = ("user", "item", "category", "hist_item", "hist_category", "hist_len", "label")


class TrainState(train_state.TrainState):
    """Flax TrainState plus Dice/BatchNorm statistics, the dropout key and ``halted_at``: 0, or the step whose
    loss or gradients were NaN or Inf (``guarded_update``; the state then stays the last good one)."""

    batch_stats: Any = None
    dropout_rng: Any = None
    halted_at: Any = np.int32(0)


class NonFiniteLossError(RuntimeError):
    """The training loss or gradients became NaN or Inf; ``good``: the last step whose state is finite."""

    def __init__(self, message: str, good: int = -1):
        super().__init__(message)
        self.good = good


def compute_loss(logits_B, labels_B):
    """Mean sigmoid cross-entropy."""
    logits_B = logits_B.astype(jnp.float32)
    labels_B = labels_B.astype(jnp.float32)
    # log_sigmoid, not log(sigmoid): exact for large |logits|, where the latter rounds to log(0) = -inf.
    losses_B = -(labels_B * jax.nn.log_sigmoid(logits_B) + (1.0 - labels_B) * jax.nn.log_sigmoid(-logits_B))
    return jnp.mean(losses_B)


def batch_loss(logits_B, batch, axis_name: Optional[str] = None):
    """``compute_loss`` of a micro-batch. A packed batch weighs its samples by ``weight`` (0: an empty slot) and
    divides by the real samples of the global micro-batch over the device count, so that ``pmean`` over devices
    gives the global batch's mean even when devices hold different numbers of real samples."""
    if "weight" not in batch:
        return compute_loss(logits_B, batch["label"])
    logits_B = logits_B.astype(jnp.float32)
    labels_B = batch["label"].astype(jnp.float32)
    losses_B = -(labels_B * jax.nn.log_sigmoid(logits_B) + (1.0 - labels_B) * jax.nn.log_sigmoid(-logits_B))
    return jnp.sum(batch["weight"] * losses_B) / _real_per_device(batch, axis_name)


def extra_losses(updates) -> Any:
    """The loss terms a model put into the ``losses`` collection (DIEN's auxiliary loss), summed; 0 if none."""
    terms = jax.tree_util.tree_leaves(flax.core.unfreeze(updates).get(LOSSES, {}))
    return sum((jnp.asarray(term, jnp.float32) for term in terms), jnp.float32(0.0))


def batch_accuracy(logits_B, batch, axis_name: Optional[str] = None):
    """The share of correct 0/1 predictions, over the real samples (see ``batch_loss``)."""
    correct_B = ((logits_B > 0).astype(jnp.float32) == batch["label"]).astype(jnp.float32)
    if "weight" not in batch:
        return jnp.mean(correct_B)
    return jnp.sum(batch["weight"] * correct_B) / _real_per_device(batch, axis_name)


def _real_per_device(batch, axis_name: Optional[str]):
    count = jnp.sum(batch["weight"].astype(jnp.float32))
    if axis_name is None:
        return jnp.maximum(count, 1.0)
    return jnp.maximum(jax.lax.psum(count, axis_name), 1.0) / jax.lax.psum(1.0, axis_name)


def compute_dtype(data_type: str):
    return {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}[data_type]


def example_batch(batch_size: int, max_seq_len: int) -> Dict[str, np.ndarray]:
    """A batch of zeros with the right shapes and dtypes, for initialisation."""
    batch = {key: np.zeros((batch_size,), np.int32) for key in ("user", "item", "category")}
    batch.update({key: np.zeros((batch_size, max_seq_len), np.int32) for key in ("hist_item", "hist_category")})
    batch.update(hist_len=np.ones((batch_size,), np.int32), label=np.zeros((batch_size,), np.float32))
    return batch


def init_variables(model, seed: int, max_seq_len: int) -> Dict[str, Any]:
    """Initial ``params`` and ``batch_stats`` (one jitted program), as plain dicts."""
    batch = example_batch(2, max_seq_len)
    variables = jax.jit(lambda rng: model.init(rng, batch, train=False))(jax.random.PRNGKey(seed))
    variables = flax.core.unfreeze(variables)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def create_train_state(model, tx: optax.GradientTransformation, seed: int, max_seq_len: int) -> TrainState:
    """A fresh (unreplicated) TrainState."""
    variables = init_variables(model, seed, max_seq_len)
    params, stats, rng = variables["params"], variables["batch_stats"], jax.random.PRNGKey(seed + 1)
    return TrainState.create(
        apply_fn=model.apply, params=params, tx=tx, batch_stats=stats, dropout_rng=rng, halted_at=np.int32(0)
    )


def step_dropout_rng(state: TrainState, axis_name: Optional[str]):
    """The dropout key of this step and device: each device draws its own masks (the same on every device would
    repeat one mask over the global batch)."""
    rng = jax.random.fold_in(state.dropout_rng, state.step)
    return rng if axis_name is None else jax.random.fold_in(rng, jax.lax.axis_index(axis_name))


def all_finite(*trees) -> Any:
    """A scalar bool: every leaf of ``trees`` is finite (one fused reduction per leaf)."""
    leaves = [x for tree in trees for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def guarded_update(state: TrainState, finite, update: Callable[[TrainState], TrainState]) -> TrainState:
    """``update(state)`` when ``finite`` and no earlier step halted; else ``state`` unchanged, ``halted_at`` set.

    Inside the compiled program, so a NaN or Inf step never reaches the parameters (the host learns it from the
    metrics and stops, naming the step). ``finite`` must agree over devices (computed after the ``pmean``). A
    ``lax.cond`` with the update inside: nothing is computed twice or selected element by element (a select over the
    whole state cost dense Adam 14 % of its throughput), and the sparse step's row updates stay in place.
    """
    ok = jnp.logical_and(finite, state.halted_at == 0)
    return _mark_halted(jax.lax.cond(ok, update, lambda s: s, state), state, ok)


def _mark_halted(new_state: TrainState, state: TrainState, ok) -> TrainState:
    halted_at = jnp.where(ok | (state.halted_at > 0), state.halted_at, (state.step + 1).astype(jnp.int32))
    return new_state.replace(halted_at=halted_at)


def value_and_scaled_grad(loss_fn: Callable, loss_scale: float, argnums: Any = 0) -> Callable:
    """``jax.value_and_grad(loss_fn, argnums, has_aux=True)``, backpropagating ``loss * loss_scale``.

    The gradients come back divided by ``loss_scale`` (in the parameters' float32), the loss and aux unscaled.
    With 1 it is ``jax.value_and_grad`` itself, so the program does not change.
    """
    if loss_scale == 1.0:
        return jax.value_and_grad(loss_fn, argnums=argnums, has_aux=True)

    def scaled(*args):
        loss, aux = loss_fn(*args)
        return loss * loss_scale, (loss, aux)

    grad_fn = jax.value_and_grad(scaled, argnums=argnums, has_aux=True)

    def value_and_grad(*args):
        (_, (loss, aux)), grads = grad_fn(*args)
        return (loss, aux), jax.tree_util.tree_map(lambda g: g / jnp.asarray(loss_scale, g.dtype), grads)

    return value_and_grad


def make_train_step(
    model, axis_name: Optional[str] = AXIS_NAME, regularization: Optional[Regularization] = None, loss_scale=1.0
) -> Callable:
    """``(state, batch) -> (state, metrics)`` for one micro-batch on one device.

    Gradients are averaged over ``axis_name`` (None: one device), then ``regularization`` (MBA, L2) is added; the
    reported loss is the data loss plus the model's own terms (``extra_losses``), without the regularisation. ``loss_scale``: ``TrainConfig.effective_loss_scaling``, see
    ``value_and_scaled_grad``.
    """

    def train_step(state: TrainState, batch):
        dropout_rng = step_dropout_rng(state, axis_name)

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            rngs = {"dropout": dropout_rng}
            logits, updates = model.apply(variables, batch, train=True, mutable=["batch_stats", LOSSES], rngs=rngs)
            return batch_loss(logits, batch, axis_name) + extra_losses(updates), (logits, updates)

        (loss, (logits, updates)), grads = value_and_scaled_grad(loss_fn, loss_scale)(state.params)
        correct = batch_accuracy(logits, batch, axis_name)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            loss = jax.lax.pmean(loss, axis_name)
            correct = jax.lax.pmean(correct, axis_name)
        if regularization is not None:
            grads = add_regularization_gradients(grads, state.params, batch, regularization, axis_name)
        new_stats = flax.core.unfreeze(updates).get("batch_stats", state.batch_stats)
        finite = all_finite(loss, grads, new_stats)
        new_state = guarded_update(state, finite, lambda s: s.apply_gradients(grads=grads, batch_stats=new_stats))
        return new_state, {"loss": loss, "accuracy": correct, "halted_at": new_state.halted_at}

    return train_step


def make_p_train_chunk(train_step: Callable, devices: Optional[List[Any]], donate: bool = True) -> Callable:
    """The pmapped program of one host call: ``train_step`` scanned over a chunk's device iterations.

    ``(replicated state, chunk (R, K, B, ...)) -> (state, metrics (R, K))``; ``train_step`` is ``make_train_step``'s
    or ``sparse_step.make_sparse_train_step``'s.
    """

    def train_chunk(state, chunk):
        return jax.lax.scan(train_step, state, chunk)

    return jax.pmap(train_chunk, axis_name=AXIS_NAME, devices=devices, donate_argnums=(0,) if donate else ())


def rows_per_pass(rows: int, seq_len: int, positions_per_pass: int) -> int:
    """Rows of a ``rows x seq_len`` micro-batch to compute at a time for a budget of history positions.

    The largest power of two that divides ``rows`` and holds at most ``positions_per_pass`` positions (at least 1);
    ``rows`` for a budget of 0 or one the whole micro-batch fits in (docs/TRAINING.md).
    """
    if positions_per_pass <= 0 or rows * max(seq_len, 1) <= positions_per_pass:
        return rows
    part = 1
    while rows % (part * 2) == 0 and part * 2 * max(seq_len, 1) <= positions_per_pass:
        part *= 2
    return part


def make_p_predict_chunk(model, devices: List[Any], positions_per_pass: int = 0) -> Callable:
    """Pmapped inference: ``(variables, chunk (R, K, B, ...)) -> logits (R, K, B)``.

    ``positions_per_pass`` > 0 scores each micro-batch in parts of ``rows_per_pass`` rows, so that the activations
    of a large batch stay in cache; the logits are the same.
    """

    def predict_chunk(variables, chunk):
        k, b = chunk["label"].shape[:2]
        # A packed buffer cannot be cut by rows (smaller packed micro-batches do the same).
        packed = "hist_segment" in chunk
        part = b if packed else rows_per_pass(b, chunk["hist_item"].shape[-1], positions_per_pass)
        if part < b:
            passes = jax.tree_util.tree_map(lambda x: x.reshape((k * b // part, part) + x.shape[2:]), chunk)
            logits = jax.lax.map(lambda batch: model.apply(variables, batch, train=False), passes)
            return logits.reshape((k, b))
        return jax.lax.map(lambda batch: model.apply(variables, batch, train=False), chunk)

    return jax.pmap(predict_chunk, axis_name=AXIS_NAME, devices=devices)


def resolve_devices(replicas: int) -> List[Any]:
    """The local devices to use: all of them for 0, else the first ``replicas``."""
    devices = jax.local_devices()
    if replicas == 0:
        return devices
    if replicas > len(devices):
        raise ConfigError(
            "--replicas %d but only %d %s device(s) are visible (JAX_PLATFORMS=%s); on CPU set "
            "XLA_FLAGS=--xla_force_host_platform_device_count=N"
            % (replicas, len(devices), devices[0].platform, os.environ.get("JAX_PLATFORMS", ""))
        )
    return devices[:replicas]


def replicate(tree: Any, devices: Optional[List[Any]]) -> Any:
    """Copies a host pytree to ``devices`` (None: pmap's default, every process's), laid out as pmap outputs are.

    ``flax.jax_utils.replicate``'s layout differs from a pmap output on recent jax, so the donated state would be
    compiled a second time on the second call; an identity pmap over the same axis avoids that on every jax.
    """
    host = jax.device_get(tree)
    copies = len(devices) if devices is not None else jax.local_device_count()
    stacked = jax.tree_util.tree_map(lambda x: np.stack([np.asarray(x)] * copies), host)
    return jax.pmap(lambda x: x, axis_name=AXIS_NAME, devices=devices)(stacked)


def unreplicate_to_host(tree: Any) -> Any:
    """The first replica of a replicated pytree, as host numpy arrays."""
    return jax.device_get(jax.tree_util.tree_map(lambda x: x[0], tree))
