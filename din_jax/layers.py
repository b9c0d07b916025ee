"""The building blocks of every model: activations, the MLP and the history poolers, with registries (the embedding
layer is in ``din_jax.embedding``, re-exported here).

Shape letters: B batch, T history positions of a padded batch, P history positions of the batch (``B * T``
padded, the buffer's length packed), D item-vector width (item_dim + category_dim), U user width, H hidden units.
Activations are called as ``act(x_XxH, train=..., mask=...)`` (``mask``: the real, not padded, rows, for Dice's
statistics); poolers as ``pool(query_BxD, keys_PxD, history, train=...)`` (``history``: a ``History``),
returning ``(pooled_BxD, weights_P)``.
"""

import dataclasses
import functools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from din_jax.embedding import (  # noqa: F401 - the layers' API
    CATEGORY_TABLE,
    EMBEDDING_DELTA,
    EMBEDDING_LOOKUPS,
    HISTORY_NEGATIVES,
    ITEM_BIAS_TABLE,
    ITEM_TABLE,
    LOSSES,
    USER_TABLE,
    EmbeddingFields,
    FeatureEmbedding,
    lookup,
)
from din_jax.history import History, history_mask, masked_softmax  # noqa: F401 - the layers' API


class Registry:
    """Factories (module classes or partials) by name; ``make`` passes only the keyword arguments they accept."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Callable[..., Any]] = {}

    def register(self, name: str, factory: Callable[..., Any], overwrite: bool = False) -> Callable[..., Any]:
        if not isinstance(name, str) or not name:
            raise ValueError("%s names must be non-empty strings, got %r" % (self.kind, name))
        if name in self._entries and not overwrite:
            raise ValueError("%s %r is already registered; pass overwrite=True to replace it" % (self.kind, name))
        self._entries[name] = factory
        return factory

    def names(self) -> List[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name_or_factory: Union[str, Callable[..., Any]]) -> Callable[..., Any]:
        """Returns the factory registered under a name; a factory passes through."""
        if not isinstance(name_or_factory, str):
            return name_or_factory
        try:
            return self._entries[name_or_factory]
        except KeyError:
            raise ValueError("unknown %s %r; choose from %s" % (self.kind, name_or_factory, self.names())) from None

    def make(self, name_or_factory: Union[str, Callable[..., Any]], **kwargs: Any) -> Any:
        """Instantiates an entry, dropping keyword arguments it has no field for."""
        factory = self.get(name_or_factory)
        return factory(**accepted_kwargs(factory, kwargs))


def accepted_kwargs(factory: Callable[..., Any], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """The ``kwargs`` a dataclass factory has fields for (all of them for a plain function).

    Values bound by a ``functools.partial`` win: ``din_softmax`` keeps its normalisation whatever the model's is.
    """
    target = factory
    bound = set()
    while isinstance(target, functools.partial):
        bound.update(target.keywords or {})
        target = target.func
    if not dataclasses.is_dataclass(target):
        return {key: value for key, value in kwargs.items() if key not in bound}
    names = {field.name for field in dataclasses.fields(target) if field.init}
    return {key: value for key, value in kwargs.items() if key in names and key not in bound}


class Sigmoid(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        return jax.nn.sigmoid(x)


class ReLU(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        return jax.nn.relu(x)


class Identity(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        return x


class PReLU(nn.Module):
    """Parametric ReLU, one learnt slope per channel (He et al., 2015); ``alpha_init`` 0 as in the DIN authors'
    code (a ReLU at initialisation)."""

    alpha_init: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        del train, mask
        alpha = self.param("alpha", nn.initializers.constant(self.alpha_init), (x.shape[-1],), jnp.float32)
        return jnp.where(x >= 0, x, alpha.astype(x.dtype) * x)


class Dice(nn.Module):
    """Dice (Zhou et al., KDD 2018, eq. 7): ``p s + (1 - p) alpha s``, ``p = sigmoid((s - E s) / sqrt(Var s + eps))``.

    Training uses the mini-batch statistics (over every leading axis, real rows only with ``mask``, across
    devices with ``axis_name``) and keeps moving averages (``batch_stats``) for inference. Differs from the public
    originals, which get this wrong: the authors' code never updates its statistics, DIEN/Graphcore's uses batch
    statistics at inference. ``epsilon`` 1e-8 as in the paper, ``momentum`` 0.99 (the authors' batch norm).
    """

    epsilon: float = 1e-8
    momentum: float = 0.99
    alpha_init: float = 0.0
    axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        channels = x.shape[-1]
        alpha = self.param("alpha", nn.initializers.constant(self.alpha_init), (channels,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32))

        x32 = x.astype(jnp.float32)
        if train:
            mean, var = _masked_moments(x32, mask, self.axis_name)
            if not self.is_initializing():
                ra_mean.value = self.momentum * ra_mean.value + (1.0 - self.momentum) * mean
                ra_var.value = self.momentum * ra_var.value + (1.0 - self.momentum) * var
        else:
            mean, var = ra_mean.value, ra_var.value
        # A constant channel gives 1e4 * 0 with eps = 1e-8: finite, no guard needed.
        p = jax.nn.sigmoid((x32 - mean) * jax.lax.rsqrt(var + self.epsilon))
        out = p * x32 + (1.0 - p) * alpha * x32
        return out.astype(x.dtype)


def _masked_moments(x, mask, axis_name):
    """Mean and biased variance over every axis but the last, as E[x] and E[x^2] - E[x]^2 so that a ``psum``
    of each gives exactly the global batch's statistics."""
    reduce_axes = tuple(range(x.ndim - 1))
    if mask is None:
        weight = jnp.ones(x.shape[:-1] + (1,), jnp.float32)
    else:
        weight = jnp.broadcast_to(
            mask.astype(jnp.float32).reshape(mask.shape + (1,) * (x.ndim - mask.ndim)), x.shape[:-1] + (1,)
        )
    count = jnp.sum(weight)
    sum_x = jnp.sum(weight * x, axis=reduce_axes)
    sum_x2 = jnp.sum(weight * x * x, axis=reduce_axes)
    if axis_name is not None:
        count, sum_x, sum_x2 = jax.lax.psum((count, sum_x, sum_x2), axis_name)
    count = jnp.maximum(count, 1.0)
    mean = sum_x / count
    var = jnp.maximum(sum_x2 / count - mean * mean, 0.0)
    return mean, var


ActivationFactory = Callable[..., nn.Module]

ACTIVATIONS = Registry("activation")
ACTIVATIONS.register("sigmoid", Sigmoid)
ACTIVATIONS.register("relu", ReLU)
ACTIVATIONS.register("prelu", PReLU)
ACTIVATIONS.register("dice", Dice)
ACTIVATIONS.register("identity", Identity)


def register_activation(name: str, factory: ActivationFactory, overwrite: bool = False) -> ActivationFactory:
    """Adds an activation (a module class or partial, called as ``act(x, train=..., mask=...)``) for
    ``--activation`` and model fields; returns the factory."""
    return ACTIVATIONS.register(name, factory, overwrite)


def make_activation(name_or_factory: Union[str, ActivationFactory], axis_name: Optional[str] = None) -> nn.Module:
    """Instantiates an activation (inside a parent's compact ``__call__``), with ``axis_name`` if it takes one."""
    return ACTIVATIONS.make(name_or_factory, axis_name=axis_name)


class MLP(nn.Module):
    """Dense layers with a named activation (and dropout in training), then a linear layer to a float32 logit ``[B]``.

    ``hidden``: 80-40 in the authors' Amazon code, 200-80 in the paper and Graphcore's.
    """

    hidden: Sequence[int] = (80, 40)
    activation: Union[str, ActivationFactory] = "prelu"
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, x_BxF, train: bool = False, mask=None):
        """``mask`` ``[B]``: the rows that count in batch statistics (None: all; packed batches' empty slots do not)."""
        h = x_BxF.astype(self.dtype)
        for width in self.hidden:
            h = nn.Dense(width, dtype=self.dtype)(h)
            h = make_activation(self.activation, self.axis_name)(h, train=train, mask=mask)
            if self.dropout_rate > 0:
                h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        return nn.Dense(1, dtype=self.dtype)(h)[..., 0].astype(jnp.float32)


