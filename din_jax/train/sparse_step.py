"""Sparse embedding updates: the optimiser touches only the embedding rows a micro-batch looks up.

The tables hold almost all of DIN's parameters, so a dense step spends its time reading and writing rows no sample
used. Here the step differentiates with respect to the gathered rows (``FeatureEmbedding``'s zero
``embedding_delta``) and updates only those: SGD and Adagrad equal their dense updates, Adam is lazy (like
TensorFlow's ``LazyAdam``). The rules, MBA, clipping and several devices: docs/TRAINING.md.

Shape letters: N lookups of one table in one device's micro-batch, V table rows, E table width, R devices.
"""

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from din_jax.config import ConfigError
from din_jax.layers import EMBEDDING_DELTA, EMBEDDING_LOOKUPS, LOSSES
from din_jax.train.optim import make_learning_rate_schedule, make_optimizer
from din_jax.train.regularization import Regularization, find_embedding_tables, table_inverse_frequencies
from din_jax.train.step import (
    all_finite,
    batch_accuracy,
    batch_loss,
    example_batch,
    extra_losses,
    guarded_update,
    init_variables,
    rows_per_pass,
    step_dropout_rng,
    value_and_scaled_grad,
)

SPARSE_OPTIMIZERS = ("sgd", "adam", "adagrad")

# The optax defaults the dense optimisers use (din_jax.train.optim.make_optimizer).
ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8
ADAGRAD_INITIAL_ACCUMULATOR, ADAGRAD_EPS = 0.1, 1e-7

Path = Tuple[str, ...]


def _path_key(path: Path) -> str:
    # The moments' key, "embedding/item" (escaped in checkpoints): renaming it would orphan saved optimiser state.
    return "/".join(path)


def embedding_lookup_paths(model, max_seq_len: int) -> List[Path]:
    """Parameter paths of the tables ``FeatureEmbedding`` gathers from (sorted), found by tracing shapes only."""
    batch = example_batch(2, max_seq_len)
    variables = jax.eval_shape(lambda: init_variables(model, 0, max_seq_len))

    def record(variables):
        _, updates = model.apply(variables, batch, train=False, mutable=[EMBEDDING_LOOKUPS])
        return updates

    lookups = flax.core.unfreeze(jax.eval_shape(record, variables)).get(EMBEDDING_LOOKUPS, {})
    return sorted(_flatten_lookups(lookups))


def _flatten_lookups(lookups: Mapping[str, Any]) -> Dict[Path, Tuple[Any, Any]]:
    # {table path: (ids [N], valid [N])} of the recorded lookups collection.
    flat: Dict[Path, Tuple[Any, Any]] = {}

    def visit(prefix: Path, node: Any) -> None:
        if isinstance(node, tuple):
            flat[prefix] = node
        else:
            for key, value in node.items():
                visit(prefix + (key,), value)

    visit((), flax.core.unfreeze(lookups))
    return flat


@dataclasses.dataclass(frozen=True)
class SparseEmbeddingOptimizer:
    """The ``TrainState.tx`` of sparse updates (built by ``make_sparse_optimizer``; ``make_sparse_train_step`` updates).

    ``init(params)`` gives ``{'dense': <optax state of the other parameters>, 'tables': {<moment>: {<path>: [V, E]}}}``.
    ``dense_tx`` does not clip: the step clips by the global norm of both parts (``clip_norm``, 0 for none).
    """

    optimizer: str
    schedule: Callable[[Any], Any]
    dense_tx: optax.GradientTransformation
    table_paths: Tuple[Path, ...]
    clip_norm: float = 0.0

    def split(self, params: Any) -> Tuple[Any, Dict[Path, Any]]:
        """``(the other parameters as a nested dict, {table path: table})``."""
        flat = traverse_util.flatten_dict(flax.core.unfreeze(params))
        tables = {path: flat.pop(path) for path in self.table_paths}
        return traverse_util.unflatten_dict(flat), tables

    def init(self, params: Any) -> Dict[str, Any]:
        rest, tables = self.split(params)
        moments: Dict[str, Dict[str, Any]] = {}
        if self.optimizer == "adam":
            moments = {name: {_path_key(p): jnp.zeros_like(t) for p, t in tables.items()} for name in ("mu", "nu")}
        elif self.optimizer == "adagrad":
            initial = ADAGRAD_INITIAL_ACCUMULATOR
            moments = {"sum_of_squares": {_path_key(p): jnp.full_like(t, initial) for p, t in tables.items()}}
        return {"dense": self.dense_tx.init(rest), "tables": moments}

    def update(self, updates, state, params=None):
        raise TypeError(
            "a SparseEmbeddingOptimizer is applied by din_jax.train.sparse_step.make_sparse_train_step, "
            "not through TrainState.apply_gradients"
        )


