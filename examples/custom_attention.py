"""A custom attention for din_jax, registered from Python and used by name.

Bilinear attention: each history item ``k_j`` is scored against the candidate
``q`` with ``sigmoid(q W k_j)``, a learnt ``D x D`` interaction, and the
weights are not normalised (as in the DIN paper, so their sum still carries
how strongly the history matches). Use it with any command:

    python experiments/train.py --use_synthetic_data \\
        --import_module examples/custom_attention.py --attention bilinear
    python experiments/ablate.py --flagfile experiments/configs/attention_custom.flags

A pooler is a Flax module called as ``pool(query_BxD, keys_BxTxD, mask_BxT,
train=...)`` that returns ``(pooled_BxD, weights_BxT)``; padded positions
(``mask_BxT`` False) must get weight 0. Fields named ``hidden``,
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
    def __call__(self, query_BxD, keys_BxTxD, mask_BxT, train: bool = False):
        del train  # no dropout or batch statistics here
        keys_BxTxD = keys_BxTxD.astype(self.dtype)
        # q W, once per sample; then one dot product per history position.
        projected_BxD = nn.Dense(keys_BxTxD.shape[-1], use_bias=False, dtype=self.dtype, name="bilinear")(query_BxD)
        scores_BxT = jnp.einsum("bd,btd->bt", projected_BxD, keys_BxTxD).astype(jnp.float32)
        weights_BxT = jnp.where(mask_BxT, nn.sigmoid(scores_BxT), 0.0)
        pooled_BxD = jnp.einsum("bt,btd->bd", weights_BxT.astype(self.dtype), keys_BxTxD)
        return pooled_BxD, weights_BxT


register_attention("bilinear", BilinearAttention)