NORMALIZATIONS = ("none", "softmax")


class DinAttention(nn.Module):
    """DIN's local activation unit (Zhou et al., KDD 2018, section 4.3): an MLP (``hidden``, ``activation``: 80-40
    sigmoid in the authors' code) scores ``[q, k_j, q - k_j, q * k_j]``; the pooled history is ``sum_j w_j k_j``.
    ``normalization``: ``none`` (the paper: raw scores, whose sum keeps the interest's intensity) or ``softmax``
    (the authors' code: masked softmax of ``score / sqrt(D)``).

    The first layer is evaluated in the equal split form ``(W_q + W_d) q + (W_k - W_d) k + W_p (q * k)`` (query
    part once per sample; ``split_first_layer`` False: the concatenation, same parameters), and, on padded batches
    with ``fold_query`` from ``fold_min_length`` positions on, as ``k (W_k - W_d + diag(q) W_p)``: one ``D x H``
    product per position (a per-sample matrix, which a packed buffer has no rows for).
    """

    hidden: Sequence[int] = (80, 40)
    activation: Union[str, ActivationFactory] = "sigmoid"
    normalization: str = "none"
    split_first_layer: bool = True
    fold_query: bool = True
    fold_min_length: int = 32
    dtype: jnp.dtype = jnp.float32
    axis_name: Optional[str] = None

    @nn.compact
    def __call__(self, query_BxD, keys_PxD, history: History, train: bool = False) -> Tuple[jnp.ndarray, jnp.ndarray]:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                "unknown attention normalization %r; choose from %s" % (self.normalization, list(NORMALIZATIONS))
            )
        if not self.hidden:
            raise ValueError("DinAttention needs at least one hidden layer")
        dim = keys_PxD.shape[-1]
        query_BxD = query_BxD.astype(self.dtype)
        keys_PxD = keys_PxD.astype(self.dtype)

        first = self.hidden[0]
        # One kernel for the four blocks, so that the split and unsplit forms share parameters (and checkpoints).
        kernel = self.param("first_kernel", nn.initializers.lecun_normal(), (4 * dim, first), jnp.float32)
        bias = self.param("first_bias", nn.initializers.zeros, (first,), jnp.float32)
        kernel = kernel.astype(self.dtype)
        bias = bias.astype(self.dtype)
        w_q, w_k, w_d, w_p = (kernel[i * dim : (i + 1) * dim] for i in range(4))
        if self.split_first_layer:
            per_query_BxH = query_BxD @ (w_q + w_d) + bias
            if self.fold_query and not history.packed and history.row_length >= self.fold_min_length:
                # Building the per-sample D x H matrix costs D x H per sample: it pays only from a few dozen
                # positions on (measured on CPU: docs/PERFORMANCE.md).
                per_sample_BxDxH = (w_k - w_d)[None] + query_BxD[:, :, None] * w_p[None]
                hidden_PxH = history.flat(jnp.einsum("btd,bdh->bth", history.rows(keys_PxD), per_sample_BxDxH))
            else:
                hidden_PxH = keys_PxD @ (w_k - w_d) + (history.spread(query_BxD) * keys_PxD) @ w_p
            hidden_PxH = hidden_PxH + history.spread(per_query_BxH)
        else:
            query_PxD = history.spread(query_BxD)
            features_Px4D = jnp.concatenate([query_PxD, keys_PxD, query_PxD - keys_PxD, query_PxD * keys_PxD], axis=-1)
            hidden_PxH = features_Px4D @ kernel + bias
        valid_P = history.valid_P
        hidden_PxH = make_activation(self.activation, self.axis_name)(hidden_PxH, train=train, mask=valid_P)
        for width in self.hidden[1:]:
            hidden_PxH = nn.Dense(width, dtype=self.dtype)(hidden_PxH)
            hidden_PxH = make_activation(self.activation, self.axis_name)(hidden_PxH, train=train, mask=valid_P)
        scores_P = nn.Dense(1, dtype=self.dtype)(hidden_PxH)[..., 0].astype(jnp.float32)

        if self.normalization == "softmax":
            weights_P = history.softmax(scores_P / jnp.sqrt(jnp.float32(dim)))
        else:
            weights_P = jnp.where(valid_P, scores_P, 0.0)
        return history.weighted_sum(weights_P, keys_PxD), weights_P