def make_sparse_optimizer(model, config: Any) -> SparseEmbeddingOptimizer:
    """The sparse-update optimiser a ``TrainConfig`` asks for; ConfigError for ``--l2`` or a model without lookups."""
    if config.optimizer not in SPARSE_OPTIMIZERS:
        supported = "/".join(SPARSE_OPTIMIZERS)
        raise ConfigError("--embedding_updates sparse supports --optimizer %s, got %r" % (supported, config.optimizer))
    if float(getattr(config, "l2", 0.0)) > 0:
        raise ConfigError(
            "--l2 regularises every embedding row, which sparse updates do not touch: use "
            "--embedding_updates dense with --l2 (or --mba_lambda, which sparse updates support)"
        )
    paths = tuple(embedding_lookup_paths(model, config.max_seq_len))
    if not paths:
        raise ConfigError("--embedding_updates sparse: model %r has no FeatureEmbedding lookups" % config.model)
    return SparseEmbeddingOptimizer(
        optimizer=config.optimizer,
        schedule=make_learning_rate_schedule(config),
        dense_tx=make_optimizer(dataclasses.replace(config, clip_norm=0.0)),
        table_paths=paths,
        clip_norm=float(config.clip_norm),
    )


def all_gather_rows(x, axis_name: Optional[str]):
    """Stacks every device's ``x`` ``[N, ...]`` into ``[R * N, ...]`` (device order).

    A ``psum`` of one-hot blocks: the IPU stack has ``psum`` but no ``all_gather``.
    """
    if axis_name is None:
        return x
    devices = jax.lax.psum(1, axis_name)
    if devices == 1:
        return x
    one_hot_R = (jnp.arange(devices) == jax.lax.axis_index(axis_name)).astype(x.dtype)
    blocks = one_hot_R.reshape((devices,) + (1,) * x.ndim) * x[None]
    return jax.lax.psum(blocks, axis_name).reshape((devices * x.shape[0],) + x.shape[1:])


class _TableGradient:
    """One table's row gradients, gathered over devices (ids ``[N]``, valid ``[N]``, rows ``[N, E]``)."""

    def __init__(self, ids, valid, rows):
        self.ids, self.valid, self.rows = ids, valid, rows
        self.unique = None  # (ids [N] with V as filler, summed rows [N, E]) once deduplicated

    def deduplicate(self, num_rows: int):
        """Sums the rows of equal ids; ids seen only at invalid positions become the filler ``V``."""
        if self.unique is None:
            size = self.ids.shape[0]
            keyed = jnp.where(self.valid > 0, self.ids, num_rows)
            position = jnp.arange(size, dtype=jnp.int32)
            # No sort (XLA's CPU sort is slow): one lookup of each id owns it. Whichever duplicate write wins the
            # scatter, every lookup of the id reads the same owner back, so the sums are exact.
            owner_V = jnp.zeros((num_rows + 1,), jnp.int32).at[keyed].set(position)
            owner = owner_V[keyed]
            summed = jax.ops.segment_sum(self.rows, owner, num_segments=size)
            # Invalid lookups (zero gradients for a masking pooler) own nothing.
            owns = (owner == position) & (keyed < num_rows)
            self.unique = (jnp.where(owns, keyed, num_rows), jnp.where(owns[:, None], summed, 0.0))
        return self.unique


