"""Activation functions as Flax modules, with a registry by name.

Every activation is a module called as ``act(x, train=..., mask=...)`` so that
stateful ones (Dice keeps moving averages) and stateless ones are
interchangeable in the models. ``mask`` marks which rows of ``x`` are real
(not padding); only Dice uses it, for its batch statistics.

Shape letters: B batch, T history positions, H hidden units; ``x`` is
``[..., H]`` with any number of leading axes.
"""

from typing import Callable, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from din_jax.registry import Registry


class Sigmoid(nn.Module):
    """Logistic sigmoid."""

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        del train, mask
        return jax.nn.sigmoid(x)


class ReLU(nn.Module):
    """Rectified linear unit."""

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        del train, mask
        return jax.nn.relu(x)


class Identity(nn.Module):
    """No activation (for linear layers chosen by name)."""

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        del train, mask
        return x


class PReLU(nn.Module):
    """Parametric ReLU with one learnt slope per channel (He et al., 2015).

    The slope starts at ``alpha_init`` (0.0 as in the DIN authors' code, which
    makes it a ReLU at initialisation).
    """

    alpha_init: float = 0.0

    @nn.compact
    def __call__(self, x, train: bool = False, mask=None):
        del train, mask
        alpha = self.param(
            "alpha", nn.initializers.constant(self.alpha_init), (x.shape[-1],), jnp.float32
        )
        return jnp.where(x >= 0, x, alpha.astype(x.dtype) * x)


class Dice(nn.Module):
    """Data-adaptive activation function Dice (Zhou et al., KDD 2018, eq. 7).

    ``f(s) = p(s) * s + (1 - p(s)) * alpha * s`` with
    ``p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps))``.

    In training ``E[s]`` and ``Var[s]`` are the statistics of the current
    mini-batch (over every leading axis, real rows only when ``mask`` is
    given, and across devices when ``axis_name`` is set); moving averages of
    them are kept in the ``batch_stats`` collection and used at inference.
    The public originals get this wrong: the authors' code never updates its
    statistics and the DIEN/Graphcore code uses batch statistics at inference.

    Attributes:
      epsilon: added to the variance, 1e-8 as in the paper.
      momentum: decay of the moving averages (0.99, TensorFlow's default,
        which the authors' batch normalisation used).
      alpha_init: initial value of the per-channel ``alpha`` (0 in the paper's
        code).
      axis_name: pmap axis to average the batch statistics over.
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
        # rsqrt of var + eps: with eps = 1e-8 a constant channel would give
        # 1e4 * 0, which is finite, so no extra guard is needed.
        p = jax.nn.sigmoid((x32 - mean) * jax.lax.rsqrt(var + self.epsilon))
        out = p * x32 + (1.0 - p) * alpha * x32
        return out.astype(x.dtype)


def _masked_moments(x, mask, axis_name):
    """Mean and (biased) variance over every axis but the last.

    Computed as E[x] and E[x^2] - E[x]^2 so that both moments can be averaged
    across devices with one ``pmean`` each, giving exactly the statistics of
    the global batch.
    """
    reduce_axes = tuple(range(x.ndim - 1))
    if mask is None:
        weight = jnp.ones(x.shape[:-1] + (1,), jnp.float32)
    else:
        weight = jnp.broadcast_to(mask.astype(jnp.float32).reshape(mask.shape + (1,) * (x.ndim - mask.ndim)), x.shape[:-1] + (1,))
    count = jnp.sum(weight)
    sum_x = jnp.sum(weight * x, axis=reduce_axes)
    sum_x2 = jnp.sum(weight * x * x, axis=reduce_axes)
    if axis_name is not None:
        count = jax.lax.psum(count, axis_name)
        sum_x = jax.lax.psum(sum_x, axis_name)
        sum_x2 = jax.lax.psum(sum_x2, axis_name)
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
    """Adds an activation to the registry.

    Args:
      name: the name used by ``--activation`` and model fields.
      factory: a module class (or ``functools.partial`` of one) whose instances
        are called as ``act(x, train=..., mask=...)``.
      overwrite: replace an existing entry of the same name.

    Returns:
      The factory, so that this can be used as a class decorator via partial.
    """
    return ACTIVATIONS.register(name, factory, overwrite)


def make_activation(name_or_factory: Union[str, ActivationFactory], axis_name: Optional[str] = None) -> nn.Module:
    """Instantiates an activation, handing ``axis_name`` to those that take one.

    Call it inside a compact ``__call__`` (or ``setup``) of the parent module.
    """
    return ACTIVATIONS.make(name_or_factory, axis_name=axis_name)