class DotAttention(nn.Module):
    """Scaled dot-product attention, ``softmax_j(q . k_j / sqrt(D))``: no parameters, the cheapest pooler that
    still depends on the candidate."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, query_BxD, keys_PxD, history: History, train: bool = False):
        del train
        keys_PxD = keys_PxD.astype(self.dtype)
        scores_P = jnp.sum(history.spread(query_BxD.astype(self.dtype)) * keys_PxD, axis=-1).astype(jnp.float32)
        weights_P = history.softmax(scores_P / jnp.sqrt(jnp.float32(keys_PxD.shape[-1])))
        return history.weighted_sum(weights_P, keys_PxD), weights_P


class MultiHeadTargetAttention(nn.Module):
    """Multi-head target attention: the candidate is the query over the history, scaled dot-product per head
    (Vaswani et al., 2017), the usual industrial replacement of DIN's activation unit.

    Follows FuxiCTR's ``MultiHeadTargetAttention``: ``q = W_q x``, ``k_j = W_k e_j``, ``v_j = W_v e_j`` (no biases),
    ``heads`` heads of width ``D / heads``, ``softmax_j(q_h . k_hj / sqrt(D / heads))`` over the valid positions,
    heads concatenated and mapped back by ``W_o``. Returns the heads' mean weights (for the attention probe).
    """

    heads: int = 2
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, query_BxD, keys_PxD, history: History, train: bool = False):
        del train
        dim = keys_PxD.shape[-1]
        if self.heads < 1 or dim % self.heads:
            raise ValueError(
                "--attention_heads %d must divide the item vector's width %d (item_dim + category_dim)"
                % (self.heads, dim)
            )
        width = dim // self.heads
        dense = functools.partial(nn.Dense, dim, use_bias=False, dtype=self.dtype)
        query_BxD = dense(name="query")(query_BxD.astype(self.dtype))
        keys_PxD = keys_PxD.astype(self.dtype)
        key_PxHxW = dense(name="key")(keys_PxD).reshape(-1, self.heads, width)
        value_PxHxW = dense(name="value")(keys_PxD).reshape(-1, self.heads, width)
        query_PxHxW = history.spread(query_BxD).reshape(-1, self.heads, width)
        scores_PxH = jnp.sum(query_PxHxW * key_PxHxW, axis=-1).astype(jnp.float32) / np.sqrt(width)
        weights_PxH = jax.vmap(history.softmax, in_axes=1, out_axes=1)(scores_PxH)
        weighted_PxD = (weights_PxH.astype(self.dtype)[:, :, None] * value_PxHxW).reshape(-1, dim)
        pooled_BxD = history.weighted_sum(history.valid_P.astype(jnp.float32), weighted_PxD)
        return dense(name="output")(pooled_BxD), jnp.mean(weights_PxH, axis=1)


class MeanPooling(nn.Module):
    """Masked mean of the history (BaseModel's pooling); empty histories give zeros."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, query_BxD, keys_PxD, history: History, train: bool = False):
        del query_BxD, train
        weights_P = history.valid_P.astype(jnp.float32) / history.spread(jnp.maximum(history.count(), 1.0))
        return history.weighted_sum(weights_P, keys_PxD.astype(self.dtype)), weights_P


class SumPooling(nn.Module):
    """Masked sum of the history."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, query_BxD, keys_PxD, history: History, train: bool = False):
        del query_BxD, train
        weights_P = history.valid_P.astype(jnp.float32)
        return history.weighted_sum(weights_P, keys_PxD.astype(self.dtype)), weights_P


AttentionFactory = Callable[..., nn.Module]

ATTENTIONS = Registry("attention")
ATTENTIONS.register("din", DinAttention)
ATTENTIONS.register("din_softmax", functools.partial(DinAttention, normalization="softmax"))
ATTENTIONS.register("dot", DotAttention)
ATTENTIONS.register("mha", MultiHeadTargetAttention)
ATTENTIONS.register("mean", MeanPooling)
ATTENTIONS.register("sum", SumPooling)


def register_attention(name: str, factory: AttentionFactory, overwrite: bool = False) -> AttentionFactory:
    """Adds a pooler (a module class or partial, called like the others) for ``--attention NAME``.

    Fields named ``hidden``, ``activation``, ``normalization``, ``heads``, ``dtype`` or ``axis_name`` receive the
    model's attention settings; other fields keep their defaults.
    """
    return ATTENTIONS.register(name, factory, overwrite)


def make_attention(name_or_factory: Union[str, AttentionFactory], **config) -> nn.Module:
    """Instantiates a registered pooler with the config keys it has fields for."""
    return ATTENTIONS.make(name_or_factory, **config)


class EmbeddingMLPModel(EmbeddingFields):
    """The fields every model of the comparison shares: the embedding layer and the prediction MLP.

    Subclasses add fields and write their own compact ``__call__``, building the shared parts with
    ``feature_embedding`` and ``prediction_mlp``. ``axis_name``: pmap axis for cross-device statistics (Dice).
    """

    mlp_hidden: Sequence[int] = (80, 40)
    activation: Union[str, ActivationFactory] = "prelu"
    dropout_rate: float = 0.0
    axis_name: Optional[str] = None


def feature_embedding(model: EmbeddingMLPModel) -> FeatureEmbedding:
    """The model's embedding layer (submodule ``embedding``), inside its compact ``__call__``."""
    return FeatureEmbedding(name="embedding", **model.embedding_fields())


def prediction_mlp(model: EmbeddingMLPModel) -> MLP:
    """The model's prediction MLP (submodule ``mlp``), inside its compact ``__call__``."""
    return MLP(tuple(model.mlp_hidden), model.activation, model.dropout_rate, model.dtype, model.axis_name, name="mlp")