def _apply_table_update(optimizer: str, table_VxE, grad: _TableGradient, moments, lr, count, scale, use_unique):
    num_rows = table_VxE.shape[0]
    if not use_unique:  # SGD without anything that needs the summed rows
        return table_VxE.at[grad.ids].add((-lr * scale * grad.rows).astype(table_VxE.dtype)), moments
    ids_u, g_u = grad.deduplicate(num_rows)
    g_u = g_u * scale
    if optimizer == "sgd":
        return table_VxE.at[ids_u].add((-lr * g_u).astype(table_VxE.dtype), mode="drop"), moments
    if optimizer == "adagrad":
        acc_u = jnp.take(moments["sum_of_squares"], ids_u, axis=0, mode="clip") + jnp.square(g_u)
        step_u = jnp.where(acc_u > 0, jax.lax.rsqrt(acc_u + ADAGRAD_EPS), 0.0) * g_u
        new_moments = {"sum_of_squares": moments["sum_of_squares"].at[ids_u].set(acc_u, mode="drop")}
        return table_VxE.at[ids_u].add((-lr * step_u).astype(table_VxE.dtype), mode="drop"), new_moments
    # Lazy Adam: the moments of the present rows only, bias correction of the global step.
    mu_u = ADAM_B1 * jnp.take(moments["mu"], ids_u, axis=0, mode="clip") + (1 - ADAM_B1) * g_u
    nu_u = ADAM_B2 * jnp.take(moments["nu"], ids_u, axis=0, mode="clip") + (1 - ADAM_B2) * jnp.square(g_u)
    t = count.astype(jnp.float32)
    mu_hat = mu_u / (1 - ADAM_B1**t)
    nu_hat = nu_u / (1 - ADAM_B2**t)
    step_u = mu_hat / (jnp.sqrt(nu_hat) + ADAM_EPS)
    new_moments = {"mu": moments["mu"].at[ids_u].set(mu_u, mode="drop")}
    new_moments["nu"] = moments["nu"].at[ids_u].set(nu_u, mode="drop")
    return table_VxE.at[ids_u].add((-lr * step_u).astype(table_VxE.dtype), mode="drop"), new_moments


def _mba_tables(params: Any, regularization: Optional[Regularization], table_paths) -> Dict[Path, Any]:
    # Table path -> lambda / n_j (float32 [V]) for the tables MBA regularises.
    if regularization is None or regularization.mba_lambda <= 0:
        return {}
    flat = traverse_util.flatten_dict(flax.core.unfreeze(params))
    scales = {}
    for path in find_embedding_tables(params):
        if path in table_paths:
            inverse = table_inverse_frequencies(regularization, path, int(np.shape(flat[path])[0]))
            scales[path] = regularization.mba_lambda * np.asarray(inverse, np.float32)
    return scales


