"""Pooling of the behaviour history with respect to the candidate item.

Every pooler is a module called as
``pool(query_BxD, keys_BxTxD, mask_BxT, train=...) -> (pooled_BxD, weights_BxT)``
and is registered by name in ``ATTENTIONS``.

Shape letters: B batch, T history positions, D item-vector width, H hidden.
"""

import functools
from typing import Callable, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from din_jax.layers.activations import ActivationFactory, make_activation
from din_jax.registry import Registry

NORMALIZATIONS = ("none", "softmax")

# A finite fill value: -inf would give NaN (inf - inf) in the softmax of an
# empty history, and the exp of this underflows to exactly 0 in float16 too.
_MASK_FILL = -1e9


def masked_softmax(scores_BxT, mask_BxT):
    """Softmax over valid positions; an empty history gives all-zero weights.

    Written by hand (no ``jax.nn.softmax(where=...)``) for the IPU stack. The
    gradient with respect to a masked score is exactly zero.
    """
    scores_BxT = scores_BxT.astype(jnp.float32)
    filled_BxT = jnp.where(mask_BxT, scores_BxT, _MASK_FILL)
    shifted_BxT = filled_BxT - jax.lax.stop_gradient(jnp.max(filled_BxT, axis=-1, keepdims=True))
    exp_BxT = jnp.where(mask_BxT, jnp.exp(shifted_BxT), 0.0)
    denom_Bx1 = jnp.sum(exp_BxT, axis=-1, keepdims=True)
    return exp_BxT / jnp.where(denom_Bx1 > 0, denom_Bx1, 1.0)


def _weighted_sum(weights_BxT, keys_BxTxD):
    return jnp.einsum("bt,btd->bd", weights_BxT.astype(keys_BxTxD.dtype), keys_BxTxD)


