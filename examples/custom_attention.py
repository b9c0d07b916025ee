"""A custom attention for din_jax, registered from Python and used by name.

Bilinear attention: each history item ``k_j`` is scored against the candidate
``q`` with ``sigmoid(q W k_j)``, a learnt ``D x D`` interaction, and the
weights are not normalised (as in the DIN paper, so their sum still carries
how strongly the history matches). Use it with any command:

    python experiments/train.py --use_synthetic_data \\
        --import_module examples/custom_attention.py --attention bilinear
    python experiments/ablate.py --flagfile experiments/configs/attention_custom.flags

A pooler is a Flax module called as ``pool(query_BxD, keys_PxD, history,
train=...)`` that returns ``(pooled_BxD, weights_P)``. The keys are the
batch's history positions, flat: padded (``P = B * T``) or packed end to end
(the default); ``history`` (``din_jax.layers.History``) says which sample each
position belongs to (``spread`` a per-sample value to the positions,
``weighted_sum``, ``softmax`` and ``count`` per sample) and which positions
are real (``valid_P``): the others must get weight 0. Fields named ``hidden``,
``activation``, ``normalization``, ``dtype`` or ``axis_name`` receive the
model's attention settings (``--attention_hidden``, ...), other fields keep
their defaults.
"""

import flax.linen as nn
import jax.numpy as jnp

from din_jax.layers import register_attention


class BilinearAttention(nn.Module):
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, query_BxD, keys_PxD, history, train: bool = False):
        del train  # no dropout or batch statistics here
        keys_PxD = keys_PxD.astype(self.dtype)
        # q W, once per sample; then one dot product per history position.
        projected_BxD = nn.Dense(keys_PxD.shape[-1], use_bias=False, dtype=self.dtype, name="bilinear")(query_BxD)
        scores_P = jnp.sum(history.spread(projected_BxD) * keys_PxD, axis=-1).astype(jnp.float32)
        weights_P = jnp.where(history.valid_P, nn.sigmoid(scores_P), 0.0)
        return history.weighted_sum(weights_P, keys_PxD), weights_P


register_attention("bilinear", BilinearAttention)