def make_sparse_train_step(
    model,
    axis_name: Optional[str],
    regularization: Optional[Regularization] = None,
    loss_fn: Optional[Callable] = None,
    positions_per_pass: int = 0,
    loss_scale: float = 1.0,
) -> Callable:
    """``(state, batch) -> (state, metrics)``, updating the embedding tables sparsely (docs/TRAINING.md).

    ``state.tx`` must be a ``SparseEmbeddingOptimizer``. Metrics, Dice statistics, the other parameters and
    ``loss_scale`` are as in ``step.make_train_step``; MBA applies to the present rows, ``l2 > 0`` raises.
    ``loss_fn(logits, labels)`` defaults to ``step.compute_loss``. ``positions_per_pass`` > 0 computes the gradient
    in parts of ``rows_per_pass`` rows and averages them (refused for models with batch statistics).
    """
    if regularization is not None and regularization.l2 > 0:
        raise ConfigError("--l2 regularises every embedding row: use --embedding_updates dense with --l2")

    def loss_of(logits, part, updates):
        data = batch_loss(logits, part, axis_name) if loss_fn is None else loss_fn(logits, part["label"])
        return data + extra_losses(updates)

    def train_step(state, batch):
        opt: SparseEmbeddingOptimizer = state.tx
        if not isinstance(opt, SparseEmbeddingOptimizer):
            raise TypeError("the sparse train step needs a state created with make_sparse_optimizer")
        dropout_rng = step_dropout_rng(state, axis_name)
        rest, tables = opt.split(state.params)
        mba = _mba_tables(state.params, regularization, opt.table_paths)

        def forward(rest, deltas, part, mutable, rng):
            params = traverse_util.flatten_dict(flax.core.unfreeze(rest))
            params.update(tables)
            variables = {"params": traverse_util.unflatten_dict(params), "batch_stats": state.batch_stats}
            if deltas is not None:
                variables[EMBEDDING_DELTA] = traverse_util.unflatten_dict(deltas)
            return model.apply(variables, part, train=True, mutable=mutable, rngs={"dropout": rng})

        def gradients(rest, part, rng):
            # Loss, logits, state updates, lookups and gradients of one (part of a) micro-batch. The lookups'
            # shapes (trace time only) give the zero deltas.
            mutable = ["batch_stats", EMBEDDING_LOOKUPS, LOSSES]
            shapes = flax.core.unfreeze(jax.eval_shape(lambda r: forward(r, None, part, mutable, rng)[1], rest))
            recorded = _flatten_lookups(shapes[EMBEDDING_LOOKUPS])
            deltas = {p: jnp.zeros(ids.shape + tables[p].shape[1:], jnp.float32) for p, (ids, _) in recorded.items()}

            def loss_fn(rest, deltas):
                logits, updates = forward(rest, deltas, part, mutable, rng)
                return loss_of(logits, part, updates), (logits, updates)

            grad_fn = value_and_scaled_grad(loss_fn, loss_scale, argnums=(0, 1))
            (loss, (logits, updates)), (grads, delta_grads) = grad_fn(rest, deltas)
            updates = flax.core.unfreeze(updates)
            lookups = _flatten_lookups(updates.pop(EMBEDDING_LOOKUPS))
            return loss, logits, updates, lookups, grads, delta_grads

        rows = batch["label"].shape[0]
        # A packed buffer cannot be cut by rows: packed batches are one pass (make them smaller instead).
        packed = "hist_segment" in batch
        part_rows = rows if packed else rows_per_pass(rows, batch["hist_item"].shape[-1], positions_per_pass)
        if part_rows < rows:
            if jax.tree_util.tree_leaves(state.batch_stats):
                raise ValueError(
                    "positions_per_pass: a model with batch statistics (Dice, BatchNorm) needs the "
                    "whole micro-batch in one pass"
                )
            passes = rows // part_rows
            parts = jax.tree_util.tree_map(lambda x: x.reshape((passes, part_rows) + x.shape[1:]), batch)

            def one_pass(grad_sum, inputs):
                index, part = inputs
                rng = jax.random.fold_in(dropout_rng, index)
                loss, logits, _, lookups, grads, delta_grads = gradients(rest, part, rng)
                grad_sum = jax.tree_util.tree_map(jnp.add, grad_sum, grads)
                return grad_sum, (loss, logits, lookups, delta_grads)

            zeros = jax.tree_util.tree_map(jnp.zeros_like, rest)
            grad_sum, outputs = jax.lax.scan(one_pass, zeros, (jnp.arange(passes), parts))
            losses, logits, lookups, delta_grads = outputs
            # The micro-batch's mean loss is the mean of the parts' mean losses.
            loss = jnp.mean(losses)
            logits = logits.reshape(rows)
            grads = jax.tree_util.tree_map(lambda g: g / passes, grad_sum)
            lookups = {path: tuple(x.reshape(-1) for x in pair) for path, pair in lookups.items()}
            delta_grads = {path: g.reshape((-1,) + g.shape[2:]) / passes for path, g in delta_grads.items()}
            updates = {}
        else:
            loss, logits, updates, lookups, grads, delta_grads = gradients(rest, batch, dropout_rng)
        correct = batch_accuracy(logits, batch, axis_name)
        devices = 1
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            loss = jax.lax.pmean(loss, axis_name)
            correct = jax.lax.pmean(correct, axis_name)
            devices = jax.lax.psum(1, axis_name)
        table_grads = {}
        for path in opt.table_paths:
            ids, valid = lookups[path]
            ids, valid, rows = (all_gather_rows(x, axis_name) for x in (ids, valid, delta_grads[path]))
            table_grads[path] = _TableGradient(ids, valid, rows / devices)

        # MBA on the rows present at valid positions of the global micro-batch.
        for path, scale_V in mba.items():
            grad = table_grads[path]
            num_rows = tables[path].shape[0]
            ids_u, g_u = grad.deduplicate(num_rows)
            present_u = (ids_u < num_rows)[:, None]
            w_u = jnp.take(tables[path], ids_u, axis=0, mode="clip")
            term_u = jnp.take(jnp.asarray(scale_V), ids_u, axis=0, mode="clip")[:, None] * w_u
            grad.unique = (ids_u, g_u + jnp.where(present_u, term_u, 0.0))

        scale = jnp.float32(1.0)
        if opt.clip_norm > 0:
            squares = [jnp.sum(jnp.square(g)) for g in jax.tree_util.tree_leaves(grads)]
            squares += [jnp.sum(jnp.square(g.deduplicate(tables[p].shape[0])[1])) for p, g in table_grads.items()]
            norm = jnp.sqrt(sum(squares))
            scale = jnp.where(norm < opt.clip_norm, 1.0, opt.clip_norm / norm)
            clip = opt.clip_norm
            grads = jax.tree_util.tree_map(lambda g: jnp.where(norm < clip, g, g / norm * clip), grads)

        new_stats = updates.get("batch_stats", state.batch_stats)

        def update(state):
            dense_updates, dense_state = opt.dense_tx.update(grads, state.opt_state["dense"], rest)
            new_rest = optax.apply_updates(rest, dense_updates)
            lr = opt.schedule(state.step)
            count = state.step + 1
            new_tables = {}
            table_moments = state.opt_state["tables"]
            new_moments: Dict[str, Dict[str, Any]] = {name: dict(values) for name, values in table_moments.items()}
            use_unique = opt.optimizer != "sgd" or opt.clip_norm > 0 or bool(mba)
            for path in opt.table_paths:
                key = _path_key(path)
                moments = {name: values[key] for name, values in table_moments.items()}
                grad = table_grads[path]
                result = _apply_table_update(opt.optimizer, tables[path], grad, moments, lr, count, scale, use_unique)
                new_tables[path], moments = result
                for name, value in moments.items():
                    new_moments[name][key] = value
            params = traverse_util.flatten_dict(flax.core.unfreeze(new_rest))
            params.update(new_tables)
            new_params = traverse_util.unflatten_dict(params)
            if isinstance(state.params, flax.core.FrozenDict):
                new_params = flax.core.freeze(new_params)
            opt_state = {"dense": dense_state, "tables": new_moments}
            return state.replace(step=state.step + 1, params=new_params, batch_stats=new_stats, opt_state=opt_state)

        finite = all_finite(loss, grads, new_stats, {p: g.rows for p, g in table_grads.items()})
        new_state = guarded_update(state, finite, update)
        return new_state, {"loss": loss, "accuracy": correct, "halted_at": new_state.halted_at}

    return train_step


def count_table_parameters(params: Mapping[str, Any], table_paths) -> int:
    """Parameters in the sparsely updated tables (for reports)."""
    flat = traverse_util.flatten_dict(flax.core.unfreeze(params))
    return int(sum(np.prod(np.shape(flat[p])) for p in table_paths))