class DinAttention(nn.Module):
    """The local activation unit of DIN (Zhou et al., KDD 2018, section 4.3).

    For each history position the unit scores ``a(e_j, v_A)`` with an MLP over
    ``[v_A, e_j, v_A - e_j, v_A * e_j]`` and pools ``sum_j w_j e_j``.

    The first layer is evaluated in the algebraically equal split form
    ``(W_q + W_d) q + (W_k - W_d) k + W_p (q * k)``, which computes the query
    part once per sample instead of once per position; ``split_first_layer``
    False evaluates the textbook concatenation with the same parameters.
    With ``fold_query`` the per-position part is further written
    ``k (W_k - W_d + diag(q) W_p)``: one ``D x H`` product per position
    instead of two, with a per-sample matrix (used for histories of at least
    ``fold_min_length`` positions, where it is faster).

    Attributes:
      hidden: widths of the MLP's hidden layers (80-40 in the authors' code).
      activation: name or factory of the hidden activation (sigmoid in the
        authors' code; ``dice`` uses masked batch statistics).
      normalization: ``none`` (the paper: raw scores, so the sum of the
        weights keeps the intensity of the interest) or ``softmax`` (the
        authors' code: masked softmax of ``score / sqrt(D)``).
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
    def __call__(self, query_BxD, keys_BxTxD, mask_BxT, train: bool = False) -> Tuple[jnp.ndarray, jnp.ndarray]:
        if self.normalization not in NORMALIZATIONS:
            raise ValueError("unknown attention normalization %r; choose from %s" % (self.normalization, list(NORMALIZATIONS)))
        if not self.hidden:
            raise ValueError("DinAttention needs at least one hidden layer")
        dim = keys_BxTxD.shape[-1]
        query_BxD = query_BxD.astype(self.dtype)
        keys_BxTxD = keys_BxTxD.astype(self.dtype)

        first = self.hidden[0]
        # One kernel for the four concatenated blocks, so that the split and
        # unsplit forms share parameters (and checkpoints) exactly.
        kernel = self.param("first_kernel", nn.initializers.lecun_normal(), (4 * dim, first), jnp.float32)
        bias = self.param("first_bias", nn.initializers.zeros, (first,), jnp.float32)
        kernel = kernel.astype(self.dtype)
        bias = bias.astype(self.dtype)
        w_q, w_k, w_d, w_p = (kernel[i * dim:(i + 1) * dim] for i in range(4))
        if self.split_first_layer:
            per_query_BxH = query_BxD @ (w_q + w_d) + bias
            if self.fold_query and keys_BxTxD.shape[1] >= self.fold_min_length:
                # (q * k) W_p = k diag(q) W_p: one per-sample D x H matrix, so each
                # position costs one D x H product instead of two. Building that
                # matrix costs D x H per sample, which only pays from a few
                # dozen positions on (measured on CPU: docs/PERFORMANCE.md).
                per_sample_BxDxH = (w_k - w_d)[None] + query_BxD[:, :, None] * w_p[None]
                hidden_BxTxH = jnp.einsum("btd,bdh->bth", keys_BxTxD, per_sample_BxDxH)
            else:
                hidden_BxTxH = keys_BxTxD @ (w_k - w_d) + (query_BxD[:, None, :] * keys_BxTxD) @ w_p
            hidden_BxTxH = hidden_BxTxH + per_query_BxH[:, None, :]
        else:
            query_BxTxD = jnp.broadcast_to(query_BxD[:, None, :], keys_BxTxD.shape)
            features_BxTx4D = jnp.concatenate(
                [query_BxTxD, keys_BxTxD, query_BxTxD - keys_BxTxD, query_BxTxD * keys_BxTxD], axis=-1
            )
            hidden_BxTxH = features_BxTx4D @ kernel + bias
        hidden_BxTxH = make_activation(self.activation, self.axis_name)(hidden_BxTxH, train=train, mask=mask_BxT)
        for width in self.hidden[1:]:
            hidden_BxTxH = nn.Dense(width, dtype=self.dtype)(hidden_BxTxH)
            hidden_BxTxH = make_activation(self.activation, self.axis_name)(hidden_BxTxH, train=train, mask=mask_BxT)
        scores_BxT = nn.Dense(1, dtype=self.dtype)(hidden_BxTxH)[..., 0].astype(jnp.float32)

        if self.normalization == "softmax":
            weights_BxT = masked_softmax(scores_BxT / jnp.sqrt(jnp.float32(dim)), mask_BxT)
        else:
            weights_BxT = jnp.where(mask_BxT, scores_BxT, 0.0)
        return _weighted_sum(weights_BxT, keys_BxTxD), weights_BxT


class DotAttention(nn.Module):
    """Scaled dot-product attention of the candidate over the history.

    Weights are ``masked_softmax(q . k_j / sqrt(D))``; there are no
    parameters, which makes it the cheapest attention that still depends on
    the candidate.
    """

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, query_BxD, keys_BxTxD, mask_BxT, train: bool = False):
        del train
        keys_BxTxD = keys_BxTxD.astype(self.dtype)
        scores_BxT = jnp.einsum("bd,btd->bt", query_BxD.astype(self.dtype), keys_BxTxD).astype(jnp.float32)
        weights_BxT = masked_softmax(scores_BxT / jnp.sqrt(jnp.float32(keys_BxTxD.shape[-1])), mask_BxT)
        return _weighted_sum(weights_BxT, keys_BxTxD), weights_BxT


class MeanPooling(nn.Module):
    """Masked mean of the history (BaseModel's pooling); empty histories give zeros."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, query_BxD, keys_BxTxD, mask_BxT, train: bool = False):
        del query_BxD, train
        mask_BxT = mask_BxT.astype(jnp.float32)
        count_Bx1 = jnp.maximum(jnp.sum(mask_BxT, axis=-1, keepdims=True), 1.0)
        weights_BxT = mask_BxT / count_Bx1
        return _weighted_sum(weights_BxT, keys_BxTxD.astype(self.dtype)), weights_BxT


class SumPooling(nn.Module):
    """Masked sum of the history."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, query_BxD, keys_BxTxD, mask_BxT, train: bool = False):
        del query_BxD, train
        weights_BxT = mask_BxT.astype(jnp.float32)
        return _weighted_sum(weights_BxT, keys_BxTxD.astype(self.dtype)), weights_BxT


AttentionFactory = Callable[..., nn.Module]

ATTENTIONS = Registry("attention")
ATTENTIONS.register("din", DinAttention)
ATTENTIONS.register("din_softmax", functools.partial(DinAttention, normalization="softmax"))
ATTENTIONS.register("dot", DotAttention)
ATTENTIONS.register("mean", MeanPooling)
ATTENTIONS.register("sum", SumPooling)


def register_attention(name: str, factory: AttentionFactory, overwrite: bool = False) -> AttentionFactory:
    """Adds a pooler to the registry so that ``--attention NAME`` can use it.

    Args:
      name: registry name.
      factory: a Flax module class (or ``functools.partial`` of one) called as
        ``pool(query_BxD, keys_BxTxD, mask_BxT, train=...)`` and returning
        ``(pooled_BxD, weights_BxT)``. Fields named ``hidden``, ``activation``,
        ``normalization``, ``dtype`` or ``axis_name`` receive the model's
        attention settings; other fields keep their defaults.
      overwrite: replace an existing entry.
    """
    return ATTENTIONS.register(name, factory, overwrite)


def make_attention(name_or_factory: Union[str, AttentionFactory], **config) -> nn.Module:
    """Instantiates a registered pooler with the config keys it has fields for."""
    return ATTENTIONS.make(name_or_factory, **config)
